"""Wake latency: first packet -> first response byte of a hibernated HTTP app, by phase.

    python bench/wake_latency.py [--wakes 10] [--rss-mib 64] [--baseline REV[,REV...]]
                                 [--variants unsealed,no-kdat]

In namespaces of its own (tests/runtime/checkpoint/ckpt_lab: a client namespace
joined by a veth to a pod namespace, test-only addresses) it runs the counter app
(tests/runtime/checkpoint/counter_server.c, RSS MiB of half-random ballast) under
runc, and measures in one run:

- cold start: ``runc run`` -> first HTTP answer, as bench/checkpoint.py does;
- wakes, as on a node: the daemon's ContainerNetwork (runtime/network) arms the
  packet hold, the app is checkpointed into the node-local layout (as the shim
  hibernates it) and the hold is put above CRIU's network lock; a client (its own
  process in the client namespace) connects and sends one GET; the hold's first
  packet calls the wake, which asks a restorer process (RuncCriuBackend of the code
  under test, one long-lived process as the shim is) to restore; the held packets
  are released; the client reads the first byte of the answer. The counter must go
  on by one at every wake (state kept) or the wake is counted as lost.

Each ``--baseline`` revision gets a restorer of its own (its tree exported,
bench/revisions.py) and the wakes alternate between them and this tree, so the
ratios come from one run on the same loaded machine. A baseline restores without
CRIU's kdat cache (removed before each of its restores), as CRIU ran before
runtime/checkpoint/install kept one; ``--variants`` adds this tree without the
kdat cache (its effect alone) and unsealed (a new backend per restore, as after
a shim restart: every file hashed again). Phases, on CLOCK_MONOTONIC across the
processes:

  hold     first packet at the holder -> the wake callback runs
  restore  the wake's round trip to the restorer (as the daemon's to the shim), of
           which: check (image verification, + copy on the old path), engine
           (runc restore + CRIU, and where the code does it, our removal of the
           dump's network lock: unlock), other (runc state, scratch dirs, the hop)
  release  the wake returned -> the held packets accepted
  answer   released -> first response byte (handshake, the restored app's reply)
  late     a second client's connect -> first byte, when it connects --late-ms
           after the first (during the restore): is its SYN held or lost?

The daemon's own decision (status PATCH, lock) is not in this rig: the daemon
publishes it as ``architect_wake_phase_seconds{phase="decision"}``. Needs root,
runtime/checkpoint/install and runtime/network/install. Figures are one run on
a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architect.runtime.checkpoint import Container
from architect.runtime.network.container import ContainerNetwork, net_spec
from architect.runtime.network.netns import NetNs
from bench.checkpoint import RuncApp, _wait
from bench.network_wake import Child, pct
from bench.revisions import ROOT, exported_tree, is_revision, short
from tests.runtime.checkpoint.ckpt_lab import Lab, build_server

PORT = 8080
THIS = "this tree"

# The restorer: one RuncCriuBackend for its whole life, as the shim keeps one.
RESTORER = r"""
import asyncio, json, sys, time
from pathlib import Path
from architect.runtime.checkpoint import CheckpointOptions, Container, RestoreOptions
from architect.runtime.checkpoint.runc import RuncCriuBackend

async def main():
    b = RuncCriuBackend()
    kdat = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        req = json.loads(line)
        c = Container(req["id"], Path(req["bundle"]), Path(req["root"]))
        t0 = time.monotonic()
        try:
            if req["op"] == "checkpoint":
                await b.checkpoint(c, Path(req["image"]), CheckpointOptions(compression="dir"))
                out = {"ok": True, "seconds": time.monotonic() - t0}
            else:
                if kdat is not None:  # CRIU without its kdat cache
                    kdat.unlink(missing_ok=True)
                if req.get("fresh"):  # a restarted shim: no seal of the image
                    b = RuncCriuBackend()
                r = await b.restore(c, Path(req["image"]), RestoreOptions(empty_dirs=False))
                out = {"ok": True, "seconds": r.seconds, "details": r.details}
        except Exception as e:
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

