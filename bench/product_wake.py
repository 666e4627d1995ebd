"""Wake latency through the Helm-installed product on the e2e node (root).

    python bench/product_wake.py [--cycles 10] [--ballast-mib 64] [--keep]

Installs the chart (python -m e2e.product install) unless it is there, deploys the
seed's app (counter, network-monitor packets, scaledown 2s) carrying BALLAST_MIB of
random memory, and measures in one run:
- cold start: Deployment apply -> first answer of a fresh pod;
- wake: for each cycle, once the pod is SCALED_DOWN, one GET's connect -> answer
  (the first packet is held, the daemon wakes the shim, CRIU restores, the held
  packet is released): p50, p99, max, and each as a ratio of the cold start.
The counter must continue at every wake (else the cycle is counted as lost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import product


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--ballast-mib", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="leave the chart installed")
    a = p.parse_args()
    kube = product.Kube()
    installed_here = kube.run("get", "namespace", product.NAMESPACE, check=False).returncode != 0
    if installed_here:
        print(f"install: {product.install(kube):.1f}s")
    ns = "architect-bench"
    kube.run("create", "namespace", ns, check=False)
    try:
        dep = product.counter_deployment("bench", scaledown="2s", ballast_mib=a.ballast_mib)
        t0 = time.monotonic()
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(dep))
        pod = product.ready_pod(kube, ns, "bench")
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        product.wait_listening(ip, timeout_s=120)
        body, _ = product.http_get(ip)
        cold = time.monotonic() - t0
        last = product.count_of(body)
        wakes: list[float] = []
        lost = 0
        for _ in range(a.cycles):
            product.eventually("SCALED_DOWN", lambda: product.status_of(kube, ns, name).get(
                "bench-container") == "SCALED_DOWN", 120, 0.1)
            body, took = product.http_get(ip)
            n = product.count_of(body)
            lost += n != last + 1
            last = n
            wakes.append(took)
        wakes.sort()
        p50 = statistics.median(wakes)
        p99 = wakes[min(len(wakes) - 1, round(0.99 * (len(wakes) - 1)))]
        print(f"app RSS ballast {a.ballast_mib} MiB, {a.cycles} cycles, state lost {lost} times")
        print(f"cold start (apply -> first answer): {cold:.2f} s")
        print(f"wake p50 {p50 * 1000:.0f} ms ({p50 / cold:.3f}x cold), "
              f"p99 {p99 * 1000:.0f} ms ({p99 / cold:.3f}x), max {wakes[-1] * 1000:.0f} ms")
        return 0 if lost == 0 else 1
    finally:
        kube.run("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False,
                 timeout=180)
        if installed_here and not a.keep:
            product.uninstall(kube)


if __name__ == "__main__":
    sys.exit(main())
