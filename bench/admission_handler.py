"""Benchmark: the admission webhooks in-process, without the API server.

The other half of bench/engine_admission.py's end-to-end figure: the same pod
(a ReplicaSet's, annotated) through three layers of the operator's own path,
so the end-to-end p99 can be split into ours and the API server's:

* ``handler``: engine.admission's functions alone (compile, mutate, validate);
* ``kopf``: kopf's ``serve_admission_request`` with the operator's registered
  handlers (engine/operator.py): kopf's cause, handler execution, JSON patch,
  response;
* ``https``: kopf's aiohttp ``WebhookServer`` over TLS on 127.0.0.1, called
  from another process over one kept-alive connection (as the API server does),
  mutate-pod then validate-pod per pod, at ``--rate`` pods/s: the round trip
  as the API server would see it, JSON and TLS included.

The AdmissionReview bodies are what the API server sends for such a pod
(defaults, the service-account volume, managedFields); validate-pod's object is
mutate-pod's answer applied. With ``--baseline REV`` the same runs for REV's
tree (bench/revisions.py) in alternation with this tree's, two rounds each:
before/after from one run.

    python bench/admission_handler.py [--rate 50] [--seconds 10] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The same pod template as the end-to-end bench, so the two figures compare.
from bench.engine_admission import ANNOTATIONS  # noqa: E402

NS = "bench-admission"


def stored_pod(i: int) -> dict[str, Any]:
    """The pod as the API server hands it to mutating webhooks (defaults applied)."""
    name = f"a-{i}"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "creationTimestamp": None,
            "labels": {"app": "bench", "pod-template-hash": "5d4f8b7c9"},
            "annotations": dict(ANNOTATIONS),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "bench-rs",
                    "uid": "00000000-0000-0000-0000-000000000001",
                    "controller": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "bench",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {f"f:{k}": {} for k in ANNOTATIONS},
                            "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                            "f:ownerReferences": {
                                '.': {},
                                'k:{"uid":"00000000-0000-0000-0000-000000000001"}': {},
                            },
                        },
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"app"}': {
                                    ".": {}, "f:image": {}, "f:name": {}, "f:ports": {},
                                    "f:readinessProbe": {}, "f:resources": {},
                                }
                            },
                            "f:nodeName": {}, "f:runtimeClassName": {},
                        },
                    },
                }
            ],
        },
        "spec": {
            "volumes": [
                {
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt",
                                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                        ],
                        "defaultMode": 420,
                    },
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {},
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": True,
                                      "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1,
                                       "periodSeconds": 10, "successThreshold": 1,
                                       "failureThreshold": 3},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": "no-such-node",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "runtimeClassName": "runc-architect",
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    }  # fmt: skip


def review(hook: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": obj["metadata"]["name"],
            "namespace": NS,
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters",
                                                                   "system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }  # fmt: skip


def apply_patch(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """mutate-pod's JSON patch applied (the API server's part), as validate-pod gets it."""
    import jsonpatch  # type: ignore[import-untyped]

    raw = response["response"].get("patch")
    out = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(raw))) if raw else obj
    out = copy.deepcopy(out)
    out["metadata"]["uid"] = str(uuid.uuid4())
    return out  # type: ignore[no-any-return]


class NoKube:
    """A ReplicaSet's pod needs no API call to be admitted: any call is a bench error."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"admission of a ReplicaSet's pod called kube.{name}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the child: one tree's layers, measured in its own process ------------------


def _kopf_fn() -> Any:
    """kopf's admission entry point bound as its reactor binds it, with the
    operator's handlers registered (importing engine.operator registers them)."""
    import functools

    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines import admission, indexing
    from kopf._core.reactor import inventory

    from architect.engine import operator

    settings = kopf.OperatorSettings()
    settings.posting.level = 30  # as the operator's startup sets it (WARNING)
    insights = references.Insights()
    insights.webhook_resources.add(
        references.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True,
                            verbs=["create", "update", "patch"])
    )  # fmt: skip
    memobase = kopf.Memo(kube=NoKube())
    return functools.partial(
        admission.serve_admission_request,
        settings=settings,
        registry=kopf.get_default_registry(),
        insights=insights,
        memories=inventory.ResourceMemories(),
        memobase=memobase,
        indices=indexing.OperatorIndexers().indices,
    ), operator