asyncio.run(main())
"""

# The client: a line "HOST PORT" -> one GET; prints [connect start, first byte, body].
CLIENT = r"""
import json, socket, sys, time
for line in sys.stdin:
    s = socket.socket()
    s.settimeout(30)
    t0 = time.monotonic()
    host, port = line.split()
    s.connect((host, int(port)))
    s.sendall(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(1)
    t1 = time.monotonic()
    while True:
        head, _, body = data.partition(b"\r\n\r\n")
        if _ and len(body) >= int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
            break
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    body = body.decode().strip()
    print(json.dumps([t0, t1, body]), flush=True)
"""


class Restorer:
    """The code under test in a process of its own (PYTHONPATH: its tree)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, fresh: bool) -> None:
        self.name, self.proc, self.fresh = name, proc, fresh

    @classmethod
    async def start(
        cls, name: str, tree: Path, *, fresh: bool = False, drop_kdat: Path | None = None
    ) -> Restorer:
        """``fresh``: a new backend for every restore (no seal: a restarted shim);
        ``drop_kdat``: remove CRIU's kdat cache before every restore."""
        env = {**os.environ, "PYTHONPATH": str(tree)}
        argv = [sys.executable, "-c", RESTORER, *([str(drop_kdat)] if drop_kdat else [])]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd="/", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(name, proc, fresh)

    async def ask(self, op: str, c: Container, image: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {"op": op, "id": c.id, "bundle": str(c.bundle), "root": str(c.state_root),
               "image": str(image), "fresh": self.fresh}  # fmt: skip
        self.proc.stdin.write(json.dumps(req).encode() + b"\n")
        await self.proc.stdin.drain()
        out: dict[str, Any] = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 300))
        if not out.get("ok"):
            raise RuntimeError(f"{self.name}: {op} failed: {out.get('error')}")
        return out

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Wakes:
    name: str
    phases: dict[str, list[float]] = field(default_factory=dict)
    checkpoints: list[float] = field(default_factory=list)
    lost: int = 0

    def add(self, **phases: float) -> None:
        for k, v in phases.items():
            self.phases.setdefault(k, []).append(v)


ORDER = ("total", "hold", "restore", "check", "engine", "unlock", "other", "release", "answer",
         "late")


async def one_wake(
    r: Restorer, c: Container, net: ContainerNetwork, client: Child, host: str,
    image: Path, w: Wakes, last: int, late: tuple[Child, float] | None = None,
) -> int:  # fmt: skip
    """Hibernate ``c`` with ``r``, wake it by one GET (and, with ``late``, a second
    client's GET that many seconds later, while the restore runs); the counter."""
    reply: dict[str, Any] = {}
    marks: dict[str, float] = {}

    async def wake() -> None:
        marks["asked"] = time.monotonic()
        reply.update(await r.ask("restore", c, image))
        marks["answered"] = time.monotonic()

    hold = await net.hibernate(wake)
    try:
        done = await r.ask("checkpoint", c, image)
        w.checkpoints.append(float(done["seconds"]))
        await net.after_checkpoint()
        first = asyncio.ensure_future(client.ask(f"{host} {PORT}"))
        second = None
        if late is not None:
            await asyncio.sleep(late[1])
            second = asyncio.ensure_future(late[0].ask(f"{host} {PORT}"))
        t0, t1, body = json.loads(await first)
        bodies = [int(body)]
        if second is not None:
            l0, l1, late_body = json.loads(await second)
            w.add(late=l1 - l0)
            bodies.append(int(late_body))
        await hold.wait_released(60)
    finally:
        await net.resume()
        shutil.rmtree(image, ignore_errors=True)
    st = hold.stats
    if hold.core.outcome != "woken" or st.first_packet_at is None:
        raise RuntimeError(f"{r.name}: wake failed: {hold.core.outcome}")
    assert st.wake_started_at and st.wake_finished_at and st.released_at
    d = reply.get("details", {})
    restore = marks["answered"] - marks["asked"]
    check, engine = float(d.get("verify_unpack", 0.0)), float(d.get("engine_restore", 0.0))
    w.add(
        total=t1 - t0, hold=st.wake_started_at - st.first_packet_at, restore=restore,
        check=check, engine=engine, other=restore - check - engine,
        release=st.released_at - st.wake_finished_at, answer=t1 - st.released_at,
    )  # fmt: skip
    if "unlock" in d:  # inside engine: CRIU's lock removed by the backend (netlock.py)
        w.add(unlock=float(d["unlock"]))
    w.lost += sorted(bodies) != list(range(last + 1, last + 1 + len(bodies)))
    return max(bodies)


