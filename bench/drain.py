"""Cross-node migration on `kubectl drain` against a cold start, two real nodes
(`e2e/cluster/up --nodes 2`), the Helm-installed product (root).

    python bench/drain.py [--ballast-mib 64 256] [--repeats 1] [--keep]

Brings node B up, installs the chart with the operator on node B (as
e2e/tests/cluster/test_two_nodes_product.py does: a drain of the operator's own
node leaves its webhooks refusing the replacements). For each BALLAST_MIB (random
memory the seed's counter app holds), in one run:
- migrate: the app (managed, migrating on delete) on node A, 3 requests of state;
  `kubectl drain` node A -> a Ready replacement on node B, and -> its first answer,
  which must continue the counter (the replacement is Ready hibernated: the first
  request pays the wake);
- cold: the same app as a fresh Deployment on node B (node A cordoned): apply ->
  Ready, and -> first answer.
Transfer throughput is taken from the daemons' logs: the bytes node A's transfer
server says it served (manifest + payload) over the seconds node B's daemon says
the fetch took (grant -> image ready on B: download with its streaming digest
check, then unpack); the download alone ends at node A's "served" line (both
daemons log this host's clock). The same logs' timestamps split the drain into
its steps, and the shims' own lines (the e2e nodes' containerd logs) give node
A's checkpoint for migration and node B's wake.
Medians when --repeats > 1. Node B, the release and the cordons are removed
whatever happens (--keep leaves them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import product
from e2e.pytest_cluster import CONTEXT, KUBECONFIG, KUBECTL, Cluster
from e2e.tests.cluster.kube import wait_architect_pods_gone
from e2e.tests.cluster.test_two_nodes import DOWN, NODE_A, NODE_B, _run
from e2e.tests.cluster.test_two_nodes_product import _deploy_on_a, _drain, _ready_pods

APP = "my-app"
LOGS = Path("/var/log/architect-e2e/bench-drain")
SHIM_LOG_A = Path("/var/log/architect-e2e/containerd.log")
SHIM_LOG_B = Path("/var/log/architect-e2e/containerd-b.log")
# The operator's TTLs short, as the pytest sets them: a Consumed Checkpoint is
# collected while the run goes on, not left for the uninstall.
INSTALL = ["--set", "operator.consumedTTL=10s", "--set", "operator.failedTTL=10s",
           "--set", "operator.gcInterval=5s",
           "--set", f"operator.nodeSelector.kubernetes\\.io/hostname={NODE_B}"]
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def _ready_on(kube: product.Kube, ns: str, app: str, node: str,
              timeout_s: float = 240) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [p for p in _ready_pods(kube, ns, app)
                    if p["spec"]["nodeName"] == node and p["status"].get("podIP")]
        return bool(found)

    product.eventually(f"a Ready pod app={app} on {node} in {ns}", ready, timeout_s, 0.2)
    return found[0]


def _daemon_logs(kube: product.Kube) -> dict[str, list[tuple[float, str]]]:
    """Each node's daemon log as (epoch seconds, message) lines. The daemons log in
    UTC on this host's clock, the one time.time() reads."""
    out: dict[str, list[tuple[float, str]]] = {}
    for p in kube.json("pods", "-n", product.NAMESPACE, "-l",
                       "app.kubernetes.io/component=daemon")["items"]:
        text = kube.run("logs", "-n", product.NAMESPACE, p["metadata"]["name"], "-c", "daemon",
                        check=False).stdout
        lines = []
        for raw in text.splitlines():
            m = LINE.match(raw)
            if m:
                at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
                lines.append((at.timestamp(), m[2]))
        out[p["spec"]["nodeName"]] = lines
    return out


def _first(lines: list[tuple[float, str]], *parts: str) -> tuple[float, str] | None:
    return next(((t, m) for t, m in lines if all(s in m for s in parts)), None)


