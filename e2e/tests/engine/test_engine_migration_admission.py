"""The operator against a real API server: a MigrationPolicy object reaches the
pods admission creates (architect.loopholelabs.io/migration-containers), from the
operator's watch of the policies, and leaves them once the policy is deleted."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from architect.policy.annotations import MIGRATION_CONTAINERS, TEMPLATE_HASH_ANNOTATION
from e2e.tests.cluster.kube import eventually, kubectl
from e2e.tests.engine.harness import Operator

pytestmark = pytest.mark.cluster

POLICY = {
    "apiVersion": "architect.loopholelabs.io/v1alpha1",
    "kind": "MigrationPolicy",
    "metadata": {"name": "movers"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "runtime": "runc",
        "containers": [{"name": "app", "migrateEmptyDir": True}],
    },
}


def _create_pod(op: Operator, ns: str) -> dict[str, Any]:
    """A ReplicaSet's kind of pod (template hash label), created and returned as stored."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"web-{uuid.uuid4().hex[:6]}",
                     "labels": {"app": "web", "pod-template-hash": "5d9c7b7f6"}},
        "spec": {"runtimeClassName": "runc-architect",
                 "containers": [{"name": "side", "image": "side:1"},
                                {"name": "app", "image": "app:1"}]},
    }
    out = kubectl(op.cluster, "create", "-n", ns, "-o", "json", "-f", "-",
                  stdin=json.dumps(pod))
    stored: dict[str, Any] = json.loads(out.stdout)
    # The pod webhook mutated it (it always adds the template-hash annotation).
    assert TEMPLATE_HASH_ANNOTATION in stored["metadata"].get("annotations", {}), stored
    return stored


def _listed(pod: dict[str, Any]) -> dict[str, Any]:
    raw = (pod["metadata"].get("annotations") or {}).get(MIGRATION_CONTAINERS)
    return json.loads(raw) if raw else {}


def test_a_migration_policy_object_reaches_the_pods_admitted_after_it(
    operator: Operator,
) -> None:
    ns = operator.namespace("eng-mpol")
    assert _listed(_create_pod(operator, ns)) == {}  # no policy yet
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(POLICY))
    seen: list[dict[str, Any]] = []

    def listed() -> bool:  # the operator's watch delivers it within moments
        seen[:] = [_listed(_create_pod(operator, ns))]
        return bool(seen[0])

    eventually("a pod admitted with migration-containers", listed, timeout_s=30, every_s=0.5)
    assert seen[0] == {"app": {"autoScaleupAfterMigration": False, "migrateEmptyDir": True,
                               "rewriteListenerAddresses": False,
                               "rewriteEstablishedAddresses": False}}
    # Edited: the next pods get the new choices; deleted: nothing.
    edited = json.loads(json.dumps(POLICY))
    edited["spec"]["containers"][0]["autoScaleupAfterMigration"] = True
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(edited))
    eventually("the edit reaches admission", lambda: _listed(_create_pod(operator, ns)).get(
        "app", {}).get("autoScaleupAfterMigration") is True, timeout_s=30, every_s=0.5)
    kubectl(operator.cluster, "delete", "-n", ns, "migrationpolicy", "movers")
    eventually("the deletion reaches admission",
               lambda: _listed(_create_pod(operator, ns)) == {}, timeout_s=30, every_s=0.5)
