"""`kubectl drain` of the node that runs Architect's operator, on two real nodes
(`e2e/cluster/up --nodes 2`), the Helm-installed product as a user installs it
(no `operator.nodeSelector`). The operator and a managed Deployment are both on
node A; the drain evicts them together. The replacement on node B must restore
the state (the counter continues), the operator must run again on node B, the
Checkpoint must go Consumed and be collected, nothing may stay Pending or
Terminating, and the drain must end within DRAIN_S. Both orders of the drain's
concurrent evictions: the operator's first (its webhooks, failurePolicy Fail,
refuse the replacement until it runs on node B, and the ReplicaSet's backoff
decides when it is created), and the app's first (the replacement is admitted
by the operator still on A and waits for its handover while the operator moves).

test_two_nodes_product.py pins the operator to node B, the node never drained;
this module is the case it leaves out. About 2.5 minutes with node B's up and
down. By hand, as root:

    flock -o /var/lock/architect-node.lock python3 -m pytest -p no:cacheprovider \
        e2e/tests/cluster/test_two_nodes_operator_drain.py -s

It removes node B when it ends (the single-node suites expect one node).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e import product
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import wait_architect_pods_gone
from e2e.tests.cluster.test_two_nodes import NODE_A, NODE_B, two_nodes
from e2e.tests.cluster.test_two_nodes_product import (
    CHECKPOINTS,
    Sampler,
    _deploy_on_a,
    _drain,
    _in_order,
    _phase,
    _reasons,
    product_namespace,
)

pytestmark = pytest.mark.node

__all__ = ["two_nodes"]  # the module fixture, shared
APP = "my-app"
LOGS = Path("/var/log/architect-e2e/two-nodes-operator-drain")
OPERATOR = "app.kubernetes.io/component=operator"
# kubectl drain returns once every evicted pod is gone: here the app's
# checkpoint on stop (terminationGracePeriodSeconds 5) and the operator's exit.
DRAIN_S = 60
# Drain start -> the replacement Ready on node B with its state. With the
# operator on node B the same move takes 4-5 s (test_two_nodes_product.py).
MOVED_S = 90


@pytest.fixture(scope="module")
def kube(two_nodes: Cluster) -> Iterator[product.Kube]:
    k = product.Kube(two_nodes.kubeconfig, two_nodes.context, two_nodes.kubectl)
    try:
        # Node B cordoned during the install: every operator replica lands on
        # node A, the node about to be drained (the DaemonSet tolerates the cordon).
        k.run("cordon", NODE_B)
        try:
            product.install(k, extra=["--set", "operator.consumedTTL=10s",
                                      "--set", "operator.failedTTL=10s",
                                      "--set", "operator.gcInterval=5s"])
        except product.ProductError:
            print(k.run("get", "pods", "-A", "-o", "wide", check=False).stdout)
            print(k.run("get", "events", "-n", product.NAMESPACE, check=False).stdout[-4000:])
            raise
        finally:
            k.run("uncordon", NODE_B, check=False)
        yield k
    finally:
        k.run("uncordon", NODE_A, check=False)
        k.run("uncordon", NODE_B, check=False)
        product.keep_logs(k, LOGS)
        try:
            wait_architect_pods_gone(two_nodes)
        finally:
            product.uninstall(k)


def _operators(k: product.Kube) -> list[dict[str, Any]]:
    return list(k.json("pods", "-n", product.NAMESPACE, "-l", OPERATOR)["items"])


def _ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return not pod["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True"


def _webhook_endpoints(k: product.Kube) -> int:
    """Ready addresses behind the webhook Service: what the API server calls."""
    slices = k.json("endpointslices", "-n", product.NAMESPACE, "-l",
                    f"kubernetes.io/service-name={product.RELEASE}-webhook")["items"]
    return sum(1 for s in slices for e in s.get("endpoints") or []
               if (e.get("conditions") or {}).get("ready"))


def _stuck(k: product.Kube, *namespaces: str) -> list[str]:
    """Pods neither Running and Ready nor Succeeded: Pending, Terminating, failing."""
    out = []
    for ns in namespaces:
        for p in k.json("pods", "-n", ns)["items"]:
            if p["status"].get("phase") != "Succeeded" and not _ready(p):
                out.append(f"{ns}/{p['metadata']['name']} {p['status'].get('phase')} "
                           f"on {p['spec'].get('nodeName')}"
                           f"{' terminating' if p['metadata'].get('deletionTimestamp') else ''}")
    return out


def _gap(samples: list[tuple[float, int]]) -> float:
    """The longest run of samples with no ready webhook endpoint, in seconds."""
    longest, since = 0.0, None
    for t, n in samples:
        if n == 0 and since is None:
            since = t
        elif n > 0 and since is not None:
            longest, since = max(longest, t - since), None
    if since is not None and samples:
        longest = max(longest, samples[-1][0] - since)
    return longest


def _operator_on_a(k: product.Kube) -> None:
    """Every operator pod on node A and Ready (after an earlier test moved it:
    node B cordoned, the pods deleted; the Deployment makes them again on A)."""
    def on_a() -> bool:
        ops = _operators(k)
        return bool(ops) and all(_ready(p) and p["spec"]["nodeName"] == NODE_A for p in ops)
    if on_a():
        return
    k.run("cordon", NODE_B)
    try:
        k.run("delete", "pods", "-n", product.NAMESPACE, "-l", OPERATOR, "--wait=false")
        product.eventually("the operator Ready on node A", on_a, 120, 0.5)
    finally:
        k.run("uncordon", NODE_B)
    product.eventually("a ready webhook endpoint", lambda: _webhook_endpoints(k) > 0, 60, 0.5)


def _drain_the_operators_node(k: product.Kube, prefix: str, app_first: bool) -> None:
    """The operator and the app on node A, 3 requests of state; node A drained.
    ``app_first``: the app's pod deleted (node A cordoned) and its replacement
    admitted by the operator still on A before the drain evicts the operator,
    one order a drain's concurrent evictions take: the replacement then waits
    for its handover while the operator moves."""
    _operator_on_a(k)
    with product_namespace(k, prefix) as ns:
        # A template of its own per test: handovers are keyed by template hash,
        # and the previous test's namespace may still be going away.
        (old,) = _deploy_on_a(k, ns, product.counter_deployment(
            APP, scaledown="1h", extra={"e2e.architect/test": ns}))
        ip, name = old["status"]["podIP"], old["metadata"]["name"]
        product.wait_listening(ip)
        assert [product.count_of(product.http_get(ip)[0]) for _ in range(3)] == [1, 2, 3]
        cp = f"{name}-{APP}-container"
        t0, wall0 = time.monotonic(), time.time()
        try:
            with Sampler(lambda: (time.monotonic() - t0, _webhook_endpoints(k))) as ep, \
                    Sampler(lambda: _phase(k, ns, cp)) as phases:
                if app_first:
                    k.run("cordon", NODE_A)
                    k.run("delete", "pod", "-n", ns, name, "--wait=false")
                    product.eventually("the replacement admitted", lambda: any(
                        p["metadata"]["name"] != name
                        for p in k.json("pods", "-n", ns, "-l", f"app={APP}")["items"]),
                        30, 0.1)
                _drain(k, NODE_A)
                drained = time.monotonic() - t0
                new = _ready_on_b(k, ns)
                moved = time.monotonic() - t0
                product.eventually("an operator Ready on node B", lambda: any(
                    _ready(p) and p["spec"]["nodeName"] == NODE_B
                    for p in _operators(k)), 120, 0.5)
                product.eventually(f"checkpoint {cp} collected",
                                   lambda: _phase(k, ns, cp) == "gone", 120, 0.5)
        finally:
            k.run("uncordon", NODE_A)
        refused = [e["message"] for e in k.json("events", "-n", ns)["items"]
                   if e["reason"] == "FailedCreate"]
        seen = [s for i, s in enumerate(phases.seen) if i == 0 or s != phases.seen[i - 1]]
        back = next((t for t, n in ep.seen if n > 0 and any(
            m == 0 for u, m in ep.seen if u < t)), 0.0)
        created = datetime.fromisoformat(
            new["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp() - wall0
        print(f"\n{'app first' if app_first else 'drain'}: drain returned after "
              f"{drained:.1f}s; replacement Ready on node B with state {moved:.1f}s "
              f"after the first eviction; webhook without a ready endpoint for "
              f"{_gap(ep.seen):.1f}s (back at {back:.1f}s); the replacement created "
              f"at {created:.0f}s (1 s resolution); {len(refused)} FailedCreate "
              f"Events; checkpoint phases {seen}")
        for m in refused[:3]:
            print(f"  FailedCreate: {m[:300]}")
        assert new["spec"]["nodeName"] == NODE_B
        # The counter lived only in node A's process memory: it continues on B.
        body, _ = product.http_get(new["status"]["podIP"])
        assert product.count_of(body) == 4, body
        assert drained <= DRAIN_S, drained
        assert moved <= MOVED_S, moved
        assert "Failed" not in seen, seen
        assert _in_order([*seen, "gone"], ["Consumed", "gone"]), seen
        assert {"CheckpointReady", "CheckpointConsumed"} <= _reasons(k, ns, cp)
        assert not k.json(CHECKPOINTS, "-n", ns)["items"]
        # Nothing stuck: the operator's pods and the app's, all Running and Ready.
        left: list[str] = []

        def settled() -> bool:
            left[:] = _stuck(k, ns, product.NAMESPACE)
            return not left
        with contextlib.suppress(product.ProductError):
            product.eventually("no pod stuck", settled, 60, 1)
        assert not left, left
        assert {p["spec"]["nodeName"] for p in _operators(k)} == {NODE_B}
        restarts = [c["restartCount"] for c in new["status"]["containerStatuses"]]
        assert restarts == [0] * len(restarts)


def test_drain_of_the_operators_node_moves_the_app_with_its_state(
        kube: product.Kube) -> None:
    _drain_the_operators_node(kube, "nb-opdrain", app_first=False)


def test_replacement_admitted_before_the_operator_moves_keeps_its_state(
        kube: product.Kube) -> None:
    _drain_the_operators_node(kube, "nb-opfirst", app_first=True)


def _ready_on_b(k: product.Kube, ns: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [p for p in k.json("pods", "-n", ns, "-l", f"app={APP}")["items"]
                    if _ready(p) and p["spec"].get("nodeName") == NODE_B
                    and p["status"].get("podIP")]
        return bool(found)
    try:
        product.eventually(f"a Ready pod app={APP} on {NODE_B}", ready, MOVED_S + 60, 0.2)
    except product.ProductError:
        events = k.run("get", "events", "-n", ns, check=False).stdout
        raise product.ProductError(f"no Ready pod on node B; events:\n{events[-3000:]}") from None
    return found[0]