async def _layers(n: int, rate: float) -> dict[str, list[float]]:
    """Each pod through the layers in turn, paced at ``rate`` like the HTTPS run (a
    loop run flat out keeps caches warm that 50 requests a second do not)."""
    from architect.engine.admission import handlers as admission

    fn, operator = _kopf_fn()
    out: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        out.setdefault(k, []).append(v)

    start = time.perf_counter() + 50 / rate
    for i in range(n + 50):  # the first 50: warm-up
        await asyncio.sleep(max(0.0, start + (i - 50) / rate - time.perf_counter()))
        pod = stored_pod(i)
        t0 = time.perf_counter()
        mutated = admission.mutate_pod(copy.deepcopy(pod), operator.CONFIG.sidecar)
        t1 = time.perf_counter()
        mutated["metadata"]["uid"] = str(uuid.uuid4())
        t2 = time.perf_counter()
        done = await admission.review_workload(mutated, dryrun=False, kube=NoKube())  # type: ignore[arg-type]
        t3 = time.perf_counter()
        assert not done.ops, done
        req = review("mutate-pod", pod)
        t4 = time.perf_counter()
        resp = await fn(req, webhook="mutate-pod", sslpeer={}, headers={})
        t5 = time.perf_counter()
        assert resp["response"]["allowed"], resp
        obj = apply_patch(pod, resp)
        req = review("validate-pod", obj)
        t6 = time.perf_counter()
        resp = await fn(req, webhook="validate-pod", sslpeer={}, headers={})
        t7 = time.perf_counter()
        assert resp["response"]["allowed"], resp
        if i >= 50:
            add("handler: mutate", t1 - t0)
            add("handler: validate", t3 - t2)
            add("handler: both", t1 - t0 + t3 - t2)
            add("kopf: mutate-pod", t5 - t4)
            add("kopf: validate-pod", t7 - t6)
            add("kopf: both", t5 - t4 + t7 - t6)
    return out


CLIENT = r"""
import http.client, json, ssl, sys, time
ports, ca = [int(p) for p in sys.argv[1].split(",")], sys.argv[2]
rate, seconds = float(sys.argv[3]), float(sys.argv[4])
bodies = json.loads(sys.stdin.read())  # [[mutate body, validate body], ...]
ctx = ssl.create_default_context(cafile=ca)
conns = [http.client.HTTPSConnection("127.0.0.1", p, context=ctx, timeout=10) for p in ports]
def call(conn, hook, raw):
    t0 = time.perf_counter()
    conn.request("POST", "/" + hook, body=raw, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    took = time.perf_counter() - t0
    if resp.status != 200 or not json.loads(data)["response"]["allowed"]:
        raise SystemExit(f"{hook}: {resp.status} {data[:300]!r}")
    return took
for m, v in bodies[:20]:  # warm-up: the handshake, imports
    for c in conns:
        call(c, "mutate-pod", m); call(c, "validate-pod", v)
out = {}
n, interval = int(rate * seconds), 1.0 / rate
start = time.perf_counter()
for i in range(n):
    delay = start + i * interval - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    m, v = bodies[20 + i % (len(bodies) - 20)]
    # Each server in turn, the first one first on even pods: the same load for both.
    for k in (range(len(conns)) if i % 2 == 0 else reversed(range(len(conns)))):
        a = call(conns[k], "mutate-pod", m); b = call(conns[k], "validate-pod", v)
        for name, took in (("mutate-pod", a), ("validate-pod", b), ("both", a + b)):
            out.setdefault(f"{k}:{name}", []).append(took)
print(json.dumps(out))
"""


async def _floor(data: Any, **_: Any) -> dict[str, Any]:
    """No handler at all: kopf's server reads, decodes and answers (the HTTP/TLS/JSON floor)."""
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": data["request"]["uid"], "allowed": True}}  # fmt: skip


