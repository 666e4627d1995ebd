"""Benchmark: a PersistentCheckpoint image pushed to and pulled from a real registry.

Debian's docker-registry (distribution 2.8) on loopback, started by e2e/registry.py
in a temporary directory. The image: a sealed directory as the shim leaves it (one
incompressible state file of --mib MiB, a manifest.json of sha256s). Timed: the
first push (every blob sent), a second push (the registry has every blob: only
HEADs and the manifest), a pull with every digest checked; against a plain copy
of the same files on the same disk. Medians of --rounds; prints MB/s and ratios.

    python bench/registry_transfer.py [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from architect.runtime.shim import plan
from architect.runtime.transfer import registry as r
from e2e import registry as e2e_registry


def sealed(d: Path, mib: int) -> None:
    d.mkdir(parents=True)
    with (d / "checkpoint.img").open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256((d / "checkpoint.img").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps({"files": {"checkpoint.img": digest}}))
    (d / plan.READY_MARK).touch()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="architect-bench-registry-", dir="/var/tmp") as t:
        tmp = Path(t)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            addr = f"127.0.0.1:{s.getsockname()[1]}"
        proc = e2e_registry.start(addr, tmp / "registry")
        try:
            src = tmp / "src"
            sealed(src, args.mib)
            digest = plan.manifest_digest(src)
            first, again, pull, copy = [], [], [], []
            for i in range(args.rounds):
                repo = f"{addr}/bench/r{i}"  # a new repository: the first push sends all
                t0 = time.perf_counter()
                pushed = r.push_checkpoint(src, repo, "bench", "img")
                first.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert r.push_checkpoint(src, repo, "bench", "img").blobs_uploaded == 0
                again.append(time.perf_counter() - t0)
                d = tmp / f"dst{i}"
                d.mkdir()
                (d / plan.PENDING_MARK).touch()
                t0 = time.perf_counter()
                r.pull_checkpoint(pushed.location, digest, d, "bench", [])
                pull.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                shutil.copytree(src, tmp / f"copy{i}")
                copy.append(time.perf_counter() - t0)
                shutil.rmtree(d)
                shutil.rmtree(tmp / f"copy{i}")
        finally:
            e2e_registry.stop_proc(proc)
    mb = args.mib * 1.048576
    med = {k: statistics.median(v) for k, v in
           (("push", first), ("push again", again), ("pull", pull), ("plain copy", copy))}
    print(f"registry transfer of a {args.mib} MiB image, median of {args.rounds} "
          f"(docker-registry 2.8 on loopback)")
    for k, v in med.items():
        print(f"  {k:11s} {v:7.3f} s  {mb / v:8.1f} MB/s  {v / med['plain copy']:5.2f}x plain copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
