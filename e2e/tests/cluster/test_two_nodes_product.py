"""Cross-node migration through the Helm-installed product on two real nodes
(`e2e/cluster/up --nodes 2`): `kubectl drain` of node A moves the seed's counter
app to node B with its state; a hibernated pod migrates and stays hibernated; a
PodDisruptionBudget holds during the drain; a tampered image and a cut transfer
end in a fresh start on node B within scaleup-timeout. A daemon killed (SIGKILL
of its host process; the kubelet restarts it) in the middle: node A's while it
packs the image the shim wrote, and the restarted daemon finishes the Checkpoint
(the state moves); node B's stopped during its download until the replacement
has started fresh (StartedFresh), then killed. Once a migration is Failed,
node A's daemon withdraws its handover (the next pod of the template there
would restore state older than what the fresh replacement ran since) and its
packed image within seconds; neither node keeps anything of the image.

In `make test` (about 4.5 minutes with node B's up and down; each test passed
twice in a row before it was added). One test by hand, as root:

    flock -o /var/lock/architect-node.lock python3 -m pytest -p no:cacheprovider \
        e2e/tests/cluster/test_two_nodes_product.py -k drain_moves

It removes node B when it ends (the single-node suites expect one node).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from architect.policy.annotations import PREFIX, WRITTEN_BY_ARCHITECT
from architect.runtime.shim.plan import source_slot
from e2e import product
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import wait_architect_pods_gone
from e2e.tests.cluster.test_two_nodes import NODE_A, NODE_B, _run, two_nodes

pytestmark = pytest.mark.node

APP = "my-app"
__all__ = ["two_nodes"]  # the module fixture, shared


# --- the Helm-installed product on both nodes ---------------------------------

CHECKPOINTS = "checkpoints.architect.loopholelabs.io"


@pytest.fixture(scope="module")
def kube(two_nodes: Cluster) -> Iterator[product.Kube]:
    k = product.Kube(two_nodes.kubeconfig, two_nodes.context, two_nodes.kubectl)
    try:
        # Short TTLs: a Consumed or Failed checkpoint is collected within the test.
        # The operator on node B, the one never drained: while a drain moves it,
        # its webhooks refuse the replacements (failurePolicy Fail) and the
        # ReplicaSet's backoff, not the migration, sets the timings.
        try:
            product.install(k, extra=["--set", "operator.consumedTTL=10s",
                                      "--set", "operator.failedTTL=10s",
                                      "--set", "operator.gcInterval=5s",
                                      "--set", f"operator.nodeSelector.kubernetes\\.io/hostname={NODE_B}"])
        except product.ProductError:
            print(k.run("get", "pods", "-A", "-o", "wide", check=False).stdout)
            print(k.run("get", "events", "-n", product.NAMESPACE, check=False).stdout[-4000:])
            raise
        daemons = k.json("pods", "-n", product.NAMESPACE, "-l",
                         "app.kubernetes.io/component=daemon")["items"]
        assert {d["spec"]["nodeName"] for d in daemons} == {NODE_A, NODE_B}
        yield k
    finally:
        k.run("uncordon", NODE_A, check=False)
        k.run("uncordon", NODE_B, check=False)
        product.keep_logs(k, LOGS)  # the operator's and both daemons'
        try:
            wait_architect_pods_gone(two_nodes)
        finally:
            product.uninstall(k)


LOGS = Path("/var/log/architect-e2e/two-nodes-product")


class Sampler:
    """Polls ``probe`` in a thread (every 0.2 s) and keeps what it returned."""

    def __init__(self, probe: Callable[[], Any]) -> None:
        self.seen: list[Any] = []
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A failed poll (a kubectl timeout) is just a missing sample.
            with contextlib.suppress(Exception):
                self.seen.append(self._probe())
            self._stop.wait(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _phase(k: product.Kube, ns: str, name: str) -> str:
    proc = k.run("get", CHECKPOINTS, "-n", ns, name, "-o", "jsonpath={.status.phase}",
                 check=False, timeout=10)
    return proc.stdout.strip() if proc.returncode == 0 else "gone"


def _drain(k: product.Kube, node: str) -> None:
    proc = k.run("drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                 "--timeout=180s", timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _deploy_on_a(k: product.Kube, ns: str, dep: dict[str, Any]) -> list[dict[str, Any]]:
    """The app's pods all on node A (node B cordoned while they are scheduled)."""
    k.run("cordon", NODE_B)
    try:
        k.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(dep))
        want = int(dep["spec"]["replicas"])
        pods: list[dict[str, Any]] = []

        def ready() -> bool:
            pods[:] = _ready_pods(k, ns, dep["metadata"]["name"])
            return len(pods) == want
        product.eventually(f"{want} Ready pods of {dep['metadata']['name']}", ready, 180, 0.5)
    finally:
        k.run("uncordon", NODE_B)
    assert {p["spec"]["nodeName"] for p in pods} == {NODE_A}
    return pods