async def _https(rate: float, seconds: float) -> dict[str, list[float]]:
    """kopf's WebhookServer over TLS, driven from another process at ``rate``."""
    import kopf

    from architect.engine.tls import make_serving_cert

    fn, _ = _kopf_fn()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        certs = make_serving_cert(["127.0.0.1"])
        (work / "ca.pem").write_bytes(certs.ca_pem)
        (work / "tls.crt").write_bytes(certs.cert_pem)
        (work / "tls.key").write_bytes(certs.key_pem)
        servers, configs = [], []
        for serve in (fn, _floor):
            server = kopf.WebhookServer(addr="127.0.0.1", port=_free_port(), host="127.0.0.1",
                                        certfile=work / "tls.crt", pkeyfile=work / "tls.key")  # fmt: skip
            it = server(serve).__aiter__()
            await asyncio.wait_for(it.__anext__(), 10)  # listening
            servers.append(server)
            configs.append(it)
        bodies = []
        for i in range(200):
            pod = stored_pod(i)
            resp = await fn(review("mutate-pod", pod), webhook="mutate-pod", sslpeer={}, headers={})
            mutated = apply_patch(pod, resp)
            bodies.append([json.dumps(review("mutate-pod", pod)),
                           json.dumps(review("validate-pod", mutated))])  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, ",".join(str(x.port) for x in servers), str(work / "ca.pem"),
            str(rate), str(seconds),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            stdout, stderr = await asyncio.wait_for(
                proc.communicate(json.dumps(bodies).encode()), seconds + 60
            )
        finally:
            if proc.returncode is None:
                proc.kill()
            for it in configs:
                await it.aclose()
        if proc.returncode != 0:
            raise SystemExit(f"admission_handler: the client failed:\n{stderr.decode()[-2000:]}")
        got: dict[str, list[float]] = json.loads(stdout)
        layer = {"0": "https", "1": "https floor"}
        return {f"{layer[k.split(':')[0]]}: {k.split(':')[1]}": v for k, v in got.items()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child(rate: float, seconds: float) -> None:
    import logging

    # As engine.serve configures it: kopf's per-handler INFO lines are written.
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"),  # noqa: SIM115
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    import gc

    import architect

    want = Path(os.environ["ARCHITECT_BENCH_TREE"]).resolve()
    if want not in Path(architect.__file__).resolve().parents:
        raise SystemExit(f"admission_handler: architect from {architect.__file__}, not {want}")
    _, operator = _kopf_fn()  # everything imported, as in the operator before it serves
    settle = getattr(operator, "settle_heap", None)  # what its startup does (if this tree has it)
    if settle is not None:
        settle()
    pauses: dict[str, list[float]] = {}
    began: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[:] = [time.perf_counter()]
        elif began:
            pauses.setdefault(f"gc pause, generation {info['generation']}", []).append(
                time.perf_counter() - began[0]
            )

    gc.callbacks.append(on_gc)
    out = asyncio.run(_layers(int(rate * seconds), rate))
    out.update(asyncio.run(_https(rate, seconds)))
    gc.callbacks.remove(on_gc)
    out.update(pauses)
    print(json.dumps(out))


# --- the parent: one or two trees, alternated -----------------------------------


def _run_child(tree: Path | None, args: argparse.Namespace) -> dict[str, list[float]]:
    env = dict(os.environ)
    # The bench module from this repository, then this repository off sys.path before
    # anything imports architect: a revision's run takes its own tree's (PYTHONPATH,
    # and the working directory), checked by child().
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from bench.admission_handler import child; "
        "sys.path[:] = [p for p in sys.path if p != sys.argv[1]]; "
        "child(float(sys.argv[2]), float(sys.argv[3]))"
    )
    env["ARCHITECT_BENCH_TREE"] = str(tree or REPO)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(args.rate), str(args.seconds)],
        capture_output=True, text=True, timeout=args.seconds + 600, env=env, cwd=tree or REPO,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"admission_handler: a run failed:\n{done.stderr[-3000:]}")
    got: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="pods/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="of each run (in-process, HTTPS)")
    ap.add_argument("--baseline", default="", metavar="REV")
    args = ap.parse_args(argv)
    from bench.revisions import exported_tree, is_revision, short

    if args.baseline and not is_revision(args.baseline):
        ap.error(f"--baseline {args.baseline!r}: not a git revision")
    results: dict[str, dict[str, list[float]]] = {}
    with exported_tree(args.baseline) if args.baseline else _nothing() as base:
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.baseline:
            trees.append((short(args.baseline), base))
        for _ in range(2 if args.baseline else 1):
            for label, tree in trees:
                for k, v in _run_child(tree, args).items():
                    results.setdefault(label, {}).setdefault(k, []).extend(v)
    for label, got in results.items():
        print(f"admission_handler ({label}):")
        for k, v in sorted(got.items(), key=lambda kv: kv[0].startswith("gc")):
            if k.startswith("gc"):  # both runs of the tree: how many, how long in all, the worst
                print(f"  {k:26s} n={len(v):5d} sum {sum(v) * 1000:7.1f} ms "
                      f"max {max(v) * 1000:7.2f} ms")  # fmt: skip
                continue
            print(f"  {k:26s} n={len(v):5d} p50 {statistics.median(v) * 1000:7.3f} ms "
                  f"p99 {pct(v, 0.99) * 1000:7.3f} ms")  # fmt: skip
    if len(results) == 2:
        (la, a), (lb, b) = results.items()
        print(f"  {la} / {lb}:")
        for k in a:
            if k in b and not k.startswith("gc"):
                print(f"  {k:26s} p50 {statistics.median(a[k]) / statistics.median(b[k]):.2f}x "
                      f"p99 {pct(a[k], 0.99) / pct(b[k], 0.99):.2f}x")  # fmt: skip
    return 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
