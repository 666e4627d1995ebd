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

Each operator's webhook configurations are built by its own tree's
``build_configurations`` (the scoping and the webhooks per create are part of
what is compared).

With ``--trace`` each operator records, per admission request, when its bytes
reached aiohttp, when kopf's function ran and when the answer left
(bench/admission_trace.py); the bench then splits each annotated create into
phases (API server before the mutating call, mutating webhook, API server
between the calls, validating webhook, after) and counts the API server's TLS
connections. The trace costs a little itself: compare ratios within a run.

Prints p50/p99 of each kind and the ratios. Exits 1 if a create failed.

    python bench/engine_admission.py [--rate 50] [--seconds 10] [--baseline REV] [--trace]
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


SITECUSTOMIZE = f"""import sys
sys.path.insert(0, {str(REPO)!r})
from bench.admission_trace import install
install()
del sys.path[0]
"""
# The harness starts ``python -m`` in this repository, whose directory then comes
# first on sys.path, before PYTHONPATH: a revision's operator would import this
# tree's code. Its package is imported here first (sitecustomize runs before that
# directory is added), from the revision's tree, which PYTHONPATH puts first.
PIN_TREE = """import architect, os, pathlib
want = pathlib.Path(os.environ["ARCHITECT_BENCH_TREE"]).resolve()
got = pathlib.Path(architect.__file__).resolve()
if want not in got.parents:
    raise SystemExit(f"bench: architect from {got}, not from {want}")
"""


@contextlib.contextmanager
def _operator(cluster: Cluster, work: Path, tree: Path | None, trace: Path | None) -> Iterator[Any]:
    """The operator of this tree, or of an exported revision's (PYTHONPATH first),
    with that tree's own webhook configurations."""
    keys = ("PYTHONPATH", "ARCHITECT_ADMISSION_TRACE", "ARCHITECT_BENCH_TREE")
    saved = {k: os.environ.get(k) for k in keys}
    path = [str(tree)] if tree is not None else []
    site = (PIN_TREE if tree is not None else "") + (SITECUSTOMIZE if trace is not None else "")
    if site:
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(site)
        path.insert(0, str(work / "site"))
    if tree is not None:
        os.environ["ARCHITECT_BENCH_TREE"] = str(tree)
    if trace is not None:
        os.environ["ARCHITECT_ADMISSION_TRACE"] = str(trace)
    if path:
        os.environ["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [saved["PYTHONPATH"]])])
    try:
        ctx = running_operator(cluster, work)
        op = ctx.__enter__()  # the operator's process took the environment
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        if tree is not None:
            _apply_own_configurations(cluster, op, work, tree)
    except BaseException:
        ctx.__exit__(*sys.exc_info())
        raise
    try:
        yield op
    except BaseException:
        if not ctx.__exit__(*sys.exc_info()):
            raise
    else:
        ctx.__exit__(None, None, None)


BUILD = """
import base64, json, sys
from architect.engine.admission.webhooks import ClientConfig, Scope, build_configurations
ca, port, label_key, label, name = sys.argv[1:]
client = ClientConfig(base64.b64encode(open(ca, "rb").read()).decode(),
                      url=f"https://127.0.0.1:{port}")
scope = Scope(excluded_namespaces=("kube-system",), namespace_labels={label_key: label})
print(json.dumps({"apiVersion": "v1", "kind": "List",
                  "items": list(build_configurations(client, scope, name=name))}))
"""


def _apply_own_configurations(cluster: Cluster, op: Any, work: Path, tree: Path) -> None:
    """Replace the configurations the harness made (this tree's code) by the
    revision's own, same name and scope: its webhooks, as that revision ships them."""
    from e2e.tests.engine.harness import NS_LABEL

    name = f"architect-e2e-engine-{op.label}"
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(work / "ca.pem"), str(op.port), NS_LABEL, op.label, name],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
    )  # fmt: skip
    subprocess.run(cluster.kubectl_cmd("replace", "-f", "-"), input=built.stdout,
                   capture_output=True, text=True, timeout=60, check=True)  # fmt: skip


Trace = tuple[dict[str, dict[str, dict[str, Any]]], list[float], list[dict[str, Any]]]


def _load_trace(path: Path) -> Trace:
    """{pod name: {webhook path: record}}, the event loop's lag samples, the GC pauses."""
    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    lags: list[float] = []
    pauses: list[dict[str, Any]] = []
    if not path.exists():
        return by_name, lags, pauses
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "lag" in rec:
            lags.append(rec["lag"])
        elif "gc" in rec:
            pauses.append(rec)
        elif rec.get("name"):
            # A webhook called twice for one pod (reinvoked): the first call, and a count.
            hooks = by_name.setdefault(rec["name"], {})
            hooks.setdefault(rec["hook"], rec).setdefault("calls", 0)
            hooks[rec["hook"]]["calls"] += 1
    return by_name, lags, pauses


