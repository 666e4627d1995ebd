"""Hibernate vs `runc checkpoint` alone vs CRIU's own dump time, same process, one run.

    python bench/hibernate_vs_dump.py [--sizes 64,256] [--rounds 3]

Issue 12's target: "checkpoint time within 1.5x of `criu dump` alone for the same
process". The process: a Python app (the host's /usr/bin/python3, /usr bound
read-only into the rootfs) holding RSS MiB of os.urandom bytes and a listening
socket, under runc in a pod-like network namespace (tests/runtime/checkpoint/
ckpt_lab, as bench/checkpoint.py). For each size, alternating the order each
round, a fresh app is:

- hibernated as the shim does it (runtime/shim/lifecycle.py ``checkpoint``): the
  pod's addresses (nsenter + ip), then RuncCriuBackend.checkpoint into the node-
  local directory layout (runc checkpoint -> CRIU; the inventory's network lock
  recorded as skip; every file hashed and hard-linked into the image, manifest;
  scratch removed; the seal's stats), then the ready mark. One backend for the
  whole run, its version already known, as the shim keeps one;
- checkpointed by a plain ``runc checkpoint`` with the same flags into an empty
  directory, nothing else.

Both runc runs leave CRIU's ``stats-dump``: freezing + frozen time is CRIU's own
dump (seize to the tasks killed, pages written included), without CRIU's start,
runc's start, its freeze of the cgroup and its RPC to CRIU. Printed: medians per
size of each, the ratios, and the hibernate's extra steps. The hibernate's steps
are timed by wrapping the backend's own calls (a subclass and patched module
attributes in this process only; the product code runs unchanged). Needs root and
runtime/checkpoint/install. One run on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architect.runtime.checkpoint import CheckpointOptions, Container, base, image, netlock
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.checkpoint.proc import Completed, which
from architect.runtime.checkpoint.rewrite import read_entries
from architect.runtime.checkpoint.runc import RuncCriuBackend
from architect.runtime.shim import plan, podinfo
from tests.runtime.checkpoint.ckpt_lab import Lab, sh

MIB = 1 << 20
T = TypeVar("T")

APP = """\
import os, signal, socket, sys
ballast = os.urandom(int(sys.argv[1]) << 20)  # random: nothing for CRIU to skip
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen()
open("/tmp/ready", "w").close()
while True:
    signal.pause()
"""

# The hibernate's steps, in the order they run; "other" is the rest of the wall time
# (scratch mkdirs, the runc state stat, thread hops, the ready mark).
STEPS = ("addresses", "runc", "netlock", "pack", "scratch_rm", "seal", "other")


def python_bundle(path: Path, rss: int, netns: str, cid: str) -> Path:
    rootfs = path / "rootfs"
    for d in ("proc", "dev", "sys", "tmp", "etc", "usr"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + link).is_symlink():  # merged /usr: bin -> usr/bin, ...
            (rootfs / link).symlink_to(os.readlink("/" + link))
    (rootfs / "app.py").write_text(APP)
    sh("runc", "spec", "--bundle", str(path))
    config = json.loads((path / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/usr/bin/python3", "-I", "/app.py", str(rss)]
    config["root"] = {"path": str(rootfs), "readonly": False}
    namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    config["linux"]["namespaces"] = [*namespaces, {"type": "network", "path": netns}]
    config["linux"]["cgroupsPath"] = f"/architect-bench/{cid}"
    config["mounts"].append(
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
    )
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def launch(work: Path, root: Path, cid: str, rss: int, netns: str) -> Container:
    bundle = python_bundle(work / cid, rss, netns, cid)
    subprocess.run(
        ["runc", "--root", str(root), "--log", str(bundle / "runc.log"), "run", "--detach",
         "--bundle", str(bundle), cid],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=120, check=True,
    )  # fmt: skip
    ready = bundle / "rootfs" / "tmp" / "ready"
    deadline = time.monotonic() + 120
    while not ready.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cid}: the app never filled its {rss} MiB")
        time.sleep(0.02)
    return Container(cid, bundle, root)


def criu_stats(*dirs: Path) -> dict[str, float]:
    """CRIU's dump stats (seconds, pages) from the first ``stats-dump`` found."""
    # pycriu's own decoder (pb2dict) breaks on current protobuf: its message only.
    stats_entry = importlib.import_module("pycriu.images.pb").stats_entry
    for d in dirs:
        p = d / "stats-dump"
        if p.is_file():
            _, (raw, *_) = read_entries(p)
            entry = stats_entry()
            entry.ParseFromString(raw)
            us = ("freezing_time", "frozen_time", "memdump_time", "memwrite_time")
            out = {k: getattr(entry.dump, k) / 1e6 for k in us}
            out["criu"] = out["freezing_time"] + out["frozen_time"]
            out["pages_written"] = float(entry.dump.pages_written)
            return out
    raise FileNotFoundError(f"no stats-dump in {', '.join(map(str, dirs))}")


