"""Benchmark: p99 latency of pod creation through Architect's webhooks at 50 creates/s.

Starts the e2e control plane if needed (``e2e/cluster/up --control-plane``) and
the operator (as the cluster tests do), then creates pods at a fixed rate,
alternating two kinds in one run so both see the same machine load:

* annotated pods owned by a ReplicaSet (the common case: a Deployment's
  pods), which pass through the mutating and validating webhooks;
* plain pods, which the webhooks' matchConditions keep away from the operator.

Prints p50/p99 of each and the ratio of the p99s. Exits 1 if a create failed.

    python bench/engine_admission.py [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from e2e.pytest_cluster import CONTEXT, KUBECONFIG, KUBECTL, UP, Cluster, load_checked  # noqa: E402
from e2e.tests.engine.harness import running_operator  # noqa: E402

P = "architect.loopholelabs.io/"
ANNOTATIONS = {
    P + "managed-containers": '["app"]',
    P + "network-monitor": '{"app":"packets"}',
    P + "health-check-proxy": json.dumps(
        {"mappings": [{"containerName": "app", "appPort": 8080, "shadowPort": 9080}]}
    ),
}


def pod(i: int, annotated: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{'a' if annotated else 'p'}-{i}", "labels": {"app": "bench"}}
    spec: dict[str, Any] = {
        "nodeName": "no-such-node",
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}},
            }
        ],
    }
    if annotated:
        meta["annotations"] = ANNOTATIONS
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "bench-rs",
                "uid": "00000000-0000-0000-0000-000000000001",
                "controller": True,
            }
        ]
        spec["runtimeClassName"] = "runc-architect"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="pod creates per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)

    up = subprocess.run([str(UP), "--control-plane"], capture_output=True, text=True, timeout=3600)
    if up.returncode != 0:
        print(
            f"engine_admission: {UP} --control-plane failed:\n{up.stderr[-2000:]}", file=sys.stderr
        )
        return 1
    load_checked(KUBECONFIG)
    cluster = Cluster(KUBECONFIG, CONTEXT, "control-plane", KUBECTL)

    from kubernetes import client

    from architect.engine.kubeclient import load_config

    with tempfile.TemporaryDirectory() as tmp, running_operator(cluster, Path(tmp)) as op:
        ns = op.namespace("bench-admission")
        core = client.CoreV1Api(load_config(str(KUBECONFIG)))
        n = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        latencies: dict[bool, list[float]] = {True: [], False: []}
        failures: list[str] = []

        def create(i: int, annotated: bool) -> None:
            t0 = time.perf_counter()
            try:
                core.create_namespaced_pod(ns, pod(i, annotated))
            except Exception as err:  # reported, not raised: the run goes on
                failures.append(f"{'annotated' if annotated else 'plain'} pod {i}: {err}")
                return
            latencies[annotated].append(time.perf_counter() - t0)

        # Warm-up: the first requests pay for connections and imports.
        for i in range(5):
            create(10_000 + i, True)
            create(10_000 + i, False)
        latencies = {True: [], False: []}
        start = time.perf_counter()
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(create, i, i % 2 == 0))
            for f in futures:
                f.result(timeout=120)
        elapsed = time.perf_counter() - start
        subprocess.run(
            cluster.kubectl_cmd("delete", "namespace", ns, "--wait=false"),
            capture_output=True,
            timeout=60,
            check=False,
        )

    ann, plain = latencies[True], latencies[False]
    if failures or not ann or not plain:
        print("engine_admission: failed creates:\n" + "\n".join(failures[:10]), file=sys.stderr)
        return 1
    print(
        f"engine_admission: {len(ann) + len(plain)} pods in {elapsed:.1f}s "
        f"({(len(ann) + len(plain)) / elapsed:.0f}/s); "
        f"through webhooks p50 {statistics.median(ann) * 1000:.1f} ms p99 {pct(ann, 0.99) * 1000:.1f} ms; "
        f"not sent p50 {statistics.median(plain) * 1000:.1f} ms p99 {pct(plain, 0.99) * 1000:.1f} ms; "
        f"p99 ratio {pct(ann, 0.99) / pct(plain, 0.99):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
