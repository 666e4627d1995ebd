"""Migrate-on-stop's race on the e2e node (no daemon): the kubelet's SIGTERM reaches
the shim before the migrate-on-stop decision.

The pod's PID 1 exits on SIGTERM, and its annotations (managed-containers + the
template hash) make the shim expect a decision. (1) The decision comes 0.4 s
after the delete, as from a daemon that lost the race: the shim's Kill waited for
it, checkpointed, and the replacement restores and runs at once
(postmigration-autoscaleup-containers lists the container; by default it would
stay hibernated, test_daemon_migrate.py) with its counter going on. (2) No
decision comes: the old container exits once the stop window has passed (not at
once, not after the grace period) and the replacement starts fresh and is Ready.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from architect.policy.annotations import (
    MANAGED_CONTAINERS,
    POSTMIGRATION_AUTOSCALEUP,
    TEMPLATE_HASH_ANNOTATION,
)
from architect.runtime.daemon.shimclient import ShimClient
from architect.runtime.shim.client import request
from architect.runtime.shim.plan import source_slot
from architect.runtime.shim.stopwindow import DEFAULT_WINDOW
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, kubectl, namespace
from e2e.tests.cluster.shimfix import (  # noqa: F401
    HANDOVER,
    SHIM_RUN,
    SHIM_STATE,
    architect_node,
    container_id,
    ready_pod,
    remove_handover,
    shim_record,
)

pytestmark = pytest.mark.node

APP = "app=racer"
GRACE_S = 8  # far from the window, so "after the window" and "after the grace" differ
ARM_AFTER_S = 0.4
# PID 1 is sh with a TERM trap: `wait` returns at the signal, so it exits at once.
SCRIPT = (
    "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; "
    "mv /tmp/count.new /tmp/count; sleep 1 & wait $!; done"
)


def _deployment(template_hash: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "racer"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "racer"}},
            "template": {
                "metadata": {"labels": {"app": "racer"}, "annotations": {
                    MANAGED_CONTAINERS: '["main"]',
                    TEMPLATE_HASH_ANNOTATION: template_hash,
                    # No daemon here to wake a hibernated replacement on a packet.
                    POSTMIGRATION_AUTOSCALEUP: '["main"]',
                }},
                "spec": {
                    "runtimeClassName": "runc-architect",
                    "terminationGracePeriodSeconds": GRACE_S,
                    "containers": [{
                        "name": "main", "image": "architect.local/busybox:1.35",
                        "imagePullPolicy": "Never", "command": ["sh", "-c", SCRIPT],
                    }],
                },
            },
        },
    }


def _count(cluster: Cluster, ns: str, pod: str) -> int:
    out = kubectl(cluster, "exec", "-n", ns, pod, "--", "cat", "/tmp/count", check=False)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


@dataclass(frozen=True)
class Racer:
    ns: str
    template_hash: str
    name: str  # the pod about to be deleted
    cid: str  # its container
    count: int  # its counter before the delete


@contextmanager
def _racer(cluster: Cluster) -> Iterator[Racer]:
    """The Deployment in a namespace of its own, its pod Ready and counting, its
    container migration-expected by its annotations; removed with its handover."""
    thash = f"race-{uuid.uuid4().hex[:8]}"
    try:
        with namespace(cluster, "stoprace") as ns:
            kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(_deployment(thash)))
            pod = ready_pod(cluster, ns, APP)
            name, cid = pod["metadata"]["name"], container_id(pod)
            eventually("the counter reaches 4", lambda: _count(cluster, ns, name) >= 4,
                       timeout_s=60)
            rec = shim_record(cid)
            assert rec["migration_expected"] and not rec["migrate_on_stop"], rec
            yield Racer(ns, thash, name, cid, _count(cluster, ns, name))
    finally:
        remove_handover(thash)


class StopProbe:
    """Follows the old container's stop from the host, on a thread of its own: the
    shim's watch stream (``stop-waiting`` when Kill starts waiting for the decision,
    ``stop-decision`` when it goes on) and the moment its status stops saying
    RUNNING (polled every 50 ms). ``on_waiting`` runs when Kill waits."""

    def __init__(self, cid: str, timeout_s: float,
                 on_waiting: Callable[[], None] | None = None) -> None:
        self.cid, self.on_waiting = cid, on_waiting
        # The link goes with the container: hold on to the socket it points at.
        self.socket = os.path.realpath(SHIM_RUN / "k8s.io" / cid)
        self.deadline = time.monotonic() + timeout_s
        self.events: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.watching = threading.Event()
        self.t0 = 0.0
        self.stopped_after: float | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self.thread.start()
        assert self.watching.wait(10), f"no watch on {self.socket}: {self.errors}"

    def deleted(self) -> None:
        """The pod's delete was accepted: time is measured from here."""
        self.t0 = time.monotonic()

    async def _run(self) -> None:
        try:
            await asyncio.gather(self._watch(), self._poll())
        except BaseException as e:  # reported by the test thread
            self.errors.append(e)
            self.watching.set()

    async def _watch(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.socket)
        try:
            writer.write(b'{"op": "watch"}\n')
            await writer.drain()
            assert json.loads(await reader.readline())["ok"]
            self.watching.set()
            while (left := self.deadline - time.monotonic()) > 0:
                try:
                    line = await asyncio.wait_for(reader.readline(), left)
                except TimeoutError:
                    return
                if not line:
                    return
                event = json.loads(line)
                if event.get("id") != self.cid:
                    continue
                self.events.append(event)
                if event.get("event") == "stop-waiting" and self.on_waiting is not None:
                    await asyncio.to_thread(self.on_waiting)
                if event.get("event") == "stop-decision":
                    return
        finally:
            writer.close()

    async def _poll(self) -> None:
        await asyncio.to_thread(self.watching.wait, 10)
        while time.monotonic() < self.deadline:
            try:
                reply = await request(Path(self.socket), {"op": "status"}, timeout=2)
                recs = [c for c in reply.get("containers", []) if c["id"] == self.cid]
                running = bool(recs) and recs[0]["status"] in ("RUNNING", "SCALED_DOWN")
            except (OSError, TimeoutError, ValueError):
                running = False  # the shim is gone with its pod
            if not running and self.t0:
                self.stopped_after = time.monotonic() - self.t0
                return
            await asyncio.sleep(0.05)

    def result(self) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """(stop-waiting, stop-decision, seconds from the delete to the stop)."""
        self.thread.join(timeout=max(1.0, self.deadline - time.monotonic() + 5))
        assert not self.thread.is_alive(), "the probe did not finish"
        assert not self.errors, self.errors
        kinds = {e["event"]: e for e in self.events}
        assert "stop-waiting" in kinds and "stop-decision" in kinds, (
            f"the shim's Kill did not wait for a decision; events: {self.events}")
        return kinds["stop-waiting"], kinds["stop-decision"], self.stopped_after


