"""CRIU's network lock around a wake, against the real engines and the real hold.

The dump locks the pod's namespace; the image records ``skip`` so the restore does
not lock it again above the daemon's hold; the backend removes the dump's lock
once the restore is over, succeeded or failed. A client that connects while the
restore runs is held (not dropped) and answered once it is done, without the
~1 s of a SYN retransmit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from architect.runtime.checkpoint import CheckpointOptions, RestoreFailed, netlock
from architect.runtime.checkpoint import image as image_mod
from architect.runtime.checkpoint.runc import RuncCriuBackend
from architect.runtime.network.container import ContainerNetwork, net_spec
from architect.runtime.network.netns import NetNs

from .ckpt_lab import Lab, Pod, forge_unrestorable, sh
from .test_ckpt_runc import _answers, _launch, _runc_has

pytestmark = pytest.mark.root
DIR = CheckpointOptions(compression="dir")
# A SYN dropped during the restore comes back after its 1 s retransmit timer; a
# held one is answered when the restore ends (~0.2-0.4 s here).
NO_RETRANSMIT = 0.6


def _filter(pod: Pod, family: str = "iptables") -> str:
    return sh("ip", "netns", "exec", pod.ns, f"{family}-save", "-t", "filter").stdout


def _locked(pod: Pod) -> list[str]:
    """The families whose filter table holds any of CRIU's lock."""
    return [f for f in ("iptables", "ip6tables") if "CRIU" in _filter(pod, f)]


def _timed_get(lab: Lab, host: str) -> tuple[float, float, str]:
    t0 = time.monotonic()
    body = lab.get(host, timeout=10)
    return t0, time.monotonic(), body


def _input_jumps(pod: Pod) -> list[str]:
    out = sh("ip", "netns", "exec", pod.ns, "iptables", "-S", "INPUT").stdout
    return [line.split(" -j ")[-1] for line in out.splitlines() if " -j " in line]


async def test_a_client_arriving_during_the_restore_is_held_not_dropped(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    """CRIU's restore lock (the old way) sat above the hold for the last ~40 % of
    the restore but its very end (CRIU's unlock): the late clients connect at
    fractions of a first restore's length, and the chain is watched meanwhile."""
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "syn", pod.ip4, mem_mib=16)
    assert lab.get(pod.ip4) == "1"
    spec = net_spec(1, "packets", [8080])
    assert spec is not None
    net = ContainerNetwork(NetNs(pod.netns_path), spec)
    await net.setup()
    b = RuncCriuBackend()
    counter, tried, length = 1, [], 0.0
    above: list[list[str]] = []  # INPUT's jumps whenever CRIU's came before the hold's
    try:
        for i, at in enumerate((None, 0.5, 0.6, 0.7, 0.8)):  # None: measure the length
            img = tmp_path / f"img{i}"
            seen: dict[str, Any] = {}
            delay = None if at is None else at * length

            async def wake(
                img: Path = img, delay: float | None = delay, seen: dict[str, Any] = seen
            ) -> None:
                t0 = time.monotonic()
                restore = asyncio.ensure_future(b.restore(c, img))

                async def watch() -> None:
                    while not restore.done():
                        jumps = await asyncio.to_thread(_input_jumps, pod)
                        if "CRIU" in jumps and jumps.index("CRIU") < jumps.index(spec.hold_chain):
                            above.append(jumps)

                watcher = asyncio.ensure_future(watch())
                if delay is not None:
                    await asyncio.sleep(delay)
                    seen["late"] = asyncio.ensure_future(
                        asyncio.to_thread(_timed_get, lab, pod.ip4))
                await restore
                seen["ended"], seen["took"] = time.monotonic(), time.monotonic() - t0
                await watcher
                # Before the hold lets anything go: CRIU's lock is gone, ours stays.
                seen["rules"] = _filter(pod)

            hold = await net.hibernate(wake)
            await b.checkpoint(c, img, DIR)
            assert _locked(pod) == ["iptables", "ip6tables"]  # the dump's lock
            engine = img / image_mod.PAYLOAD_NAMES["dir"] / image_mod.ENGINE_DIR
            assert netlock.lock_method(engine) == netlock.LOCK_SKIP
            assert image_mod.verify(img) == image_mod.read_manifest(img)  # sealed as rewritten
            await net.after_checkpoint()
            first = await asyncio.to_thread(_timed_get, lab, pod.ip4)
            await hold.wait_released(30)
            bodies = [int(first[2])]
            if at is None:
                length = seen["took"]
            else:
                late = await seen["late"]
                bodies.append(int(late[2]))
                if late[0] < seen["ended"]:  # its SYN went out while the restore ran
                    tried.append(late[1] - late[0])
            await net.resume()
            assert hold.core.outcome == "woken"
            assert sorted(bodies) == list(range(counter + 1, counter + 1 + len(bodies)))
            counter += len(bodies)
            assert "CRIU" not in seen["rules"] and spec.hold_chain in seen["rules"]
            assert _locked(pod) == []
    finally:
        await net.teardown()
    assert above == [], "CRIU's lock went above the hold during a restore"
    assert tried, "no client connected during a restore"
    assert max(tried) < NO_RETRANSMIT, f"connect -> answer during the restore: {tried}"


async def test_a_failed_restore_leaves_the_namespace_unlocked(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    """CRIU stops on a bad image before any unlock of its own: the dump's lock
    would stay (the pod's sidecars cut off, a fresh start after it too)."""
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "fail", pod.ip4)
    good = tmp_path / "good"
    await RuncCriuBackend().checkpoint(c, good, DIR)
    assert _locked(pod) == ["iptables", "ip6tables"]
    forged = forge_unrestorable(good, tmp_path)
    b = RuncCriuBackend(timeout=15)
    with pytest.raises(RestoreFailed, match="restore failed"):
        await b.restore(c, forged)
    assert not _runc_has(runc_root, "fail")
    assert _locked(pod) == []
    assert not _answers(lab, pod.ip4)  # refused now, not silently dropped
    await b.restore(c, good)
    assert lab.get(pod.ip4) == "1"
    assert _locked(pod) == []