def _ready_pods(k: product.Kube, ns: str, app: str) -> list[dict[str, Any]]:
    out = []
    for p in k.json("pods", "-n", ns, "-l", f"app={app}")["items"]:
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        if not p["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True":
            out.append(p)
    return out


def _wait_ready_on_b(k: product.Kube, ns: str, n: int) -> None:
    product.eventually(f"{n} Ready pods on node B", lambda: sorted(
        p["spec"]["nodeName"] for p in _ready_pods(k, ns, APP)) == [NODE_B] * n, 240, 0.5)


def _reasons(k: product.Kube, ns: str, name: str) -> set[str]:
    ev = k.json("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    return {e["reason"] for e in ev["items"]}


def _started_fresh(k: product.Kube, ns: str) -> list[str]:
    """The messages of the StartedFresh Events in ``ns``, waited for (bounded)."""
    fresh: list[str] = []

    def seen() -> bool:
        fresh[:] = [e["message"] for e in k.json("events", "-n", ns)["items"]
                    if e["reason"] == "StartedFresh"]
        return bool(fresh)

    product.eventually("a StartedFresh Event", seen, 30, 0.5)
    return fresh


def _in_order(seen: list[str], want: list[str]) -> bool:
    """``want`` appears in ``seen`` as a subsequence (repeats collapsed)."""
    it = iter(seen)
    return all(any(s == w for s in it) for w in want)


def test_drain_moves_the_pod_to_node_b_with_its_state(kube: product.Kube) -> None:
    with product_namespace(kube, "nb-drain") as ns:
        (old,) = _deploy_on_a(kube, ns, product.counter_deployment(APP, scaledown="1h"))
        ip = old["status"]["podIP"]
        product.wait_listening(ip)
        counts = [product.count_of(product.http_get(ip)[0]) for _ in range(3)]
        assert counts == [1, 2, 3]
        cp = f"{old['metadata']['name']}-{APP}-container"
        try:
            with Sampler(lambda: _phase(kube, ns, cp)) as phases:
                t0 = time.monotonic()
                _drain(kube, NODE_A)
                new = product.ready_pod(kube, ns, APP, 180)
                moved = time.monotonic() - t0
                product.eventually(f"checkpoint {cp} collected",
                                   lambda: _phase(kube, ns, cp) == "gone", 120, 0.5)
        finally:
            kube.run("uncordon", NODE_A)
        assert new["spec"]["nodeName"] == NODE_B
        assert new["metadata"]["name"] != old["metadata"]["name"]
        # The counter lived only in node A's process memory: it continues on B.
        body, _ = product.http_get(new["status"]["podIP"])
        assert product.count_of(body) == 4, body
        seen = [s for i, s in enumerate(phases.seen) if i == 0 or s != phases.seen[i - 1]]
        print(f"\ncheckpoint phases seen: {seen}")
        # Ready lasts well under a second (the claim follows at once): sampled
        # or not, the control plane's Events record every phase.
        # The sampler stops once the wait above has seen "gone", maybe before its
        # own next sample: that wait is the last observation.
        assert _in_order([*seen, "gone"], ["Restoring", "Consumed", "gone"]), seen
        assert "Failed" not in seen, seen
        assert {"CheckpointReady", "CheckpointRestoring",
                "CheckpointConsumed"} <= _reasons(kube, ns, cp)
        # For comparison (printed, not asserted): the same app's cold start on node B.
        kube.run("cordon", NODE_A)
        try:
            t0 = time.monotonic()
            kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(
                product.counter_deployment("cold", scaledown="1h")))
            product.ready_pod(kube, ns, "cold", 180)
            cold = time.monotonic() - t0
        finally:
            kube.run("uncordon", NODE_A)
        print(f"drain -> replacement Ready on node B with state: {moved:.1f}s; "
              f"cold start of the same app on node B (apply -> Ready): {cold:.1f}s")


def test_hibernated_pod_migrates_and_stays_hibernated(kube: product.Kube) -> None:
    with product_namespace(kube, "nb-hib") as ns:
        (old,) = _deploy_on_a(kube, ns, product.counter_deployment(APP, scaledown="5s"))
        ip, name = old["status"]["podIP"], old["metadata"]["name"]
        product.wait_listening(ip)
        assert product.count_of(product.http_get(ip)[0]) == 1
        product.eventually("SCALED_DOWN on node A",
                           lambda: "SCALED_DOWN" in product.status_of(kube, ns, name).values(),
                           120, 0.5)
        try:
            _drain(kube, NODE_A)
            new = product.ready_pod(kube, ns, APP, 180)
        finally:
            kube.run("uncordon", NODE_A)
        assert new["spec"]["nodeName"] == NODE_B
        nn = new["metadata"]["name"]
        product.eventually("the replacement's status",
                           lambda: bool(product.status_of(kube, ns, nn)), 60, 0.25)
        assert product.status_of(kube, ns, nn) == {f"{APP}-container": "SCALED_DOWN"}
        # The first request wakes it, with the state the pod had on node A.
        body, took = product.http_get(new["status"]["podIP"])
        print(f"\nwake on node B after migration: {took * 1000:.0f} ms")
        assert product.count_of(body) == 2, body


def test_drain_respects_the_pod_disruption_budget(kube: product.Kube) -> None:
    with product_namespace(kube, "nb-pdb") as ns:
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": APP},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": APP}}}}))
        olds = _deploy_on_a(kube, ns, product.counter_deployment(APP, scaledown="1h",
                                                                 replicas=2))
        before = {}
        for p in olds:
            product.wait_listening(p["status"]["podIP"])
            for _ in range(2):
                body, _ = product.http_get(p["status"]["podIP"])
            before[p["metadata"]["name"]] = product.count_of(body)
        try:
            with Sampler(lambda: len(_ready_pods(kube, ns, APP))) as ready:
                _drain(kube, NODE_A)
                _wait_ready_on_b(kube, ns, 2)
        finally:
            kube.run("uncordon", NODE_A)
        print(f"\nReady pods sampled during the drain: min {min(ready.seen)}, "
              f"{len(ready.seen)} samples")
        # maxUnavailable 1 of 2: never both down at once.
        assert ready.seen and min(ready.seen) >= 1, ready.seen
        # Each replacement restored one old pod's counter (2 requests each: 3 next).
        for p in _ready_pods(kube, ns, APP):
            body, _ = product.http_get(p["status"]["podIP"])
            assert product.count_of(body) == 3, body


