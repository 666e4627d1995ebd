"""The operator against a real API server: admission over TLS and the control plane."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from typing import Any

import pytest

from architect.engine.explain import explain_main
from e2e.tests.cluster.kube import eventually, get_json, kubectl
from e2e.tests.engine.harness import Operator

pytestmark = pytest.mark.cluster

P = "architect.loopholelabs.io/"
DIGEST = "sha256:" + "b" * 64


def deployment(name: str, annotations: dict[str, str], runtime: str = "runc-architect") -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {
                        "runtimeClassName": runtime,
                        "containers": [
                            {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}
                        ],
                    },
                },
            },
        }
    )


GOOD = {
    P + "managed-containers": '["app"]',
    P + "scaledown-durations": '{"app":"30s"}',
    P + "network-monitor": '{"app":"packets"}',
}


def policies(op: Operator, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        op.cluster, "hibernationpolicies,migrationpolicies", "-n", ns
    )["items"]
    return items


def test_annotated_deployment_gets_owned_policies(operator: Operator) -> None:
    ns = operator.namespace("eng-deploy")
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("web", GOOD))
    uid = get_json(operator.cluster, "deployment/web", "-n", ns)["metadata"]["uid"]
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    items = policies(operator, ns)
    assert sorted(i["kind"] for i in items) == ["HibernationPolicy", "MigrationPolicy"]
    for item in items:
        (ref,) = item["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("Deployment", "web", uid)
        assert item["metadata"]["labels"][P + "compiled-from"] == "annotations"
    hp = next(i for i in items if i["kind"] == "HibernationPolicy")
    assert hp["spec"]["containers"][0]["scaledownAfter"] == "30s"
    assert hp["spec"]["containers"][0]["wakeOn"]["network"] == "packets"

    # An update that changes an annotation updates the policy...
    changed = {**GOOD, P + "scaledown-durations": '{"app":"2m"}'}
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("web", changed))
    eventually(
        "policy updated",
        lambda: (
            get_json(operator.cluster, "hibernationpolicy/web", "-n", ns)["spec"]["containers"][0][
                "scaledownAfter"
            ]
            == "2m"
        ),
    )
    # ...and removing the annotations (runtime class kept) deletes them.
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("web", {}))
    eventually("policies deleted", lambda: policies(operator, ns) == [])


def test_bad_annotation_refused_at_apply(operator: Operator) -> None:
    ns = operator.namespace("eng-bad")
    bad = {P + "managed-containers": '["nope"]'}
    proc = kubectl(
        operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("bad", bad), check=False
    )
    assert proc.returncode != 0
    assert "Deployment " + ns + "/bad: invalid Architect annotations" in proc.stderr
    assert P + "managed-containers: value 'nope': not a container of the pod" in proc.stderr
    assert kubectl(operator.cluster, "get", "deployment/bad", "-n", ns, check=False).returncode != 0
    assert policies(operator, ns) == []


def test_dry_run_records_nothing(operator: Operator) -> None:
    ns = operator.namespace("eng-dry")
    kubectl(
        operator.cluster,
        "apply",
        "--dry-run=server",
        "-n",
        ns,
        "-f",
        "-",
        stdin=deployment("web", GOOD),
    )
    time.sleep(2)  # recording is asynchronous: give it time to (wrongly) happen
    assert policies(operator, ns) == []


def test_objects_without_architect_intent_never_reach_the_webhook(operator: Operator) -> None:
    operator.quiesce()  # asserts on operator-wide counters below
    ns = operator.namespace("eng-plain")
    before = operator.metric("architect_admission_reviews_total")
    plain_obj = json.loads(deployment("plain", {}))
    del plain_obj["spec"]["template"]["spec"]["runtimeClassName"]
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(plain_obj))
    kubectl(operator.cluster, "run", "plain-pod", "-n", ns, "--image", "busybox", "--restart=Never")
    # Give a controller-manager (node tier) time to make the ReplicaSet and pods too.
    time.sleep(3)
    assert operator.metric("architect_admission_reviews_total") == before
    # The control: an annotated pod is reviewed (mutated and validated).
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=bare_pod("fancy", GOOD))
    assert operator.metric("architect_admission_reviews_total") == before + 2


def bare_pod(
    name: str,
    annotations: dict[str, str],
    runtime: str = "runc-architect",
    node: str | None = None,
) -> str:
    # Gated, it stays Pending in either tier. Bound to a node that does not exist,
    # the node tier's pod GC force-deletes it some 40 s after it first sees one:
    # only tests that need a bound pod (and need it briefly) ask for that.
    where: dict[str, Any] = (
        {"nodeName": node}
        if node
        else {"schedulingGates": [{"name": "architect.loopholelabs.io/e2e-hold"}]}
    )
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
            "spec": {
                "runtimeClassName": runtime,
                **where,
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                    }
                ],
            },
        }
    )


def test_bare_pod_gets_sidecar_probe_rewrite_and_policies(operator: Operator) -> None:
    ns = operator.namespace("eng-pod")
    ann = {
        **GOOD,
        P + "health-check-proxy": json.dumps(
            {"mappings": [{"containerName": "app", "appPort": 8080, "shadowPort": 9080}]}
        ),
    }
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=bare_pod("solo", ann))
    pod = get_json(operator.cluster, "pod/solo", "-n", ns)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["image"] == "example.test/architect:e2e"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"][:4] == ["architect", "health-proxy", "--map", "app:8080:9080"]
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 9080
    assert any(v["name"] == "architect-run" for v in pod["spec"]["volumes"])
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    items = policies(operator, ns)
    assert {i["metadata"]["ownerReferences"][0]["uid"] for i in items} == {pod["metadata"]["uid"]}

    # A hand-written policy for the same container loses to the compiled one
    # at equal priority; the control plane says so on its status.
    hand = {
        "apiVersion": "architect.loopholelabs.io/v1alpha1",
        "kind": "HibernationPolicy",
        "metadata": {"name": "hand"},
        "spec": {
            "selector": {"matchLabels": {"app": "solo"}},
            "runtime": "runc",
            "containers": [{"name": "app", "scaledownAfter": "5m"}],
        },
    }
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(hand))

    def conflicted() -> str:
        obj = get_json(operator.cluster, "hibernationpolicy/hand", "-n", ns)
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
        c = conds.get("Conflicted", {})
        return str(c.get("message", "")) if c.get("status") == "True" else ""

    eventually("Conflicted on the losing policy", lambda: bool(conflicted()), timeout_s=30)
    assert f"HibernationPolicy {ns}/solo governs app of pod {ns}/solo" in conflicted()

    out = io.StringIO()
    with redirect_stdout(out):
        assert (
            explain_main(
                ["pod", "solo", "-n", ns, "--kubeconfig", str(operator.cluster.kubeconfig)]
            )
            == 0
        )
    text = out.getvalue()
    assert f"hibernation: HibernationPolicy {ns}/solo" in text
    assert f"migration:   MigrationPolicy {ns}/solo" in text
    assert "decision:" in text
    assert f"overrides:   HibernationPolicy {ns}/hand (compiled from annotations" in text


def test_explain_missing_pod_is_a_clear_error(
    operator: Operator, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = explain_main(
        ["pod", "ghost", "-n", "default", "--kubeconfig", str(operator.cluster.kubeconfig)]
    )
    assert rc == 1
    assert "pod default/ghost: not found" in capsys.readouterr().err


def _phase(op: Operator, kind: str, ns: str, name: str) -> str | None:
    obj = get_json(op.cluster, f"{kind}/{name}", "-n", ns)
    phase: str | None = (obj.get("status") or {}).get("phase")
    return phase


def _set_status(
    op: Operator, kind: str, ns: str, name: str, status: dict[str, Any], check: bool = True
) -> Any:
    return kubectl(
        op.cluster,
        "patch",
        f"{kind}/{name}",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        check=check,
    )


def _events(op: Operator, ns: str, name: str) -> list[str]:
    items = get_json(
        op.cluster, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [e["reason"] for e in items]


PLAIN_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-h1-bbbbb"},
    "spec": {
        # Never scheduled: the node tier may be up, and nothing here should run.
        "schedulingGates": [{"name": "architect.loopholelabs.io/e2e-hold"}],
        "containers": [{"name": "app", "image": "architect.local/pause:3.10"}],
    },
}


def test_checkpoint_lifecycle_and_gc(operator: Operator) -> None:
    operator.quiesce()  # asserts on operator-wide counters below
    ns = operator.namespace("eng-ckpt")
    ckpt = {
        "apiVersion": "architect.loopholelabs.io/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {"name": "web-app", "labels": {P + "pod-template-hash": "h1"}},
        "spec": {
            "templateHash": "h1",
            "container": "app",
            "runtime": "runc",
            "sourcePod": "web-h1-aaaaa",
            "sourceNode": "node-1",
            "reason": "Migration",
            "image": {"location": "node://node-1/ckpt/web-app", "digest": DIGEST, "sizeBytes": 10},
        },
    }
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(ckpt))
    eventually("Pending set", lambda: _phase(operator, "checkpoint", ns, "web-app") == "Pending")
    before = operator.metric("architect_checkpoint_duration_seconds_count")
    _set_status(operator, "checkpoint", ns, "web-app", {"phase": "Ready"})
    eventually("Ready event", lambda: "CheckpointReady" in _events(operator, ns, "web-app"))
    eventually(
        "checkpoint duration observed",
        lambda: operator.metric("architect_checkpoint_duration_seconds_count") == before + 1,
    )

    bad = _set_status(operator, "checkpoint", ns, "web-app", {"phase": "Consumed"}, check=False)
    assert bad.returncode != 0
    assert "phase Ready -> Consumed is not allowed" in bad.stderr

    # The consuming pod exists (a Restoring checkpoint whose pod is gone is handed back).
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(PLAIN_POD))
    _set_status(
        operator, "checkpoint", ns, "web-app", {"phase": "Restoring", "consumedBy": "web-h1-bbbbb"}
    )
    eventually(
        "Restoring observed", lambda: "CheckpointRestoring" in _events(operator, ns, "web-app")
    )
    restores = operator.metric("architect_restore_duration_seconds_count")
    _set_status(operator, "checkpoint", ns, "web-app", {"phase": "Consumed"})
    eventually(
        "restore duration observed",
        lambda: operator.metric("architect_restore_duration_seconds_count") == restores + 1,
    )
    # consumed-ttl is 3s in this fixture: the control plane deletes it.
    eventually(
        "consumed checkpoint garbage-collected",
        lambda: (
            kubectl(operator.cluster, "get", "checkpoint/web-app", "-n", ns, check=False).returncode
            != 0
        ),
        timeout_s=30,
    )
    eventually("GC event", lambda: "CheckpointDeleted" in _events(operator, ns, "web-app"))


def test_persistent_checkpoint_lifecycle(operator: Operator) -> None:
    ns = operator.namespace("eng-pckpt")

    def pc(name: str, source: str) -> str:
        return json.dumps(
            {
                "apiVersion": "architect.loopholelabs.io/v1alpha1",
                "kind": "PersistentCheckpoint",
                "metadata": {"name": name},
                "spec": {
                    "sourcePod": source,
                    "storage": {"nodeLocal": True},
                    "allowedNamespaces": ["team-b"],
                },
            }
        )

    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=pc("ghost", "no-such-pod"))
    eventually(
        "Failed: pod not found",
        lambda: _phase(operator, "persistentcheckpoint", ns, "ghost") == "Failed",
    )
    msg = get_json(operator.cluster, "persistentcheckpoint/ghost", "-n", ns)["status"]["message"]
    assert f"source pod {ns}/no-such-pod not found" in msg

    gvisor = {P + "managed-pod": "true"}
    kubectl(
        operator.cluster,
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        stdin=bare_pod("warm-0", gvisor, "runsc-architect", node="no-such-node"),
    )
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=pc("warm", "warm-0"))
    eventually(
        "Checkpointing",
        lambda: _phase(operator, "persistentcheckpoint", ns, "warm") == "Checkpointing",
    )
    obj = get_json(operator.cluster, "persistentcheckpoint/warm", "-n", ns)
    assert obj["metadata"]["labels"][P + "node"] == "no-such-node"
    # The daemon's part: the image is stored.
    image = {"location": "node://no-such-node/pckpt/warm", "digest": DIGEST, "sizeBytes": 10}
    _set_status(operator, "persistentcheckpoint", ns, "warm", {"phase": "Ready", "image": image})
    eventually("Ready event", lambda: "PersistentReady" in _events(operator, ns, "warm"))
    bad = _set_status(
        operator, "persistentcheckpoint", ns, "warm", {"phase": "Checkpointing"}, check=False
    )
    assert bad.returncode != 0 and "Ready is final" in bad.stderr

    # A pod of a namespace that is not allowed is admitted, and told why it starts fresh.
    other = operator.namespace("eng-other")
    start = {P + "managed-pod": "true", P + "start-from-persistent-checkpoint": f"{ns}/warm"}
    proc = kubectl(
        operator.cluster,
        "apply",
        "-n",
        other,
        "-f",
        "-",
        stdin=bare_pod("late", start, "runsc-architect"),
    )
    assert f"does not list namespace {other} in allowedNamespaces" in proc.stderr