def test_decision_after_the_sigterm_still_checkpoints(architect_node: Cluster) -> None:  # noqa: F811
    cluster = architect_node
    with _racer(cluster) as r:
        client = ShimClient(SHIM_RUN, SHIM_STATE, timeout=10)

        def daemon_late() -> None:
            """What the daemon's migrate() sends, ARM_AFTER_S after the SIGTERM."""
            time.sleep(ARM_AFTER_S)

            async def arm() -> None:
                await client.mark_pending(r.template_hash, "main", source_slot(r.ns, r.name))
                await client.migrate_on_stop(r.cid, True)

            asyncio.run(arm())

        probe = StopProbe(r.cid, timeout_s=30, on_waiting=daemon_late)
        kubectl(cluster, "delete", "pod", "-n", r.ns, r.name, "--wait=false")
        probe.deleted()
        waiting, decision, _ = probe.result()
        assert waiting["signal"] == "SIGTERM", waiting
        assert decision["outcome"] == "armed", decision
        # Kill waited for the late decision: about ARM_AFTER_S, not the window.
        assert ARM_AFTER_S <= decision["waited"] < DEFAULT_WINDOW, decision

        new = ready_pod(cluster, r.ns, APP, not_named=r.name)
        rec = shim_record(container_id(new))
        assert rec["start_path"] == "restore", rec
        assert "handover checkpoint" in rec["start_reason"], rec
        assert rec["status"] == "RUNNING" and not rec["hibernated"] and rec["pid"] > 0, rec
        new_name = new["metadata"]["name"]
        eventually("the restored counter writes",
                   lambda: _count(cluster, r.ns, new_name) > 0, timeout_s=30)
        after = _count(cluster, r.ns, new_name)
        assert after >= r.count, (r.count, after)  # a fresh start counts from 1
        assert not (HANDOVER / r.template_hash / "main").exists(), "a consumed handover must go"
        print(f"\nFIGURE stop race, armed {ARM_AFTER_S}s late: Kill waited "
              f"{decision['waited']:.3f}s, outcome armed; counter {r.count} -> {after}, "
              f"restore {rec['timings'].get('restore', 0):.3f}s")


def test_no_decision_stops_after_the_window_and_replacement_starts_fresh(
    architect_node: Cluster,  # noqa: F811
) -> None:
    cluster = architect_node
    with _racer(cluster) as r:
        probe = StopProbe(r.cid, timeout_s=GRACE_S + 10)
        kubectl(cluster, "delete", "pod", "-n", r.ns, r.name, "--wait=false")
        probe.deleted()
        waiting, decision, stopped = probe.result()
        assert waiting["signal"] == "SIGTERM", waiting
        assert decision["outcome"] == "timeout", decision
        assert DEFAULT_WINDOW - 0.1 <= decision["waited"] < DEFAULT_WINDOW + 1.0, decision
        # Stopped by the SIGTERM delivered after the window: not at once (the
        # window held it), and well before the grace period's SIGKILL.
        assert stopped is not None, "the old container did not stop"
        assert DEFAULT_WINDOW - 0.1 <= stopped < GRACE_S - 2, stopped

        new = ready_pod(cluster, r.ns, APP, not_named=r.name)
        rec = shim_record(container_id(new))
        assert rec["start_path"] == "fresh", rec
        assert not (HANDOVER / r.template_hash / "main").exists()
        print(f"\nFIGURE stop race, never armed: Kill waited {decision['waited']:.3f}s "
              f"(window {DEFAULT_WINDOW}s), old container stopped {stopped:.2f}s after "
              f"the delete (grace {GRACE_S}s)")