class TimedBackend(RuncCriuBackend):
    """RuncCriuBackend with its runc call and seal timed and CRIU's stats kept."""

    def __init__(self) -> None:
        super().__init__()
        self.t: dict[str, float] = {}
        self.stats: dict[str, float] = {}

    async def _run(
        self, argv: list[str], timeout: float, stdio: tuple[int, int, int] | None = None
    ) -> Completed:
        t0 = time.monotonic()
        done = await super()._run(argv, timeout, stdio)
        if "checkpoint" not in argv:
            return done
        self.t["runc"] = self.t.get("runc", 0.0) + time.monotonic() - t0
        t1 = time.monotonic()  # the stats' reading is the bench's, taken off "other"
        with contextlib.suppress(FileNotFoundError):
            work = Path(argv[argv.index("--work-path") + 1])
            engine = Path(argv[argv.index("--image-path") + 1])
            self.stats = criu_stats(work, engine)
        self.t["bench"] = self.t.get("bench", 0.0) + time.monotonic() - t1
        return done

    def _keep_seal(self, image_dir: Path, manifest: Any) -> None:
        t0 = time.monotonic()
        super()._keep_seal(image_dir, manifest)
        self.t["seal"] = self.t.get("seal", 0.0) + time.monotonic() - t0


def timed(t: dict[str, float], name: str, fn: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            t[name] = t.get(name, 0.0) + time.monotonic() - t0

    return wrapper


@contextlib.contextmanager
def steps_timed(t: dict[str, float]) -> Iterator[None]:
    with (
        mock.patch.object(netlock, "skip_lock_in_image",
                          timed(t, "netlock", netlock.skip_lock_in_image)),
        mock.patch.object(image, "pack", timed(t, "pack", image.pack)),
        mock.patch.object(base, "safe_rmtree", timed(t, "scratch_rm", safe_rmtree)),
    ):  # fmt: skip
        yield


async def hibernate(backend: TimedBackend, c: Container, dest: Path) -> dict[str, float]:
    """The shim's checkpoint of ``c`` into ``dest`` (lifecycle.py), each step timed."""
    backend.t, backend.stats = {}, {}
    t = backend.t
    with steps_timed(t):
        t0 = time.monotonic()
        safe_rmtree(dest)
        ns = podinfo.netns_path(podinfo.read_spec(c.bundle))
        t1 = time.monotonic()
        addresses = await podinfo.netns_addresses(ns) if ns else ()
        t["addresses"] = time.monotonic() - t1
        ckpt = Container(c.id, c.bundle, c.state_root,
                         addresses=tuple(ipaddress.ip_address(a) for a in addresses))  # fmt: skip
        m = await backend.checkpoint(ckpt, dest, CheckpointOptions(compression="dir"))
        (dest / plan.READY_MARK).touch()
        total = time.monotonic() - t0 - t.pop("bench", 0.0)
    if m.payload.compression != image.DIR:
        raise AssertionError(f"hibernate wrote a {m.payload.compression} image, not dir")
    t["other"] = total - sum(t.get(s, 0.0) for s in STEPS if s != "other")
    return {"total": total, **t, **backend.stats, "image_mib": m.payload.size / MIB}


def plain(c: Container, dest: Path, work: Path) -> dict[str, float]:
    """``runc checkpoint`` with the backend's own flags, nothing else."""
    dest.mkdir(parents=True)
    work.mkdir(parents=True)
    argv = [which("runc"), "--criu", which("criu"), "--root", str(c.state_root),
            "checkpoint", "--image-path", str(dest), "--work-path", str(work),
            "--file-locks", "--tcp-established", c.id]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    total = time.monotonic() - t0
    if done.returncode != 0:
        log = (
            (work / "dump.log").read_text(errors="replace")[-2000:]
            if (work / "dump.log").exists()
            else ""
        )
        raise AssertionError(f"runc checkpoint failed: {done.stderr.decode()[-500:]} {log}")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"total": total, **criu_stats(work, dest), "image_mib": size / MIB}


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def report(rss: int, ours: list[dict[str, float]], runc: list[dict[str, float]]) -> str:
    h, p = med(ours, "total"), med(runc, "total")
    hc, pc = med(ours, "criu"), med(runc, "criu")
    lines = [
        f"### {rss} MiB of random memory (medians of {len(ours)} rounds; seconds)",
        "",
        "| path | wall | CRIU freezing+frozen (memdump, memwrite) | runc + CRIU start/RPC outside CRIU's stats | image MiB |",
        "|---|---:|---:|---:|---:|",
        f"| hibernate (shim's path) | {h:.3f} | {hc:.3f} ({med(ours, 'memdump_time'):.3f}, "
        f"{med(ours, 'memwrite_time'):.3f}) | {med(ours, 'runc') - hc:.3f} "
        f"| {med(ours, 'image_mib'):.1f} |",
        f"| runc checkpoint alone | {p:.3f} | {pc:.3f} ({med(runc, 'memdump_time'):.3f}, "
        f"{med(runc, 'memwrite_time'):.3f}) | {p - pc:.3f} | {med(runc, 'image_mib'):.1f} |",
        "",
        f"hibernate / runc checkpoint alone: **{h / p:.2f}x**; "
        f"hibernate / CRIU's own dump (stats-dump of the plain run): **{h / pc:.2f}x**; "
        f"runc checkpoint alone / CRIU's own dump: {p / pc:.2f}x",
        "",
        "hibernate breakdown: "
        + ", ".join(f"{s} {med(ours, s) * 1000:.0f} ms" for s in STEPS)
        + f"; extra over the plain runc checkpoint: {(h - p) * 1000:.0f} ms",
        "",
        "each round (hibernate / plain wall, s): "
        + ", ".join(f"{a['total']:.3f}/{b['total']:.3f}" for a, b in zip(ours, runc, strict=True)),
    ]
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,256", help="app RSS values in MiB")
    ap.add_argument("--rounds", type=int, default=3, help="checkpoints of each kind per size")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/hibernate_vs_dump.py needs root (namespaces, runc, criu)", file=sys.stderr)
        return 2
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"--sizes: '{args.sizes}' is not a comma-separated list of MiB", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("--rounds: at least 1", file=sys.stderr)
        return 2
    backend = TimedBackend()
    print(await backend.version(), file=sys.stderr)  # known to the shim's long-lived backend
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hib-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        root = work / "runc-state"
        root.mkdir()
        lab = Lab()
        lab.start()
        try:
            pod = lab.add_pod()
            for rss in sizes:
                ours: list[dict[str, float]] = []
                runc: list[dict[str, float]] = []
                for r in range(args.rounds):
                    kinds = ("hibernate", "plain") if r % 2 == 0 else ("plain", "hibernate")
                    for kind in kinds:
                        cid = f"hb{rss}{kind[0]}{r}{os.getpid()}"
                        c = launch(work, root, cid, rss, pod.netns_path)
                        dest = work / f"img-{cid}"
                        try:
                            if kind == "hibernate":
                                ours.append(await hibernate(backend, c, dest))
                            else:
                                runc.append(plain(c, dest, work / f"work-{cid}"))
                        finally:
                            sh("runc", "--root", str(root), "delete", "--force", cid, check=False)
                            shutil.rmtree(dest, ignore_errors=True)
                            shutil.rmtree(work / f"work-{cid}", ignore_errors=True)
                            shutil.rmtree(work / cid, ignore_errors=True)
                            # The next checkpoint must not pay for this one's writeback.
                            os.sync()
                        last = (ours if kind == "hibernate" else runc)[-1]
                        print(f"{rss} MiB {kind}: {last['total']:.3f} s "
                              f"(CRIU {last.get('criu', 0.0):.3f} s)", file=sys.stderr, flush=True)  # fmt: skip
                out.append(report(rss, ours, runc))
        finally:
            lab.close()
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