def _steps(kube: product.Kube, ns: str, old: str, new: str, t0: float) -> dict[str, float]:
    """From the daemons' logs (retried: a line may still be in flight), seconds
    after the drain's start: the source's SIGTERM seen, its Checkpoint Ready, the
    fetch's start and end on B, the restore on B; bytes served; fetch seconds."""
    cp = f"{ns}/{old}-{APP}-container"
    steps: dict[str, float] = {}
    for _ in range(20):
        logs = _daemon_logs(kube)
        a, b = logs.get(NODE_A, []), logs.get(NODE_B, [])
        sig = _first(a, f"pod {ns}/{old}:", "CheckpointForMigration")
        ready = _first(a, f"Checkpoint {cp}: Ready")
        served = _first(a, f"served {cp} to {NODE_B}")
        fetched = _first(b, f"fetched {cp} for {new} in ")
        restored = _first(b, f"pod {ns}/{new}:", "started restored from the handover")
        if sig and ready and served and fetched and restored:
            took = float(re.findall(r" in ([\d.]+)s$", fetched[1])[0])
            steps = {"sigterm": sig[0] - t0, "ckpt_ready": ready[0] - t0,
                     "fetch_start": fetched[0] - took - t0, "fetched": fetched[0] - t0,
                     "restored": restored[0] - t0, "fetch_s": took,
                     # The source's last byte sent: the download's end, without B's unpack.
                     "download_s": served[0] - (fetched[0] - took),
                     "bytes": float(re.findall(r"\((\d+) bytes\)", served[1])[0])}
            break
        time.sleep(0.5)
    return steps


def migrate(kube: product.Kube, ns: str, mib: int) -> dict[str, float]:
    dep = product.counter_deployment(APP, scaledown="1h", ballast_mib=mib,
                                     extra={"e2e.architect/bench": ns})  # own template hash
    (old,) = _deploy_on_a(kube, ns, dep)
    ip = old["status"]["podIP"]
    product.wait_listening(ip, timeout_s=120)
    for _ in range(3):
        body, _ = product.http_get(ip)
    before = product.count_of(body)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0, wall0 = time.monotonic(), time.time()
        drained = pool.submit(_timed_drain, kube)
        try:
            new = _ready_on(kube, ns, APP, NODE_B)
            ready = time.monotonic() - t0
            body, _ = product.http_get(new["status"]["podIP"])
            answer = time.monotonic() - t0
        finally:
            drain = drained.result() - t0
            kube.run("uncordon", NODE_A)
    if product.count_of(body) != before + 1:
        raise product.ProductError(f"{mib} MiB: state lost on node B: {body!r} after {before}")
    row = {"ready": ready, "answer": answer, "drain": drain}
    row.update(_steps(kube, ns, old["metadata"]["name"], new["metadata"]["name"], wall0))
    # The shims' own figures (the e2e nodes' containerd logs): node A's checkpoint
    # for migration (dump + pack + move into the handover), node B's wake.
    thash = old["metadata"]["labels"]["architect.loopholelabs.io/pod-template-hash"]
    cid = kube.json("pod", "-n", ns, new["metadata"]["name"])["status"][
        "containerStatuses"][0]["containerID"].split("//")[-1]
    for key, log, what in (
            ("shim_ckpt", SHIM_LOG_A,
             f"handover/{thash}/{APP}-container/from_{ns}_{old['metadata']['name']} in "),
            ("shim_wake", SHIM_LOG_B, f"{cid}: woken (request) in ")):
        took = _shim_seconds(log, what)
        if took is not None:
            row[key] = took
    return row


def _timed_drain(kube: product.Kube) -> float:
    _drain(kube, NODE_A)
    return time.monotonic()


def _shim_seconds(log: Path, what: str) -> float | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    hits = re.findall(re.escape(what) + r"([\d.]+)s", text)
    return float(hits[-1]) if hits else None


def cold(kube: product.Kube, ns: str, mib: int) -> dict[str, float]:
    dep = product.counter_deployment("cold", scaledown="1h", ballast_mib=mib,
                                     extra={"e2e.architect/bench": ns})
    kube.run("cordon", NODE_A)
    try:
        t0 = time.monotonic()
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(dep))
        pod = _ready_on(kube, ns, "cold", NODE_B)
        ready = time.monotonic() - t0
        product.wait_listening(pod["status"]["podIP"], timeout_s=120)
        body, _ = product.http_get(pod["status"]["podIP"])
        answer = time.monotonic() - t0
    finally:
        kube.run("uncordon", NODE_A)
    if product.count_of(body) != 1:
        raise product.ProductError(f"cold start answered {body!r}, not a fresh count")
    return {"cold_ready": ready, "cold_answer": answer}