def report(
    rss: int, cold: list[float], runs: list[Wakes], wakes: int, base: Wakes | None
) -> str:
    cold_s = statistics.median(cold)
    ms = 1000.0
    lines = [
        f"app RSS ballast {rss} MiB (half random), {wakes} wakes per code, alternated; "
        f"cold start (runc run -> first answer) median of {len(cold)}: {cold_s * ms:.0f} ms",
        "",
        "| code | phase | p50 ms | p99 ms | p50 / cold start | p50 / first baseline |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        for k in ORDER:
            xs = run.phases.get(k, [])
            if not xs:
                continue
            p50 = statistics.median(xs)
            vs = ""
            if base is not None and run is not base and base.phases.get(k):
                b50 = statistics.median(base.phases[k])
                vs = f"{p50 / b50:.2f}" if b50 > 0 else ""
            of_cold = f"{p50 / cold_s:.3f}" if k == "total" else ""
            lines.append(
                f"| {run.name} | {k} | {p50 * ms:.1f} | {pct(xs, 0.99) * ms:.1f} "
                f"| {of_cold} | {vs} |"
            )
        lines.append(
            f"| {run.name} | checkpoint (not in the wake) | "
            f"{statistics.median(run.checkpoints) * ms:.0f} | {pct(run.checkpoints, 0.99) * ms:.0f}"
            f" | | |"
        )
    lost = sum(r.lost for r in runs)
    lines += ["", f"state lost: {lost} of {wakes * len(runs)} wakes; "
              "p99 of a few wakes is their maximum"]  # fmt: skip
    return "\n".join(lines)


async def run(args: argparse.Namespace, revs: list[str]) -> int:
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(
        prefix="wake-bench-", dir="/var/tmp"
    ) as tmp:
        work = Path(tmp)
        lab = Lab()
        lab.start()
        stack.callback(lab.close)
        app = RuncApp(work, build_server(work), lab)
        host = app.pod.ip4
        cold = []
        for i in range(args.cold):
            cid = f"cold{i}x{os.getpid()}"
            t0 = time.monotonic()
            app.launch(cid, args.rss_mib, "mixed")
            cold.append(time.monotonic() - t0 + _wait(app.answers))
            app.remove(cid)
        restorers = []
        # The first baseline is the ratios' reference. Baselines restore without
        # CRIU's kdat cache (as before it was kept), unless --baseline-kdat.
        kdat = Path(args.kdat)
        for rev in revs:
            tree = stack.enter_context(exported_tree(rev))
            name = f"{short(rev)} (baseline{', kdat cache' if args.baseline_kdat else ''})"
            restorers.append(await Restorer.start(
                name, tree, drop_kdat=None if args.baseline_kdat else kdat))  # fmt: skip
        restorers.append(await Restorer.start(THIS, ROOT))
        if "unsealed" in args.variants:
            restorers.append(await Restorer.start(f"{THIS}, unsealed", ROOT, fresh=True))
        if "no-kdat" in args.variants:
            restorers.append(await Restorer.start(f"{THIS}, no kdat cache", ROOT, drop_kdat=kdat))
        ns = NetNs.named(app.pod.ns)
        spec = net_spec(1, "packets", [PORT])
        assert spec is not None
        net = ContainerNetwork(ns, spec)
        await net.setup()
        client = await Child.start(NetNs.named(lab.client), CLIENT)
        late = None
        if args.late_ms > 0:
            late = (await Child.start(NetNs.named(lab.client), CLIENT), args.late_ms / 1000)
        cid = f"wake{os.getpid()}"
        c = app.launch(cid, args.rss_mib, "mixed")
        runs = [Wakes(r.name) for r in restorers]
        try:
            _wait(app.answers)
            last = int(lab.get(host))
            for i in range(args.wakes):
                for r, w in zip(restorers, runs, strict=True):
                    last = await one_wake(r, c, net, client, host, work / f"img{i}", w, last,
                                          late)  # fmt: skip
                    print(f"{w.name}: wake {i + 1}: {w.phases['total'][-1] * 1000:.0f} ms",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            app.remove(cid)
            await client.stop()
            if late is not None:
                await late[0].stop()
            for r in restorers:
                await r.stop()
            await net.teardown()
    print(report(args.rss_mib, cold, runs, args.wakes, runs[0] if revs else None))
    return 0 if all(w.lost == 0 for w in runs) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wakes", type=int, default=10, help="wakes per code (1..100)")
    ap.add_argument("--rss-mib", type=int, default=64)
    ap.add_argument("--cold", type=int, default=3, help="cold starts measured (1..20)")
    ap.add_argument("--baseline", default="", metavar="REV[,REV...]",
                    help="git revisions whose checkpoint code runs beside this tree's")
    ap.add_argument("--variants", default="unsealed,no-kdat",
                    help="this tree's variants also run: unsealed (a new backend per "
                         "restore, as after a shim restart), no-kdat (CRIU's kdat cache "
                         "removed before each restore); '' for none")
    ap.add_argument("--late-ms", type=float, default=80.0,
                    help="a second client connects this long after the first, while the "
                         "restore runs (its connect -> first byte is phase 'late'); 0: none")
    ap.add_argument("--kdat", default="/run/architect-criu/criu.kdat",
                    help="CRIU's kdat cache file (runtime/checkpoint/install)")
    ap.add_argument("--baseline-kdat", action="store_true",
                    help="let the baselines' restores use CRIU's kdat cache too")
    args = ap.parse_args()
    if not 1 <= args.wakes <= 100 or not 1 <= args.cold <= 20 or not 1 <= args.rss_mib <= 4096:
        ap.error("--wakes must be 1..100, --cold 1..20, --rss-mib 1..4096")
    revs = [r for r in args.baseline.split(",") if r]
    for rev in revs:
        if not is_revision(rev):
            ap.error(f"--baseline {rev!r}: not a git revision of {ROOT}")
    if os.geteuid() != 0:
        print("bench/wake_latency.py needs root (namespaces, runc, criu)", file=sys.stderr)
        return 2
    return asyncio.run(run(args, revs))


if __name__ == "__main__":
    sys.exit(main())
