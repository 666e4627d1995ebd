"""The daemon's tick cost: the decision part for N containers, and the real
per-container activity sample (iptables counters + conntrack in a namespace).

Run (root, for the namespace part): python bench/daemon_bench.py [--containers 10,100,1000]
Figures are for this machine in this run; compare ratios, not absolutes.

1. decision: ``Controller.tick`` with in-memory ports (no I/O) for N running
   containers, against ``engine.evaluate`` alone on the same input: what the
   daemon's bookkeeping adds to the evaluator.
2. sampling: one network namespace made here (``ip netns add``), K containers'
   activity chains installed by runtime/network, the time of one
   ``ContainerNetwork.sample`` each: the I/O a real tick pays per container.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from architect.engine.evaluate import evaluate
from architect.engine.pods import pod_info
from architect.runtime.daemon.controller import Controller
from tests.factories import hibernation, pod
from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim


def decision_bench(n: int, rounds: int) -> tuple[float, float]:
    calls: list[str] = []
    shim, net, rep = FakeShim(calls), FakeNet(calls), FakeReporter(calls)
    pods = [pod(f"web-{i}") for i in range(n)]
    for p in pods:
        shim.add(f"{p['metadata']['name']}-main-id")
    policies = [hibernation(after="1h")]
    ctl = Controller(shim, net, rep, clock=Clock())

    async def run() -> list[float]:
        await ctl.tick(pods, policies)  # adoption pass, not timed
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ctl.tick(pods, policies)
            out.append(time.perf_counter() - t0)
        return out

    ticks = asyncio.run(run())
    infos = [pod_info(p) for p in pods]
    tel = ctl.tracker.telemetry()
    now = datetime.now(UTC)
    evals = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        evaluate(policies, infos, tel, now)
        evals.append(time.perf_counter() - t0)
    return statistics.median(ticks), statistics.median(evals)


def sampling_bench(k: int, rounds: int) -> float:
    from architect.runtime.network.container import ContainerNetwork, net_spec
    from architect.runtime.network.netns import NetNs

    name = f"arch-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = NetNs.named(name)
        nets = []
        for i in range(k):
            spec = net_spec(i, "packets", [8000 + i])
            assert spec is not None
            net = ContainerNetwork(ns, spec)
            asyncio.run(net.setup())
            nets.append(net)
        times = []
        for _ in range(rounds):
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            for net in nets:
                net.sample(now)
            times.append((time.perf_counter() - t0) / k)
        return statistics.median(times)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--containers", default="10,100,1000")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--sample-containers", type=int, default=10)
    a = p.parse_args()
    print("decision part of one tick (median), N running containers:")
    for n in (int(x) for x in a.containers.split(",")):
        tick, ev = decision_bench(n, a.rounds)
        print(f"  N={n:5d}: tick {tick * 1e3:8.2f} ms, evaluate alone {ev * 1e3:7.2f} ms, "
              f"tick/evaluate {tick / ev:5.1f}x, per container {tick / n * 1e6:6.1f} us")
    per = sampling_bench(a.sample_containers, max(3, a.rounds // 4))
    print(f"activity sample per container (real iptables-save x2 + conntrack, "
          f"{a.sample_containers} containers): {per * 1e3:.1f} ms")
    print(f"  => a 1 s tick saturates at about {1 / per:.0f} sampled containers per node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
