"""Bare Pods without labels against the real API server: admission labels them,
their compiled policies select them by that label and are owned by them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from architect.policy.annotations import POD_LABEL
from architect.policy.compiler import compile_workload
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl
from e2e.tests.engine.harness import Operator

pytestmark = pytest.mark.cluster

P = "architect.loopholelabs.io/"
GOOD = {
    P + "managed-containers": '["app"]',
    P + "scaledown-durations": '{"app":"30s"}',
    P + "network-monitor": '{"app":"packets"}',
}


def manifest(name: str | None = None, generate: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": GOOD}  # no labels at all
    if name:
        meta["name"] = name
    if generate:
        meta["generateName"] = generate
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "runtimeClassName": "runc-architect",
            # Gated: it stays Pending in either tier.
            "schedulingGates": [{"name": "architect.loopholelabs.io/e2e-hold"}],
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    # Not behind the health-check proxy: admission warns.
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                }
            ],
        },
    }


def policies(op: Operator, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        op.cluster, "hibernationpolicies,migrationpolicies", "-n", ns
    )["items"]
    return items


def owned_by(item: dict[str, Any], pod: dict[str, Any]) -> bool:
    return item["metadata"].get("ownerReferences") == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


def test_bare_pod_without_labels_is_labelled_and_owns_its_policies(operator: Operator) -> None:
    ns = operator.namespace("eng-bare")
    body = manifest("solo")
    proc = kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(body))
    # The admission warning reaches the user (kubectl prints "Warning: ...").
    assert "Warning: readinessProbe of managed container 'app' reaches port 8080 directly" in (
        proc.stderr
    ), proc.stderr
    pod = get_json(operator.cluster, "pod/solo", "-n", ns)
    assert pod["metadata"]["labels"] == {POD_LABEL: "solo"}
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    items = policies(operator, ns)
    assert sorted(i["kind"] for i in items) == ["HibernationPolicy", "MigrationPolicy"]
    for item in items:
        assert item["metadata"]["name"] == "solo"
        assert item["spec"]["selector"]["matchLabels"] == {POD_LABEL: "solo"}
        assert owned_by(item, pod), item["metadata"]
    # The selector finds exactly this pod, and `architect compile` of the manifest
    # printed the same selector before it was ever applied.
    found = kubectl(operator.cluster, "get", "pods", "-n", ns, "-l", f"{POD_LABEL}=solo",
                    "-o", "name")
    assert found.stdout.split() == ["pod/solo"]
    offline = {p.kind: p.to_dict()["spec"]["selector"] for p in compile_workload(body)}
    assert {i["kind"]: i["spec"]["selector"] for i in items} == offline


def test_generate_name_pods_select_only_themselves(operator: Operator) -> None:
    ns = operator.namespace("eng-gen")
    pods = []
    for _ in range(2):
        out = kubectl(operator.cluster, "create", "-n", ns, "-f", "-", "-o", "json",
                      stdin=json.dumps(manifest(generate="gen-")))
        pods.append(json.loads(out.stdout))
    labels = [p["metadata"]["labels"][POD_LABEL] for p in pods]
    assert len(set(labels)) == 2 and all(v.startswith("gen-") for v in labels)
    eventually("policies of both pods", lambda: len(policies(operator, ns)) == 4)
    by_name = {(i["kind"], i["metadata"]["name"]): i for i in policies(operator, ns)}
    for pod, value in zip(pods, labels, strict=True):
        for kind in ("HibernationPolicy", "MigrationPolicy"):
            item = by_name[(kind, pod["metadata"]["name"])]
            assert item["spec"]["selector"]["matchLabels"] == {POD_LABEL: value}
            assert owned_by(item, pod)


@pytest.mark.node
def test_bare_pods_policies_go_with_it(node_cluster: Cluster, operator: Operator) -> None:
    # The garbage collector (kube-controller-manager, node tier) follows the
    # ownerReference: deleting the pod deletes its policies.
    ns = operator.namespace("eng-bare-gc")
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(manifest("gone")))
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    kubectl(operator.cluster, "delete", "pod/gone", "-n", ns, "--wait=true", "--timeout=60s")
    eventually("policies deleted with their pod", lambda: policies(operator, ns) == [],
               timeout_s=90)
