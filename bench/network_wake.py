"""Benchmark: what the packet hold adds to a wake, on loopback-scale namespaces.

Two namespaces (client, pod) joined by a veth, made and removed by this script
(test-only addresses 10.213.250.x, inside them only). Per round: a fresh hold is
armed on the pod's port with nothing listening; the client connects; the wake
callback sleeps ``--restore-ms`` (the restore) and then starts the listener; the
client reads the first response byte. The hold's overhead is

    (first byte - connect start) - wake duration - baseline

where the baseline is the same connect-and-read with the app already listening
and no hold. Target: p50 <= 2 ms. Then 100 concurrent connections arrive during
one wake; all must succeed, and the time from wake end to each first byte is
reported. Needs root; run ``runtime/network/install`` first.

    python bench/network_wake.py [--rounds N] [--restore-ms MS] [--concurrent N]

Figures are for this machine in this run; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from architect.runtime.network.hold import PacketHold
from architect.runtime.network.netns import NetNs
from architect.runtime.network.rules import NetSpec

PORT = 8080
TARGET_MS = 2.0
CLIENT_IP, POD_IP = "10.213.250.1", "10.213.250.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def make_namespaces(tag: str) -> tuple[str, str]:
    client, pod = f"arch-bc{tag}", f"arch-bp{tag}"
    _ip("netns", "add", client)
    _ip("netns", "add", pod)
    _ip("link", "add", "vc", "netns", client, "type", "veth", "peer", "name", "vp", "netns", pod)
    for ns, dev, addr in ((client, "vc", CLIENT_IP), (pod, "vp", POD_IP)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    return client, pod


def _sockets(ns: NetNs, n: int) -> list[socket.socket]:
    def make() -> list[socket.socket]:
        out = []
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            out.append(s)
        return out

    return ns.call(make)


async def start_app(ns: NetNs) -> asyncio.Server:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", PORT))
        s.listen(1024)
        s.setblocking(False)
        return s

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"x")
        await w.drain()
        w.close()

    return await asyncio.start_server(handle, sock=ns.call(make))


async def first_byte(s: socket.socket) -> float:
    """Seconds from connect start to the first response byte."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    await asyncio.wait_for(loop.sock_connect(s, (POD_IP, PORT)), 10)
    data = await asyncio.wait_for(loop.sock_recv(s, 1), 10)
    if data != b"x":
        raise RuntimeError("no response byte")
    return time.monotonic() - t0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


async def held_wake(
    pod: NetNs, restore_s: float, queue: int
) -> tuple[PacketHold, Callable[[], Awaitable[None]], list[asyncio.Server]]:
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        await asyncio.sleep(restore_s)
        servers.append(await start_app(pod))

    hold = PacketHold(pod, NetSpec(tag="bench", tcp_ports=(PORT,), queue_num=queue), wake)
    await hold.start()

    async def close() -> None:
        await hold.close()
        for srv in servers:
            srv.close()
            await srv.wait_closed()

    return hold, close, servers


async def run(args: argparse.Namespace, client: NetNs, pod: NetNs) -> int:
    restore_s = args.restore_ms / 1000
    # Baseline: app listening, no hold.
    server = await start_app(pod)
    base = []
    for s in _sockets(client, args.rounds):
        base.append(await first_byte(s))
        s.close()
    server.close()
    await server.wait_closed()
    base_p50 = statistics.median(base)

    overheads, totals, waits = [], [], []
    for _ in range(args.rounds):
        hold, close, _servers = await held_wake(pod, restore_s, 1)
        (s,) = _sockets(client, 1)
        try:
            total = await first_byte(s)
        finally:
            s.close()
            await close()
        wake_s = hold.stats.wake_seconds or 0.0
        assert hold.stats.first_packet_at is not None and hold.stats.wake_started_at is not None
        waits.append(hold.stats.wake_started_at - hold.stats.first_packet_at)
        totals.append(total)
        overheads.append(total - wake_s - base_p50)

    # Concurrency: N connections during one wake.
    hold, close, _servers = await held_wake(pod, restore_s, 2)
    socks = _sockets(client, args.concurrent)
    done_at: list[float] = []

    async def one(s: socket.socket) -> float:
        d = await first_byte(s)
        done_at.append(time.monotonic())
        return d

    results = await asyncio.gather(*(one(s) for s in socks), return_exceptions=True)
    ok = [r for r in results if isinstance(r, float)]
    released_at = hold.stats.released_at or 0.0
    verdicts_ms = hold.stats.release_seconds * 1000
    after_release = [t - released_at for t in done_at]
    for s in socks:
        s.close()
    await close()

    ms = 1000.0
    print(f"rounds: {args.rounds}, restore: {args.restore_ms:.0f} ms")
    print(f"baseline connect+first byte (no hold): p50 {base_p50 * ms:.3f} ms")
    print(f"held connect+first byte:                p50 {statistics.median(totals) * ms:.3f} ms")
    print(
        f"hold overhead (total - restore - baseline): p50 {statistics.median(overheads) * ms:.3f}"
        f" ms, p90 {pct(overheads, 0.9) * ms:.3f} ms, max {max(overheads) * ms:.3f} ms"
    )
    print(
        f"first SYN at the holder -> wake callback started: p50 "
        f"{statistics.median(waits) * ms:.3f} ms"
    )
    p50 = statistics.median(overheads) * ms
    print(f"overhead p50 / target {TARGET_MS} ms: {p50 / TARGET_MS:.2f}")
    print(f"overhead p50 / restore time: {p50 / args.restore_ms:.4f}")
    print(
        f"concurrent: {len(ok)}/{args.concurrent} connections answered during one wake, "
        f"{hold.stats.released_packets} SYNs held and released, "
        f"connect->first byte p50 {statistics.median(ok) * ms:.1f} ms "
        f"max {max(ok) * ms:.1f} ms; release -> first byte p50 "
        f"{statistics.median(after_release) * ms:.1f} ms, max {max(after_release) * ms:.1f} ms"
    )
    print(
        f"releasing {hold.stats.released_packets} held packets (verdicts): {verdicts_ms:.3f} ms"
        " (the rest of release -> first byte is the kernel handshakes and this one asyncio"
        " loop serving client and app alike)"
    )
    return 0 if len(ok) == args.concurrent and p50 <= TARGET_MS else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--restore-ms", type=float, default=50.0)
    p.add_argument("--concurrent", type=int, default=100)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("network_wake: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    tag = str(os.getpid())
    names: list[str] = []
    try:
        names = list(make_namespaces(tag))
        return asyncio.run(run(args, NetNs.named(names[0]), NetNs.named(names[1])))
    finally:
        for n in (f"arch-bc{tag}", f"arch-bp{tag}"):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


if __name__ == "__main__":
    sys.exit(main())