def test_drain_moves_pods_governed_only_by_a_migration_policy_object(
    kube: product.Kube,
) -> None:
    """No Architect annotation on the pods: a MigrationPolicy object alone governs
    them. Admission lists its containers on each pod (migration-containers, with
    the policy's choices), so a replacement's Create waits for the daemon's word
    as an annotated one does (before, it could start fresh while its handover was
    on its way), and a replacement restored hibernated is woken: nothing else
    would wake it (before, it stayed down, refusing connections)."""
    c = f"{APP}-container"
    with product_namespace(kube, "nb-mpol") as ns:
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps({
            "apiVersion": "architect.loopholelabs.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "movers"},
            "spec": {"selector": {"matchLabels": {"app": APP}}, "runtime": "runc",
                     "containers": [{"name": c}]}}))
        dep = product.counter_deployment(APP, replicas=2)
        dep["spec"]["template"]["metadata"]["annotations"] = {}
        olds = _deploy_on_a(kube, ns, dep)
        listed = "architect.loopholelabs.io/migration-containers"
        for p in olds:
            assert c in json.loads(p["metadata"]["annotations"][listed]), p["metadata"]
            # Only what Architect writes itself (the daemon's status among it).
            assert not [k for k in p["metadata"]["annotations"]
                        if k.startswith(PREFIX) and k not in WRITTEN_BY_ARCHITECT]
            product.wait_listening(p["status"]["podIP"])
            for _ in range(2):
                body, _ = product.http_get(p["status"]["podIP"])
            assert product.count_of(body) == 2, body
        try:
            # Both at once: the second replacement's Create is the one that raced.
            _drain(kube, NODE_A)
            _wait_ready_on_b(kube, ns, 2)
        finally:
            kube.run("uncordon", NODE_A)
        news = _ready_pods(kube, ns, APP)
        for p in news:
            assert json.loads(p["metadata"]["annotations"][listed]) == {c: {
                "autoScaleupAfterMigration": False, "migrateEmptyDir": False,
                "rewriteListenerAddresses": False, "rewriteEstablishedAddresses": False}}
            # Restored hibernated (autoScaleupAfterMigration false), then woken at
            # once: no HibernationPolicy would ever wake it on demand.
            nn = p["metadata"]["name"]
            product.eventually(f"{nn} RUNNING", lambda nn=nn: product.status_of(
                kube, ns, nn) == {c: "RUNNING"}, 60, 0.25)
            product.wait_listening(p["status"]["podIP"])
            body, _ = product.http_get(p["status"]["podIP"])
            assert product.count_of(body) == 3, (p["metadata"]["name"], body)
        fresh = [e["message"] for e in kube.json("events", "-n", ns)["items"]
                 if e["reason"] == "StartedFresh"]
        assert not fresh, fresh


