"""Benchmark: what the packet hold adds to a wake, on loopback-scale namespaces.

Two namespaces (client, pod) joined by a veth, made and removed by this script
(test-only addresses 10.213.250.x, inside them only). Three processes, as on a
node: the app in the pod namespace, the client in the client namespace, the
holder (this process) outside both. Per round: a fresh hold is armed on the
app's port with nothing listening; the client connects; the wake callback sleeps
``--restore-ms`` (the restore) and then has the app listen; the client reads the
first response byte. The hold's overhead is

    (first byte - connect start) - wake duration - baseline

where the baseline is the same connect-and-read with the app already listening
and no hold. All times are CLOCK_MONOTONIC, shared by the three processes.
Target: p50 <= 2 ms. Then ``--concurrent`` connections arrive during one wake;
all must succeed. Needs root; run ``runtime/network/install`` first.

    python bench/network_wake.py [--rounds N] [--restore-ms MS] [--concurrent N]

Figures are for this machine in this run; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys

from architect.runtime.network.hold import PacketHold
from architect.runtime.network.netns import NetNs
from architect.runtime.network.rules import NetSpec

PORT = 8080
TARGET_MS = 2.0
CLIENT_IP, POD_IP = "10.213.250.1", "10.213.250.2"

# The app: "listen" / "close" on stdin; answers each connection with one byte.
APP = rf"""
import socket, sys, threading
srv = None
def serve(s):
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            return
        c.sendall(b"x"); c.close()
for line in sys.stdin:
    if line.strip() == "listen":
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", {PORT})); srv.listen(1024)
        threading.Thread(target=serve, args=(srv,), daemon=True).start()
    elif srv is not None:
        srv.shutdown(socket.SHUT_RDWR); srv.close(); srv = None
    print("ok", flush=True)
"""

# The client: "N" on stdin -> N concurrent connections; prints [[start, end], ...].
CLIENT = rf"""
import asyncio, json, socket, sys, time
async def one():
    t0 = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection("{POD_IP}", {PORT}), 20)
    data = await asyncio.wait_for(r.read(1), 20)
    t1 = time.monotonic()
    w.close()
    assert data == b"x"
    return [t0, t1]
async def run(n):
    return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
for line in sys.stdin:
    res = asyncio.run(run(int(line)))
    print(json.dumps([r if isinstance(r, list) else str(r) for r in res]), flush=True)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def make_namespaces(client: str, pod: str) -> None:
    _ip("netns", "add", client)
    _ip("netns", "add", pod)
    _ip("link", "add", "vc", "netns", client, "type", "veth", "peer", "name", "vp", "netns", pod)
    for ns, dev, addr in ((client, "vc", CLIENT_IP), (pod, "vp", POD_IP)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")


class Child:
    """A line-oriented helper process inside a namespace."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, ns: NetNs, code: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *ns.argv([sys.executable, "-c", code]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


async def held_round(
    pod: NetNs, app: Child, client: Child, restore_s: float, n: int, queue: int
) -> tuple[PacketHold, list[list[float] | str]]:
    async def wake() -> None:
        await asyncio.sleep(restore_s)
        await app.ask("listen")

    hold = PacketHold(pod, NetSpec(tag="bench", tcp_ports=(PORT,), queue_num=queue), wake)
    await hold.start()
    try:
        results: list[list[float] | str] = json.loads(await client.ask(str(n)))
    finally:
        await hold.close()
        await app.ask("close")
    return hold, results


async def run(args: argparse.Namespace, client_ns: NetNs, pod: NetNs) -> int:
    restore_s, ms = args.restore_ms / 1000, 1000.0
    app = await Child.start(pod, APP)
    client = await Child.start(client_ns, CLIENT)
    try:
        await app.ask("listen")
        base = []
        for _ in range(args.rounds):
            ((t0, t1),) = json.loads(await client.ask("1"))
            base.append(t1 - t0)
        await app.ask("close")
        base_p50 = statistics.median(base)

        overheads, totals, waits = [], [], []
        for _ in range(args.rounds):
            hold, res = await held_round(pod, app, client, restore_s, 1, 1)
            (one,) = res
            assert isinstance(one, list), f"held connection failed: {one}"
            t0, t1 = one
            assert hold.stats.first_packet_at is not None
            assert hold.stats.wake_started_at is not None
            totals.append(t1 - t0)
            overheads.append(t1 - t0 - (hold.stats.wake_seconds or 0.0) - base_p50)
            waits.append(hold.stats.wake_started_at - hold.stats.first_packet_at)

        hold, res = await held_round(pod, app, client, restore_s, args.concurrent, 2)
    finally:
        await app.stop()
        await client.stop()

    ok = [r for r in res if isinstance(r, list)]
    errors = [r for r in res if not isinstance(r, list)]
    released = hold.stats.released_at or 0.0
    after = [t1 - released for _, t1 in ok]
    p50 = statistics.median(overheads) * ms
    print(
        f"rounds: {args.rounds}, restore: {args.restore_ms:.0f} ms (app, client, holder: 3 processes)"
    )
    print(f"baseline connect+first byte (no hold): p50 {base_p50 * ms:.3f} ms")
    print(f"held connect+first byte:                p50 {statistics.median(totals) * ms:.3f} ms")
    print(
        f"hold overhead (total - restore - baseline): p50 {p50:.3f} ms, "
        f"p90 {pct(overheads, 0.9) * ms:.3f} ms, max {max(overheads) * ms:.3f} ms"
    )
    print(f"first SYN at the holder -> wake started: p50 {statistics.median(waits) * ms:.3f} ms")
    print(f"overhead p50 / target {TARGET_MS} ms: {p50 / TARGET_MS:.2f}")
    print(f"overhead p50 / restore time: {p50 / args.restore_ms:.4f}")
    print(
        f"concurrent: {len(ok)}/{args.concurrent} connections answered during one wake "
        f"({len(errors)} errors), {hold.stats.released_packets} packets held and released; "
        f"verdicts for all of them took {hold.stats.release_seconds * ms:.3f} ms"
    )
    if ok:
        print(
            f"concurrent: release -> first byte p50 {statistics.median(after) * ms:.2f} ms, "
            f"max {max(after) * ms:.2f} ms"
        )
    return 0 if not errors and p50 <= TARGET_MS else 1


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
    client, pod = f"arch-bc{tag}", f"arch-bp{tag}"
    try:
        make_namespaces(client, pod)
        return asyncio.run(run(args, NetNs.named(client), NetNs.named(pod)))
    finally:
        for n in (client, pod):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


if __name__ == "__main__":
    sys.exit(main())
