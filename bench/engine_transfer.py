"""Benchmark: a 256 MiB checkpoint image between two daemons on loopback.

The source packs a shim-style handover (raw engine files, incompressible, so
the payload is not compressed) and serves it over mutual TLS from a process of
its own (as the source daemon would); the destination
fetches it: download through the digest checks, unpack with every file's
digest checked, hand over (move + ``ready``). Compared, in the same run, with
a plain copy of the same image files (no TLS, no checks). Prints MB/s of each
and their ratio; medians of several rounds.

    python bench/engine_transfer.py [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from architect.engine.controlplane.transfer import Grant, Ticket, issue
from architect.engine.tls import make_ca, make_node_cert
from architect.runtime.shim.plan import READY_MARK
from architect.runtime.transfer import NodeTLS, TransferServer, export, fetch
from architect.runtime.transfer.images import outgoing_dir

KEY = os.urandom(32)
HASH, CONTAINER = "bench", "app"
SLOT = "from_ns_bench"  # runtime/shim/plan.py source_slot("ns", "bench")


def make_handover(root: Path, mib: int) -> None:
    d = root / "handover" / HASH / CONTAINER / SLOT
    d.mkdir(parents=True)
    with open(d / "pages-1.img", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    (d / "core-1.img").write_bytes(b"c" * 4096)
    (d / READY_MARK).touch()


def _serve(root: Path, tls: NodeTLS, ports: multiprocessing.Queue[int]) -> None:
    """The source daemon: serve until terminated."""
    checkpoint = {
        "metadata": {"namespace": "ns", "name": "ck", "uid": "u"},
        "spec": {"templateHash": HASH, "container": CONTAINER},
        "status": {"phase": "Restoring", "consumedBy": "pod"},
    }

    async def lookup(ns: str, name: str) -> Mapping[str, Any] | None:
        return checkpoint

    async def main() -> None:
        server = TransferServer(root, tls, KEY, lookup)
        ports.put(await server.start("127.0.0.1", 0))
        await asyncio.sleep(3600)

    asyncio.run(main())


async def run(mib: int, rounds: int, tmp: Path) -> int:
    ca = make_ca("bench-ca")
    src_tls = NodeTLS.from_cert("src", make_node_cert(ca, "src", ["127.0.0.1"]))
    dst_tls = NodeTLS.from_cert("dst", make_node_cert(ca, "dst", ["127.0.0.1"]))
    src_root = tmp / "src"
    make_handover(src_root, mib)
    t0 = time.perf_counter()
    ref = export(src_root, "src", HASH, CONTAINER, SLOT, compression="none")
    export_s = time.perf_counter() - t0
    ctx = multiprocessing.get_context("fork")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    source = ctx.Process(target=_serve, args=(src_root, src_tls, ports), daemon=True)
    source.start()
    port = ports.get(timeout=60)
    fetch_s, copy_s, download_s = [], [], []
    try:
        for i in range(rounds):
            ticket = Ticket(
                "ns",
                "ck",
                "u",
                ref.digest,
                ref.size_bytes,
                "src",
                "dst",
                "pod",
                int((datetime.now(UTC) + timedelta(minutes=10)).timestamp()),
            )
            grant = Grant(f"https://127.0.0.1:{port}", issue(ticket, KEY), HASH, CONTAINER)
            dst_root = tmp / f"dst{i}"
            t0 = time.perf_counter()
            timings: dict[str, float] = {}
            await fetch(grant, dst_root, dst_tls, timings=timings)
            fetch_s.append(time.perf_counter() - t0)
            download_s.append(timings["download"])
            shutil.rmtree(dst_root)
            copy_dir = tmp / f"copy{i}"
            copy_dir.mkdir()
            t0 = time.perf_counter()
            for p in outgoing_dir(src_root, HASH, CONTAINER, ref.digest).iterdir():
                shutil.copyfile(p, copy_dir / p.name)
            copy_s.append(time.perf_counter() - t0)
            shutil.rmtree(copy_dir)
    finally:
        source.terminate()
        source.join(10)
    mb = ref.size_bytes / 1e6
    f, c = statistics.median(fetch_s), statistics.median(copy_s)
    d = statistics.median(download_s)
    print(
        f"image: {ref.size_bytes / (1 << 20):.1f} MiB (packed in {export_s:.2f}s, "
        f"{mb / export_s:.0f} MB/s)"
    )
    print(
        f"fetch over mTLS + verify + unpack + hand over: median {f:.2f}s = {mb / f:.0f} MB/s "
        f"(rounds: {', '.join(f'{x:.2f}' for x in fetch_s)})"
    )
    print(
        f"  of which the download over mTLS with the streamed digest checks: median {d:.2f}s "
        f"= {mb / d:.0f} MB/s"
    )
    print(
        f"plain file copy of the image:                  median {c:.2f}s = {mb / c:.0f} MB/s "
        f"(rounds: {', '.join(f'{x:.2f}' for x in copy_s)})"
    )
    print(f"fetch / copy time ratio: {f / c:.1f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.mib < 1 or args.rounds < 1:
        print("--mib and --rounds must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="architect-bench-transfer-", dir="/var/tmp") as d:
        return asyncio.run(run(args.mib, args.rounds, Path(d)))


if __name__ == "__main__":
    sys.exit(main())
