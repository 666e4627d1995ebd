"""Benchmark: p99 latency of pod creation through Architect's webhooks at 50 creates/s.

Starts the e2e control plane if needed (``e2e/cluster/up --control-plane``) and
the operator (as the cluster tests do), then creates pods at a fixed rate,
alternating two kinds in one run so both see the same machine load:

* annotated pods owned by a ReplicaSet (the common case: a Deployment's
  pods), which pass through the mutating and validating webhooks;
* plain pods, which the webhooks' matchConditions keep away from the operator.

With ``--baseline REV`` a second operator runs REV's code (its tree exported,
bench/revisions.py) with webhook configurations of its own, scoped to its own
namespace, and its annotated pods are interleaved with this tree's: before and
after from one run on the same loaded machine. Latency is to the API server's
answer read raw (the Python client's model decoding is not admission).

Prints p50/p99 of each kind and the ratios. Exits 1 if a create failed.

    python bench/engine_admission.py [--rate 50] [--seconds 10] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.revisions import exported_tree, is_revision, short  # noqa: E402
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


@contextlib.contextmanager
def _operator(cluster: Cluster, work: Path, tree: Path | None) -> Iterator[Any]:
    """The operator of this tree, or of an exported revision's (PYTHONPATH first)."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(tree), *([saved] if saved else [])])
    try:
        ctx = running_operator(cluster, work)
        op = ctx.__enter__()  # the operator's process took the environment
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield op
    except BaseException:
        if not ctx.__exit__(*sys.exc_info()):
            raise
    else:
        ctx.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="pod creates per second, in all")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--baseline", default="", metavar="REV",
                    help="also run REV's operator (its own webhooks and namespace), "
                         "interleaved with this tree's")  # fmt: skip
    args = ap.parse_args(argv)
    if args.baseline and not is_revision(args.baseline):
        ap.error(f"--baseline {args.baseline!r}: not a git revision")

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

    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.baseline:
            trees.append((short(args.baseline), stack.enter_context(exported_tree(args.baseline))))
        # kinds: (label, namespace, annotated); plain pods reach no webhook at all.
        kinds: list[tuple[str, str, bool]] = []
        for label, tree in trees:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            op = stack.enter_context(_operator(cluster, work, tree))
            kinds.append((label, op.namespace("bench-admission"), True))
        kinds.append(("plain", kinds[0][1], False))
        core = client.CoreV1Api(load_config(str(KUBECONFIG)))
        n = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        latencies: dict[int, list[float]] = {k: [] for k in range(len(kinds))}
        failures: list[str] = []

        def create(i: int, kind: int) -> None:
            label, ns, annotated = kinds[kind]
            t0 = time.perf_counter()
            try:
                # The raw answer: the client's model decoding is not admission.
                resp = core.create_namespaced_pod(ns, pod(i, annotated), _preload_content=False)
                resp.read()
            except Exception as err:  # reported, not raised: the run goes on
                failures.append(f"{label} pod {i}: {err}")
                return
            latencies[kind].append(time.perf_counter() - t0)

        # Warm-up: the first requests pay for connections and imports.
        for i in range(5):
            for k in range(len(kinds)):
                create(10_000 + i * len(kinds) + k, k)
        latencies = {k: [] for k in range(len(kinds))}
        start = time.perf_counter()
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(create, i, i % len(kinds)))
            for f in futures:
                f.result(timeout=120)
        elapsed = time.perf_counter() - start
        for _, ns, annotated in kinds:
            if annotated:
                subprocess.run(
                    cluster.kubectl_cmd("delete", "namespace", ns, "--wait=false"),
                    capture_output=True,
                    timeout=60,
                    check=False,
                )

    if failures or not all(latencies.values()):
        print("engine_admission: failed creates:\n" + "\n".join(failures[:10]), file=sys.stderr)
        return 1
    total = sum(len(v) for v in latencies.values())
    plain = latencies[len(kinds) - 1]
    print(f"engine_admission: {total} pods in {elapsed:.1f}s ({total / elapsed:.0f}/s), "
          f"the kinds interleaved:")  # fmt: skip
    for k, (label, _, annotated) in enumerate(kinds):
        v = latencies[k]
        what = f"through the webhooks ({label})" if annotated else "plain (no webhook)"
        extra = (f"; p99 over plain {pct(v, 0.99) / pct(plain, 0.99):.2f}x, "
                 f"p99 - plain p99 {(pct(v, 0.99) - pct(plain, 0.99)) * 1000:+.1f} ms"
                 if annotated else "")  # fmt: skip
        print(f"  {what:40s} n={len(v):4d} p50 {statistics.median(v) * 1000:6.1f} ms "
              f"p99 {pct(v, 0.99) * 1000:6.1f} ms{extra}")  # fmt: skip
    if len(trees) > 1:
        a, b = latencies[0], latencies[1]
        print(f"  this tree / {trees[1][0]}: p50 {statistics.median(a) / statistics.median(b):.2f}x, "
              f"p99 {pct(a, 0.99) / pct(b, 0.99):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
