"""Checkpoint/restore benchmark: time and image size against RSS, both backends.

For each backend (runc+CRIU, runsc) and app RSS (16, 64, 256 MiB by default):
cold start of the app (run -> first HTTP answer), checkpoint time, image size,
restore time, restore -> first answer, restore throughput. Plus a layout
comparison (tar stream none / zstd, node-local directory) for runc+CRIU at the
largest RSS. Prints markdown.

Needs root and runtime/checkpoint/install. Run from the repository root:
    python bench/checkpoint.py [--sizes 16,64,256] [--fill mixed]

The app keeps ``RSS`` MiB of ballast: ``mixed`` is half pseudo-random, half
compressible per page, like a typical heap; ``rand`` and ``zero`` are the bounds.
Figures are one run on a shared machine: compare ratios within the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architect.runtime.checkpoint import CheckpointOptions, Container
from architect.runtime.checkpoint.api import Backend
from architect.runtime.checkpoint.runc import RuncCriuBackend
from architect.runtime.checkpoint.runsc import RunscBackend
from tests.runtime.checkpoint.ckpt_lab import (
    Lab,
    build_server,
    make_bundle,
    sh,
    start,
)

MIB = 1 << 20
RUNSC_FLAGS = ("--network=none",)


@dataclass
class Row:
    backend: str
    rss_mib: int
    compression: str
    cold_start: float
    checkpoint: float
    image_mib: float
    raw_mib: float
    memory_mib: float
    restore: float
    verify: float
    restore_answer: float


def _wait(pred: Callable[[], bool], timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise TimeoutError("app never answered")


class RuncApp:
    name = "runc-criu"

    def __init__(self, work: Path, server: Path, lab: Lab) -> None:
        self.work, self.server, self.lab = work / self.name, server, lab
        self.pod = lab.add_pod()
        self.root = self.work / "runc-state"
        self.root.mkdir(parents=True)

    def backend(self) -> Backend:
        return RuncCriuBackend()

    def answers(self) -> bool:
        try:
            self.lab.get(self.pod.ip4, timeout=2)
        except ConnectionError:
            return False
        return True

    def launch(self, cid: str, rss: int, fill: str) -> Container:
        bundle = make_bundle(
            self.work / cid, self.server, ["/server", self.pod.ip4, "8080", str(rss), fill],
            self.pod.netns_path, cgroups_path=f"/architect-bench/{cid}",
        )  # fmt: skip
        start("runc", self.root, cid, bundle)
        return Container(cid, bundle, self.root)

    def remove(self, cid: str) -> None:
        sh("runc", "--root", str(self.root), "delete", "--force", cid, check=False)


class RunscApp:
    name = "runsc"

    def __init__(self, work: Path, server: Path, lab: Lab) -> None:
        self.work, self.server = work / self.name, server
        self.root = self.work / "runsc-state"
        self.root.mkdir(parents=True)
        self.cid = ""

    def backend(self) -> Backend:
        return RunscBackend(flags=RUNSC_FLAGS)

    def answers(self) -> bool:
        # From inside the sandbox: this runsc cannot network a sandbox on this kernel.
        done = sh("runsc", "--root", str(self.root), *RUNSC_FLAGS, "exec", self.cid,
                  "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/",
                  check=False, timeout=30)  # fmt: skip
        return done.returncode == 0

    def launch(self, cid: str, rss: int, fill: str) -> Container:
        self.cid = cid
        bundle = make_bundle(
            self.work / cid, self.server, ["/server", "127.0.0.1", "8080", str(rss), fill],
            None, cgroups_path=f"/architect-bench/{cid}",
        )  # fmt: skip
        start("runsc", self.root, cid, bundle, *RUNSC_FLAGS)
        return Container(cid, bundle, self.root)

    def remove(self, cid: str) -> None:
        sh("runsc", "--root", str(self.root), "delete", "-force", cid, check=False)


async def measure(app: RuncApp | RunscApp, rss: int, fill: str, compression: str, tag: str) -> Row:
    cid = f"b{tag}{os.getpid()}"
    t0 = time.monotonic()
    c = app.launch(cid, rss, fill)
    cold = (time.monotonic() - t0) + _wait(app.answers)
    b = app.backend()
    image = app.work / f"img-{cid}"
    try:
        t0 = time.monotonic()
        m = await b.checkpoint(c, image, CheckpointOptions(compression=compression))
        ckpt = time.monotonic() - t0
        t0 = time.monotonic()
        result = await b.restore(c, image)
        restore = time.monotonic() - t0
        answer = restore + _wait(app.answers)
        return Row(
            app.name, rss, m.payload.compression, cold, ckpt, m.payload.size / MIB,
            m.payload.raw_size / MIB, m.memory_bytes / MIB, restore,
            result.details.get("verify_unpack", 0.0), answer,
        )  # fmt: skip
    finally:
        app.remove(cid)
        shutil.rmtree(image, ignore_errors=True)


def table(rows: list[Row]) -> str:
    out = [
        "| backend | RSS MiB | compression | cold start s | checkpoint s | image MiB "
        "| raw MiB | restore s (verify+unpack) | restore→answer s | restore MB/s | wake/cold |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mbps = r.raw_mib * MIB / 1e6 / r.restore if r.restore else 0.0
        out.append(
            f"| {r.backend} | {r.rss_mib} | {r.compression} | {r.cold_start:.2f} "
            f"| {r.checkpoint:.2f} | {r.image_mib:.1f} | {r.raw_mib:.1f} "
            f"| {r.restore:.2f} ({r.verify:.2f}) "
            f"| {r.restore_answer:.2f} | {mbps:.0f} | {r.restore_answer / r.cold_start:.2f} |"
        )
    return "\n".join(out)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16,64,256", help="app RSS values in MiB")
    ap.add_argument("--fill", default="mixed", choices=["mixed", "rand", "zero"])
    ap.add_argument("--backends", default="runc-criu,runsc")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/checkpoint.py needs root (namespaces, runc, criu, runsc)", file=sys.stderr)
        return 2
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"--sizes: '{args.sizes}' is not a comma-separated list of MiB", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        server = build_server(work)
        lab = Lab()
        lab.start()
        try:
            apps: list[RuncApp | RunscApp] = []
            if "runc-criu" in args.backends:
                apps.append(RuncApp(work, server, lab))
            if "runsc" in args.backends:
                apps.append(RunscApp(work, server, lab))
            for app in apps:
                for rss in sizes:
                    rows.append(await measure(app, rss, args.fill, "auto", f"{rss}"))
                    print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            # Does compression pay, and what does the node-local directory layout
            # (the shim's hibernation images) save? Same app, each way, largest RSS.
            if apps and isinstance(apps[0], RuncApp):
                for comp in ("none", "zstd", "dir"):
                    rows.append(await measure(apps[0], max(sizes), args.fill, comp, f"c{comp}"))
        finally:
            lab.close()
    print(f"\nfill={args.fill}; one run; wake/cold = (restore→answer) / (cold start)\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
