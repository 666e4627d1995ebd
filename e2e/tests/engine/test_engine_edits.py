"""Architect annotations edited after creation, against the real API server:
on a running pod (validated, a bare pod's policies recompiled) and on a
workload's template (an invalid edit refused at apply)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.tests.cluster.kube import eventually, get_json, kubectl
from e2e.tests.engine.harness import Operator
from e2e.tests.engine.test_engine_operator import GOOD, P, deployment, policies

pytestmark = pytest.mark.cluster


def held_pod(name: str, annotations: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
            "spec": {
                "runtimeClassName": "runc-architect",
                # Never scheduled: the node tier may be up, and nothing here should run.
                "schedulingGates": [{"name": "architect.loopholelabs.io/e2e-hold"}],
                "containers": [
                    {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}
                ],
            },
        }
    )


def _scaledown(op: Operator, ns: str, name: str) -> Any:
    hp = get_json(op.cluster, f"hibernationpolicy/{name}", "-n", ns)
    return hp["spec"]["containers"][0]["scaledownAfter"]


def _annotate(op: Operator, ns: str, pod: str, key: str, value: str) -> Any:
    return kubectl(
        op.cluster,
        "annotate",
        f"pod/{pod}",
        "-n",
        ns,
        f"{key}={value}",
        "--overwrite",
        check=False,
    )


def test_pod_annotation_edits_are_validated_and_recompiled(operator: Operator) -> None:
    operator.quiesce()  # asserts on operator-wide counters below
    ns = operator.namespace("eng-edit")
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=held_pod("solo", GOOD))
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    assert _scaledown(operator, ns, "solo") == "30s"

    # A valid edit: the compiled policy follows.
    ok = _annotate(operator, ns, "solo", P + "scaledown-durations", '{"app":"5m"}')
    assert ok.returncode == 0, ok.stderr
    eventually("policy recompiled", lambda: _scaledown(operator, ns, "solo") == "5m")

    # An invalid edit is refused with the compiler's message; nothing changes.
    bad = _annotate(operator, ns, "solo", P + "managed-containers", '["nope"]')
    assert bad.returncode != 0
    assert f"Pod {ns}/solo: invalid Architect annotations" in bad.stderr
    assert P + "managed-containers: value 'nope': not a container of the pod" in bad.stderr
    pod = get_json(operator.cluster, "pod/solo", "-n", ns)
    assert pod["metadata"]["annotations"][P + "managed-containers"] == '["app"]'
    typo = _annotate(operator, ns, "solo", P + "scaledown-duration", '{"app":"1m"}')
    assert typo.returncode != 0 and P + "scaledown-duration" in typo.stderr

    # The health-check sidecar is fixed at creation: its mapping cannot change.
    hc = json.dumps({"mappings": [{"containerName": "app", "appPort": 8080, "shadowPort": 9080}]})
    refused = _annotate(operator, ns, "solo", P + "health-check-proxy", hc)
    assert refused.returncode != 0
    assert "health-check-proxy cannot change on an existing pod" in refused.stderr

    # The daemon's status annotation, and other annotations, never reach the webhook.
    before = operator.metric("architect_admission_reviews_total")
    assert _annotate(operator, ns, "solo", P + "status", '{"app":"RUNNING"}').returncode == 0
    assert _annotate(operator, ns, "solo", "example.com/note", "hello").returncode == 0
    assert operator.metric("architect_admission_reviews_total") == before

    # Removing the Architect annotations removes the compiled policies.
    proc = kubectl(
        operator.cluster,
        "annotate",
        "pod/solo",
        "-n",
        ns,
        *(f"{k}-" for k in GOOD),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    eventually("policies deleted", lambda: policies(operator, ns) == [])


def test_invalid_template_edit_is_refused_at_apply(operator: Operator) -> None:
    ns = operator.namespace("eng-edit-tpl")
    kubectl(operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("web", GOOD))
    eventually("policies recorded", lambda: len(policies(operator, ns)) == 2)
    bad = {**GOOD, P + "scaledown-durations": '{"app":"soon"}'}
    proc = kubectl(
        operator.cluster, "apply", "-n", ns, "-f", "-", stdin=deployment("web", bad), check=False
    )
    assert proc.returncode != 0
    assert f"Deployment {ns}/web: invalid Architect annotations" in proc.stderr
    assert P + "scaledown-durations" in proc.stderr
    dep = get_json(operator.cluster, "deployment/web", "-n", ns)
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann[P + "scaledown-durations"] == GOOD[P + "scaledown-durations"]
    assert _scaledown(operator, ns, "web") == "30s"