# --- faults: each ends in a fresh start on node B within scaleup-timeout ------

SCALEUP_TIMEOUT_S = 20
HOLDER_PID = Path("/run/architect-e2e/pids/nodeb-ns.pid")


def _in_nodeb_net(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("nsenter", "-t", HOLDER_PID.read_text().strip(), "-n", *args, timeout=30)


def _stall_transfer_to_b(comment: str) -> list[str]:
    """Node B's end of the transfer: after 64 KiB from node A's transfer port,
    every further packet is dropped (the connection hangs mid-image). The rule,
    added to node B's INPUT under ``comment``; the caller deletes it."""
    _in_nodeb_net("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    rule = ["INPUT", "-p", "tcp", "--sport", "9447", "-m", "connbytes",
            "--connbytes", "65536:", "--connbytes-dir", "reply", "--connbytes-mode", "bytes",
            "-m", "comment", "--comment", comment, "-j", "DROP"]
    add = _in_nodeb_net("iptables", "-I", *rule)
    assert add.returncode == 0, add.stderr
    return rule


def _checkpointed_on_a(k: product.Kube, ns: str) -> tuple[str, str]:
    """The app on node A with 3 requests of state, scaled to 0: its Checkpoint is
    Ready on node A. Returns the old pod's name and its pod-template-hash."""
    # A template of its own per test (the annotation changes the pod-template-hash):
    # the previous test's namespace may still be going away, and its pods with it.
    dep = product.counter_deployment(APP, scaledown="1h", extra={
        "architect.loopholelabs.io/scaleup-timeout-containers":
            json.dumps({f"{APP}-container": f"{SCALEUP_TIMEOUT_S}s"}),
        "e2e.architect/test": ns})
    (old,) = _deploy_on_a(k, ns, dep)
    ip, name = old["status"]["podIP"], old["metadata"]["name"]
    product.wait_listening(ip)
    for _ in range(3):
        product.http_get(ip)
    thash = old["metadata"]["labels"]["architect.loopholelabs.io/pod-template-hash"]
    k.run("scale", "-n", ns, f"deployment/{APP}", "--replicas=0")
    cp = f"{name}-{APP}-container"
    product.eventually(f"checkpoint {cp} Ready", lambda: _phase(k, ns, cp) == "Ready", 90, 0.5)
    return name, thash


def _fresh_on_b(k: product.Kube, ns: str, old: str, thash: str) -> None:
    """Scaled back with node A cordoned: the replacement lands on node B, starts
    fresh (counter 1) within scaleup-timeout, with a StartedFresh Event; the
    Checkpoint is not left behind and nothing is stuck."""
    k.run("cordon", NODE_A)
    try:
        start = time.monotonic()
        k.run("scale", "-n", ns, f"deployment/{APP}", "--replicas=1")
        new = product.ready_pod(k, ns, APP, 120)
        took = time.monotonic() - start
    finally:
        k.run("uncordon", NODE_A)
    print(f"\nfresh replacement on node B Ready after {took:.1f}s")
    assert new["spec"]["nodeName"] == NODE_B
    assert took <= SCALEUP_TIMEOUT_S + 25, took
    product.wait_listening(new["status"]["podIP"])
    body, _ = product.http_get(new["status"]["podIP"])
    assert product.count_of(body) == 1, body
    # The daemon adopts the container (and posts the Event) on its next tick,
    # which may come after the kubelet reports it Ready.
    print(f"StartedFresh: {_started_fresh(k, ns)}")
    restarts = [c["restartCount"] for c in new["status"]["containerStatuses"]]
    assert restarts == [0] * len(restarts)
    _withdrawn_on_a(k, ns, old, thash)
    cp = f"{old}-{APP}-container"
    product.eventually(f"checkpoint {cp} not left behind",
                       lambda: _phase(k, ns, cp) == "gone", 120, 0.5)


# Node A's daemon ticks every second and its watch sees the Failed at once.
WITHDRAWN_S = 10


def _withdrawn_on_a(k: product.Kube, ns: str, old: str, thash: str) -> float:
    """Once the old pod's Checkpoint is Failed (or already collected), node A's
    handover slot of that pod and its packed image under outgoing/ go within
    WITHDRAWN_S: the seconds it took."""
    cp = f"{old}-{APP}-container"
    product.eventually(f"checkpoint {cp} Failed",
                       lambda: _phase(k, ns, cp) in ("Failed", "gone"), 120, 0.2)
    failed = time.monotonic()
    slot = SHIM_STATE[NODE_A] / "handover" / thash / f"{APP}-container" / source_slot(ns, old)
    packed = SHIM_STATE[NODE_A] / "outgoing" / thash

    def gone() -> bool:
        return not slot.exists() and not packed.exists()
    with contextlib.suppress(product.ProductError):
        product.eventually("node A's handover withdrawn", gone, 3 * WITHDRAWN_S, 0.2)
    took = time.monotonic() - failed
    assert gone(), {str(d): sorted(e.name for e in d.iterdir())
                    for d in (slot, packed) if d.is_dir()}
    print(f"node A's handover and packed image gone {took:.1f}s after the Checkpoint was Failed")
    assert took <= WITHDRAWN_S, took
    return took


def test_tampered_image_starts_fresh_on_node_b(kube: product.Kube) -> None:
    with product_namespace(kube, "nb-tamper") as ns:
        old, thash = _checkpointed_on_a(kube, ns)
        # Node A's image packed for transfer, on the host's /var/lib/architect (node
        # B has its own): one flipped byte of its payload, which the source serves
        # as it is and node B's digest check refuses.
        # One packed image per Checkpoint, named by its manifest digest.
        (img,) = Path(f"/var/lib/architect/shim/outgoing/{thash}/{APP}-container").iterdir()
        assert (img / "manifest.json").is_file()
        victim = max((f for f in img.rglob("*") if f.is_file() and f.name != "manifest.json"),
                     key=lambda f: f.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x5A
        victim.write_bytes(bytes(data))
        _fresh_on_b(kube, ns, old, thash)


def test_transfer_cut_starts_fresh_on_node_b(kube: product.Kube) -> None:
    with product_namespace(kube, "nb-cut") as ns:
        old, thash = _checkpointed_on_a(kube, ns)
        rule = _stall_transfer_to_b("architect-e2e-b transfer cut")
        try:
            _fresh_on_b(kube, ns, old, thash)
            dropped = _in_nodeb_net("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
            print(dropped)
        finally:
            _in_nodeb_net("iptables", "-D", *rule)
        # The rule really cut something: its packet counter moved.
        line = next(x for x in dropped.splitlines() if "transfer cut" in x)
        assert int(line.split()[0]) > 0, line


# --- faults: a daemon killed in the middle ----------------------------------

# Each node's shim state root as the host sees it (node B's is a bind mount).
SHIM_STATE = {NODE_A: Path("/var/lib/architect/shim"),
              NODE_B: Path("/var/lib/architect-e2e/node-b/var-lib-architect/shim")}


def _daemon(k: product.Kube, node: str) -> tuple[str, int, int]:
    """The node's daemon pod: its name, the daemon container's restart count, and
    the daemon's host pid (the DaemonSet runs with hostPID; found by the pod's
    uid in its cgroup path: both nodes' daemons share this kernel)."""
    (pod,) = [d for d in k.json("pods", "-n", product.NAMESPACE, "-l",
                                "app.kubernetes.io/component=daemon")["items"]
              if d["spec"]["nodeName"] == node and not d["metadata"].get("deletionTimestamp")]
    uid = pod["metadata"]["uid"]
    restarts = sum(c["restartCount"] for c in pod["status"].get("containerStatuses", []))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cgroup = (proc / "cgroup").read_text()
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"architect.runtime.daemon"] and (
                uid in cgroup or uid.replace("-", "_") in cgroup):
            return pod["metadata"]["name"], restarts, int(proc.name)
    raise AssertionError(f"no daemon process of pod {pod['metadata']['name']} on {node}")


def _kill_daemon(k: product.Kube, node: str, pid: int, restarts: int,
                 killed: Callable[[], None] = lambda: None) -> float:
    """SIGKILL of the daemon process (no handler, no cleanup runs), then
    ``killed``; the kubelet restarts its container: the seconds until it is
    Ready again."""
    os.kill(pid, signal.SIGKILL)
    killed()

    def back() -> bool:
        try:
            _, n, new = _daemon(k, node)
        except AssertionError:
            return False
        return n > restarts and new != pid and _daemons_ready(k, node)
    took = product.eventually(f"{node}'s daemon restarted", back, 120, 0.5)
    print(f"{node}'s daemon (pid {pid}) killed; its container back in {took:.1f}s")
    return took


def _daemons_ready(k: product.Kube, node: str) -> bool:
    for d in k.json("pods", "-n", product.NAMESPACE, "-l",
                    "app.kubernetes.io/component=daemon")["items"]:
        if d["spec"]["nodeName"] == node:
            conds = {c["type"]: c["status"] for c in d["status"].get("conditions", [])}
            return conds.get("Ready") == "True"
    return False


def _criu_running() -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == "criu":
                    return True
    return False


def _leftovers(thash: str) -> dict[str, list[str]]:
    """What either node still holds for the template: handover and packed images,
    scratch directories (dot names) included."""
    out: dict[str, list[str]] = {}
    for node, root in SHIM_STATE.items():
        found = []
        for sub in ("handover", "outgoing"):
            d = root / sub / thash
            if d.is_dir():
                found += [f"{sub}/{thash}/{e.name}" for e in d.iterdir()]
            found += [f"{sub}/{e.name}" for e in (root / sub).glob(".*") if e.is_dir()]
        out[node] = sorted(found)
    return out


def _running_on_a(k: product.Kube, ns: str, ballast_mib: int = 0) -> tuple[str, str]:
    """The app on node A with 3 requests of state; the pod's name and template hash."""
    dep = product.counter_deployment(APP, scaledown="1h", ballast_mib=ballast_mib, extra={
        "architect.loopholelabs.io/scaleup-timeout-containers":
            json.dumps({f"{APP}-container": f"{SCALEUP_TIMEOUT_S}s"}),
        "e2e.architect/test": ns})
    (old,) = _deploy_on_a(k, ns, dep)
    ip = old["status"]["podIP"]
    product.wait_listening(ip)
    for _ in range(3):
        product.http_get(ip)
    return old["metadata"]["name"], old["metadata"]["labels"][
        "architect.loopholelabs.io/pod-template-hash"]


def _settled_on_b(k: product.Kube, ns: str, old: str, thash: str, took: float) -> int:
    """After a fault: the replacement on node B Ready within scaleup-timeout (plus
    the pod's own start), never restarted, serving; the old pod's Checkpoint
    collected and nothing of the template left on either node. Its count."""
    new = product.ready_pod(k, ns, APP, 120)
    assert new["spec"]["nodeName"] == NODE_B
    assert took <= SCALEUP_TIMEOUT_S + 25, took
    restarts = [c["restartCount"] for c in new["status"]["containerStatuses"]]
    assert restarts == [0] * len(restarts)
    product.wait_listening(new["status"]["podIP"])
    count = product.count_of(product.http_get(new["status"]["podIP"])[0])
    if count == 1:  # started fresh: the migration is Failed, its handover withdrawn
        _withdrawn_on_a(k, ns, old, thash)
    cp = f"{old}-{APP}-container"
    product.eventually(f"checkpoint {cp} not left behind",
                       lambda: _phase(k, ns, cp) == "gone", 120, 0.5)
    # Nothing of the old pod's state is left, anywhere.
    left: dict[str, list[str]] = {}

    def clean() -> bool:
        left.update(_leftovers(thash))
        return not any(left.values())
    with contextlib.suppress(product.ProductError):
        product.eventually("no image left on either node", clean, 90, 1)
    assert not any(left.values()), left
    return count


def _outcome(k: product.Kube, ns: str, old: str, count: int, back: float) -> str:
    """The state moved (the count continues from 3, the Checkpoint Consumed) or
    the replacement started fresh with a StartedFresh Event naming why; nothing
    in between. A daemon back well within scaleup-timeout must have moved it:
    the replacement waits that long for the handover."""
    if count == 4:
        assert "CheckpointConsumed" in _reasons(k, ns, f"{old}-{APP}-container")
        return "restored"
    assert back > SCALEUP_TIMEOUT_S / 2, f"daemon back in {back:.1f}s, yet count {count}"
    assert count == 1, count
    return f"fresh: {_started_fresh(k, ns)}"


# "dump" too (killed while the shim's CRIU dump runs; the dump goes on, its end
# is never heard): passed in three runs, restored each time; left out of make
# test for time (a second kill meets the kubelet's 10 s restart backoff).
@pytest.mark.parametrize("moment", ["pack"])
def test_source_daemon_killed_mid_checkpoint(kube: product.Kube, moment: str) -> None:
    """Killed while the daemon packs the handover the shim wrote (its scratch
    stays; the shim's event is lost) or, "dump", while the shim's CRIU runs."""
    outgoing = SHIM_STATE[NODE_A] / "outgoing"

    def in_flight() -> bool:
        return _criu_running() if moment == "dump" else any(outgoing.glob(".snap-*"))
    with product_namespace(kube, "nb-srckill") as ns:
        old, thash = _running_on_a(kube, ns, ballast_mib=32)
        _, restarts, pid = _daemon(kube, NODE_A)
        kube.run("cordon", NODE_A)
        try:
            start = time.monotonic()
            kube.run("delete", "pod", "-n", ns, old, "--wait=false")
            # The checkpoint for the replacement is in flight: node A's daemon
            # armed it and waits for the shim's dump to end, or packs its image.
            product.eventually(f"{moment} in flight on node A", in_flight, 60, 0.01)
            back = _kill_daemon(kube, NODE_A, pid, restarts)
            product.ready_pod(kube, ns, APP, 120)
            took = time.monotonic() - start
        finally:
            kube.run("uncordon", NODE_A)
        count = _settled_on_b(kube, ns, old, thash, took)
        print(f"\nreplacement Ready on node B {took:.1f}s after the delete: "
              f"{_outcome(kube, ns, old, count, back)}")


# "killed" too (SIGKILL at once; back in 2-3 s, it fetched anew and the state
# moved): passed in three runs; left out of make test for time.
@pytest.mark.parametrize("down", ["stopped"])
def test_destination_daemon_killed_mid_transfer(kube: product.Kube, down: str) -> None:
    """Killed during its download; or stopped (SIGSTOP) during it until the
    replacement's scaleup-timeout has passed, then killed: the restarted daemon
    fetches an image the replacement no longer waits for."""
    with product_namespace(kube, "nb-dstkill") as ns:
        old, thash = _checkpointed_on_a(kube, ns)
        _, restarts, pid = _daemon(kube, NODE_B)
        # Node B's download stalls after 64 KiB (as in the cut above), so the
        # daemon is surely killed mid-transfer; the rule goes with the kill.
        rule = _stall_transfer_to_b("architect-e2e-b transfer stall")
        scratch = SHIM_STATE[NODE_B] / "handover" / thash / f"{APP}-container"
        kube.run("cordon", NODE_A)
        try:
            start = time.monotonic()
            kube.run("scale", "-n", ns, f"deployment/{APP}", "--replicas=1")
            product.eventually("node B's download under way", lambda: any(
                f.is_file() for f in scratch.glob(".to_*.incoming-*/image/*")), 60, 0.1)
            frozen = time.monotonic()
            took = 0.0
            if down == "stopped":
                os.kill(pid, signal.SIGSTOP)
                try:
                    product.ready_pod(kube, ns, APP, 120)  # fresh, without its daemon
                    took = time.monotonic() - start
                except BaseException:
                    os.kill(pid, signal.SIGKILL)
                    raise
            stalled = ""

            def unstall() -> None:  # before the restarted daemon fetches again
                nonlocal stalled, rule
                stalled = _in_nodeb_net("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
                _in_nodeb_net("iptables", "-D", *rule)
                rule = []
            _kill_daemon(kube, NODE_B, pid, restarts, unstall)
            back = time.monotonic() - frozen
            product.ready_pod(kube, ns, APP, 120)
            took = took or time.monotonic() - start
        finally:
            if rule:
                _in_nodeb_net("iptables", "-D", *rule)
            kube.run("uncordon", NODE_A)
        line = next(x for x in stalled.splitlines() if "transfer stall" in x)
        assert int(line.split()[0]) > 0, line
        count = _settled_on_b(kube, ns, old, thash, took)
        print(f"\nreplacement Ready on node B {took:.1f}s after the scale: "
              f"{_outcome(kube, ns, old, count, back)}")


@contextlib.contextmanager
def product_namespace(k: product.Kube, prefix: str) -> Iterator[str]:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    k.run("create", "namespace", ns)
    try:
        yield ns
    finally:
        k.run("delete", "namespace", ns, "--wait=false", check=False)