def _median(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def report(mib: int, rows: list[dict[str, float]]) -> None:
    m = {k: _median(rows, k) for k in ("ready", "answer", "drain", "cold_ready", "cold_answer",
                                       "sigterm", "ckpt_ready", "fetch_start", "fetched",
                                       "restored", "fetch_s", "download_s", "bytes", "shim_ckpt",
                                       "shim_wake")}
    mb_s = m["bytes"] / m["fetch_s"] / 1e6 if m["fetch_s"] else float("nan")
    print(f"{mib:>5}MiB {m['ready']:>7.2f}s {m['answer']:>7.2f}s {m['cold_ready']:>7.2f}s "
          f"{m['cold_answer']:>7.2f}s {m['ready'] / m['cold_ready']:>7.2f}x "
          f"{m['answer'] / m['cold_answer']:>7.2f}x {m['bytes'] / 2**20:>7.1f}MiB "
          f"{m['fetch_s']:>6.2f}s {mb_s:>6.0f}MB/s")
    print(f"         drain steps (s after `kubectl drain`): SIGTERM seen on A {m['sigterm']:.2f}, "
          f"Checkpoint Ready {m['ckpt_ready']:.2f}, fetch {m['fetch_start']:.2f}-"
          f"{m['fetched']:.2f}, restored on B {m['restored']:.2f}, pod Ready {m['ready']:.2f}, "
          f"first answer {m['answer']:.2f}; drain returned {m['drain']:.2f}")
    print(f"         transfer: download {m['download_s']:.2f}s "
          f"({m['bytes'] / m['download_s'] / 1e6:.0f} MB/s, grant -> node A's last byte sent), "
          f"unpack on B {m['fetch_s'] - m['download_s']:.2f}s")
    print(f"         shims: node A's checkpoint for migration {m['shim_ckpt']:.2f}s, "
          f"node B's wake on the first request {m['shim_wake']:.2f}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ballast-mib", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="leave node B and the chart")
    a = p.parse_args()
    kube = product.Kube()
    nss: list[str] = []
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores, shared)")
        t = time.monotonic()
        up = _run(str(product.UP), "--nodes", "2")
        if up.returncode != 0:
            raise product.ProductError(f"up --nodes 2: {up.stderr[-3000:]}")
        print(f"up --nodes 2: {time.monotonic() - t:.1f}s")
        print(f"install: {product.install(kube, extra=INSTALL):.1f}s")
        rows: dict[int, list[dict[str, float]]] = {mib: [] for mib in a.ballast_mib}
        for _ in range(a.repeats):
            for mib in a.ballast_mib:
                ns = f"bench-drain-{mib}-{uuid.uuid4().hex[:6]}"
                nss.append(ns)
                kube.run("create", "namespace", ns)
                row = migrate(kube, ns, mib)
                row.update(cold(kube, ns, mib))
                rows[mib].append(row)
        print(f"\n{a.repeats} run(s){', medians' if a.repeats > 1 else ''}; "
              "migrate = `kubectl drain` node A -> replacement on node B; "
              "cold = the same app applied on node B")
        print(f"{'RSS':>8} {'->Ready':>8} {'->answer':>8} {'cold Rdy':>8} {'cold ans':>8} "
              f"{'Rdy/cold':>8} {'ans/cold':>8} {'image':>10} {'fetch':>7} {'thruput':>10}")
        for mib in a.ballast_mib:
            report(mib, rows[mib])
    finally:
        kube.run("uncordon", NODE_A, check=False)
        kube.run("uncordon", NODE_B, check=False)
        for ns in nss:
            kube.run("delete", "namespace", ns, "--wait=false", check=False)
        if not a.keep:
            cleanup(kube)
    return 0


def cleanup(kube: product.Kube) -> None:
    """Logs kept, the release gone (after its pods), node B gone: each step runs
    even if the one before failed."""
    try:
        if kube.run("get", "namespace", product.NAMESPACE, check=False).returncode == 0:
            product.keep_logs(kube, LOGS)
        wait_architect_pods_gone(Cluster(KUBECONFIG, CONTEXT, "node", KUBECTL), 180)
    finally:
        try:
            product.uninstall(kube)
        finally:
            down = _run(str(DOWN), "--node-b", timeout=300)
            if down.returncode != 0:
                print(f"down --node-b failed: {down.stderr[-2000:]}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except product.ProductError as e:
        print(f"bench/drain.py: {e}", file=sys.stderr)
        sys.exit(1)