def _phases(
    sent: dict[str, tuple[float, float]], trace: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, list[float]]:
    """Each traced create split in phases (seconds), by wall clock across processes."""
    out: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        out.setdefault(k, []).append(v)

    for name, (t0, t1) in sent.items():
        recs = trace.get(name) or {}
        mut, val = recs.get("mutate-pod"), recs.get("validate-pod")
        if mut is None or mut.get("first") is None:
            continue
        add("total", t1 - t0)
        add("apiserver before mutating call", mut["first"] - t0)
        add("mutating: bytes in -> kopf fn", mut["start"] - mut["first"])
        add("mutating: kopf fn", mut["end"] - mut["start"])
        if mut.get("handler") is not None:
            add("mutating:   of which our handler", mut["handler"])
        add("mutating: kopf fn -> response", mut["sent"] - mut["end"])
        last = mut
        if val is not None and val.get("first") is not None:
            add("apiserver between the calls", val["first"] - mut["sent"])
            add("validating: bytes in -> kopf fn", val["start"] - val["first"])
            add("validating: kopf fn", val["end"] - val["start"])
            if val.get("handler") is not None:
                add("validating:   of which our handler", val["handler"])
            add("validating: kopf fn -> response", val["sent"] - val["end"])
            last = val
        add("apiserver after the last call", t1 - last["sent"])
    return out


def _print_trace(label: str, sent: dict[str, tuple[float, float]], loaded: Trace) -> None:
    trace, lags, pauses = loaded
    phases = _phases(sent, trace)
    recs = [r for hooks in trace.values() for r in hooks.values()]
    ports = {r["peer"] for r in recs}
    calls = sum(r["calls"] for r in recs)
    print(f"  trace of {label}: {calls} webhook requests for {len(trace)} pods "
          f"on {len(ports)}+ TLS connections; "
          f"event-loop lag p50 {statistics.median(lags or [0]) * 1000:.1f} ms, "
          f"max {max(lags or [0]) * 1000:.1f} ms (worst per second)")  # fmt: skip
    for k, v in phases.items():
        print(f"    {k:36s} n={len(v):4d} p50 {statistics.median(v) * 1000:6.2f} ms "
              f"p99 {pct(v, 0.99) * 1000:6.2f} ms")  # fmt: skip
    # Only the pauses while pods were being created: the operator's start is not admission.
    if sent:
        first, last = min(t0 for t0, _ in sent.values()), max(t1 for _, t1 in sent.values())
        during = [p for p in pauses if first <= p["at"] <= last]
        for gen in (0, 1, 2):
            mine = [p["pause"] for p in during if p["gc"] == gen]
            print(f"    GC pauses, generation {gen}: n={len(mine)}, "
                  f"sum {sum(mine) * 1000:.1f} ms, max {max(mine or [0]) * 1000:.1f} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="pod creates per second, in all")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--baseline", default="", metavar="REV",
                    help="also run REV's operator (its own webhooks and namespace), "
                         "interleaved with this tree's")  # fmt: skip
    ap.add_argument("--trace", action="store_true",
                    help="timestamps inside each operator: where the time goes")  # fmt: skip
    ap.add_argument("--keep", metavar="DIR", type=Path,
                    help="with --trace: keep the raw traces and the bench's times in DIR")  # fmt: skip
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
        traces: list[Path | None] = []
        for label, tree in trees:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            trace = work / "trace.jsonl" if args.trace else None
            op = stack.enter_context(_operator(cluster, work, tree, trace))
            kinds.append((label, op.namespace("bench-admission"), True))
            traces.append(trace)
        kinds.append(("plain", kinds[0][1], False))
        core = client.CoreV1Api(load_config(str(KUBECONFIG)))
        n = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        latencies: dict[int, list[float]] = {k: [] for k in range(len(kinds))}
        sent: dict[int, dict[str, tuple[float, float]]] = {k: {} for k in range(len(kinds))}
        failures: list[str] = []

        def create(i: int, kind: int) -> None:
            label, ns, annotated = kinds[kind]
            body = pod(i, annotated)
            wall, t0 = time.time(), time.perf_counter()
            try:
                # The raw answer: the client's model decoding is not admission.
                resp = core.create_namespaced_pod(ns, body, _preload_content=False)
                resp.read()
            except Exception as err:  # reported, not raised: the run goes on
                failures.append(f"{label} pod {i}: {err}")
                return
            took = time.perf_counter() - t0
            latencies[kind].append(took)
            sent[kind][body["metadata"]["name"]] = (wall, wall + took)

        # Warm-up: the first requests pay for connections and imports.
        for i in range(5):
            for k in range(len(kinds)):
                create(10_000 + i * len(kinds) + k, k)
        latencies = {k: [] for k in range(len(kinds))}
        sent = {k: {} for k in range(len(kinds))}
        start = time.perf_counter()
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                # Rotated each round: no kind always follows the same one.
                futures.append(pool.submit(create, i, (i + i // len(kinds)) % len(kinds)))
            for f in futures:
                f.result(timeout=120)
        elapsed = time.perf_counter() - start
        time.sleep(0.5)  # the operators' last trace lines
        loaded = [_load_trace(t) if t is not None else None for t in traces]
        if args.keep and args.trace:
            args.keep.mkdir(parents=True, exist_ok=True)
            for k, t in enumerate(traces):
                if t is not None and t.exists():
                    (args.keep / f"trace-{k}.jsonl").write_text(t.read_text())
            (args.keep / "sent.json").write_text(
                json.dumps({kinds[k][0]: v for k, v in sent.items()})
            )
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
    for k, one in enumerate(loaded):
        if one is not None:
            _print_trace(kinds[k][0], sent[k], one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
