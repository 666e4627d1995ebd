"""Admission decisions on plain dicts: compile/deny, sidecars, probes, policy sync."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from architect.engine.admission.pods import (
    STATUS_VOLUME,
    SidecarConfig,
    admit_pod,
    validate_workload,
)
from architect.engine.admission.webhooks import (
    ClientConfig,
    annotations_changed_expression,
    build_configurations,
)
from architect.engine.admission.workloads import (
    AdmissionDenied,
    desired_policies,
    owns_its_policies,
    plan_sync,
)
from architect.policy.annotations import PREFIX, TEMPLATE_HASH_ANNOTATION, TEMPLATE_HASH_LABEL

CFG = SidecarConfig(image="example/architect:test")


def pod(annotations: dict[str, str] | None = None, **spec_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": "5d9c7b7f6"},
            "annotations": annotations or {},
        },
        "spec": {
            "runtimeClassName": "runc-architect",
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                    "startupProbe": {"httpGet": {"path": "/", "port": 7070}},
                },
                {"name": "log", "image": "log:1"},
            ],
            **spec_extra,
        },
    }


HEALTH = {
    PREFIX + "managed-containers": '["app"]',
    PREFIX + "network-monitor": '{"app": "packets"}',
    PREFIX + "health-check-proxy": json.dumps(
        {"mappings": [{"containerName": "app", "appPort": 8080, "shadowPort": 9080}]}
    ),
}


def deployment(annotations: dict[str, str], uid: str | None = "uid-1") -> dict[str, Any]:
    p = pod(annotations)
    meta: dict[str, Any] = {"name": "web", "namespace": "default"}
    if uid:
        meta["uid"] = uid
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": p["spec"],
            },
        },
    }


def test_sidecar_injected_and_probes_rewritten() -> None:
    original = pod(HEALTH)
    before = copy.deepcopy(original)
    out = admit_pod(original, CFG)
    assert original == before, "the input must not be modified"
    (sidecar,) = out["spec"]["initContainers"]
    assert sidecar["name"] == "architect-health-9080"
    assert sidecar["image"] == "example/architect:test"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == [
        "architect",
        "health-proxy",
        "--map",
        "app:8080:9080",
        "--status-file",
        "/run/architect/status.json",
    ]
    # What admission injects is what the proxy accepts (the runtime's own parser).
    from architect.runtime.network.healthproxy import parse_args as proxy_args

    cfg = proxy_args(sidecar["command"][2:])
    assert [(m.container, m.app_port, m.shadow_port) for m in cfg.mappings] == [
        ("app", 8080, 9080)]
    assert cfg.status_file == "/run/architect/status.json"
    assert sidecar["volumeMounts"][0]["mountPath"] == "/run/architect"
    assert any(v["name"] == STATUS_VOLUME and "emptyDir" in v for v in out["spec"]["volumes"])
    app = out["spec"]["containers"][0]
    assert app["livenessProbe"]["httpGet"]["port"] == 9080  # named port resolved
    assert app["readinessProbe"]["tcpSocket"]["port"] == 9080
    assert app["startupProbe"]["httpGet"]["port"] == 7070  # not a mapped port
    assert out["metadata"]["labels"][TEMPLATE_HASH_LABEL] == "5d9c7b7f6"
    # The shim sees annotations only (containerd's pod_annotations), and keys handovers by it.
    assert out["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == "5d9c7b7f6"


def test_mutation_is_idempotent() -> None:
    once = admit_pod(pod(HEALTH), CFG)
    assert admit_pod(once, CFG) == once


def test_pod_without_proxy_gets_only_the_label() -> None:
    ann = {PREFIX + "managed-containers": '["app"]'}
    out = admit_pod(pod(ann), CFG)
    assert "initContainers" not in out["spec"]
    assert out["spec"]["containers"] == pod(ann)["spec"]["containers"]


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({PREFIX + "managed-containers": '["nope"]'}, "not a container of the pod"),
        ({PREFIX + "managed-containers": "app"}, "not valid JSON"),
        ({PREFIX + "scaledown-durations": '{"app":"30s"}'}, "requires the annotation"),
        (
            {
                PREFIX + "managed-containers": '["app"]',
                PREFIX + "scaledown-durations": '{"app":"soon"}',
            },
            "scaledown-durations: value 'soon'",
        ),
    ],
)
def test_bad_annotations_denied_with_compiler_message(
    annotations: dict[str, str], message: str
) -> None:
    with pytest.raises(AdmissionDenied) as err:
        admit_pod(pod(annotations), CFG)
    text = str(err.value)
    assert text.startswith("Pod default/web-abc: invalid Architect annotations:")
    assert message in text


def test_shadow_port_clash_with_a_container_port_is_denied() -> None:
    ann = dict(HEALTH)
    ann[PREFIX + "health-check-proxy"] = json.dumps(
        {"mappings": [{"containerName": "app", "appPort": 9090, "shadowPort": 8080}]}
    )
    with pytest.raises(
        AdmissionDenied, match="shadowPort 8080 of container 'app' is already a port"
    ):
        admit_pod(pod(ann), CFG)


def test_workload_validation_and_ownership() -> None:
    d = deployment(HEALTH)
    policies = validate_workload(d)
    assert {p.kind for p in policies} == {"HibernationPolicy", "MigrationPolicy"}
    desired = desired_policies(d, policies)
    for obj in desired:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": False,
        }
        assert obj["metadata"]["namespace"] == "default"
    with pytest.raises(ValueError, match="no uid"):
        desired_policies(deployment(HEALTH, uid=None), policies)


@pytest.mark.parametrize(
    ("owner_kind", "owns"),
    [
        (None, True),
        ("ReplicaSet", False),
        ("Deployment", False),
        ("CronJob", False),
        ("Rollout", True),
    ],
)
def test_who_owns_the_policies(owner_kind: str | None, owns: bool) -> None:
    obj = pod(HEALTH)
    if owner_kind:
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "x/v1", "kind": owner_kind, "name": "o", "uid": "u", "controller": True}
        ]
    assert owns_its_policies(obj) is owns


def _existing(desired: list[dict[str, Any]], **changes: Any) -> list[dict[str, Any]]:
    out = copy.deepcopy(desired)
    for o in out:
        o["metadata"]["resourceVersion"] = "7"
        o.update(changes)
    return out


def test_plan_sync_create_noop_replace_delete() -> None:
    d = deployment(HEALTH)
    desired = desired_policies(d, validate_workload(d))
    assert [op.verb for op in plan_sync(d, desired, [])] == ["create", "create"]
    assert plan_sync(d, desired, _existing(desired)) == []
    changed = _existing(desired)
    changed[0]["spec"] = {**changed[0]["spec"], "priority": 3}
    (op,) = plan_sync(d, desired, changed)
    assert (op.verb, op.resource_version) == ("replace", "7")
    ops = plan_sync(d, [], _existing(desired))
    assert sorted(op.verb for op in ops) == ["delete", "delete"]


def test_plan_sync_refuses_a_name_owned_by_someone_else() -> None:
    d = deployment(HEALTH)
    desired = desired_policies(d, validate_workload(d))
    theirs = _existing(desired)
    for o in theirs:
        o["metadata"]["ownerReferences"] = [{"uid": "other"}]
    with pytest.raises(AdmissionDenied, match="already exists"):
        plan_sync(d, desired, theirs)


def test_plan_sync_never_deletes_hand_written_policies() -> None:
    d = deployment(HEALTH)
    desired = desired_policies(d, validate_workload(d))
    hand = _existing(desired)
    for o in hand:
        o["metadata"]["name"] = "hand"
        o["metadata"]["labels"] = {}
    assert [op.verb for op in plan_sync(d, desired, hand)] == ["create", "create"]


def test_webhook_configurations_are_scoped() -> None:
    mutating, validating = build_configurations(ClientConfig("Q0E=", url="https://127.0.0.1:9443"))
    hooks = mutating["webhooks"] + validating["webhooks"]
    names = [h["name"] for h in hooks]
    assert len(set(names)) == len(names)
    for h in hooks:
        assert h["clientConfig"]["url"].startswith("https://127.0.0.1:9443/")
        assert "kube-system" in h["namespaceSelector"]["matchExpressions"][0]["values"]
        if h["name"].startswith("pod-updates."):
            (cond,) = h["matchConditions"]
            assert cond["expression"] == annotations_changed_expression()
            assert h["failurePolicy"] == "Fail"
        elif "checkpoint" not in h["name"]:
            (cond,) = h["matchConditions"]
            assert "runc-architect" in cond["expression"]
            assert "architect.loopholelabs.io/" in cond["expression"]
            assert h["failurePolicy"] == "Fail"
    cron = next(h for h in hooks if h["name"].startswith("cronjobs."))
    assert "object.spec.jobTemplate.spec.template" in cron["matchConditions"][0]["expression"]
    svc = ClientConfig("Q0E=", service_namespace="architect-system", service_name="architect")
    m2, _ = build_configurations(svc)
    assert m2["webhooks"][0]["clientConfig"]["service"]["path"] == "/mutate-pod"


CREATE = {"create": "no old object"}


@pytest.mark.parametrize(
    ("old", "new", "sent"),
    [
        (CREATE, {PREFIX + "managed-containers": "[]"}, False),  # the create webhooks' job
        ({PREFIX + "managed-containers": '["a"]'}, {PREFIX + "managed-containers": '["a"]'}, False),
        ({PREFIX + "managed-containers": '["a"]'}, {PREFIX + "managed-containers": '["b"]'}, True),
        ({}, {PREFIX + "scaledown-durations": "{}"}, True),
        (None, {PREFIX + "scaledown-durations": "{}"}, True),  # no annotations before
        ({PREFIX + "scaledown-durations": "{}"}, {}, True),
        ({PREFIX + "scaledown-durations": "{}"}, None, True),  # all annotations gone
        ({}, {PREFIX + "typo": "x"}, True),  # unknown keys are the compiler's to refuse
        # Architect's own status annotation, and anything not Architect's: never sent.
        ({PREFIX + "status": "a"}, {PREFIX + "status": "b"}, False),
        ({"other": "a"}, {"other": "b", PREFIX + "status": "c"}, False),
        (None, None, False),
    ],
)
def test_only_edits_of_architect_annotations_reach_the_pod_update_webhook(
    old: dict[str, str] | None, new: dict[str, str] | None, sent: bool
) -> None:
    """The CEL condition, evaluated as the API server would (celpy)."""
    import celpy
    from celpy.adapter import json_to_cel

    def obj(ann: dict[str, str] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "p"}
        if ann is not None:
            meta["annotations"] = ann
        return {"metadata": meta}

    env = celpy.Environment()
    program = env.program(env.compile(annotations_changed_expression()))
    activation = {
        "request": json_to_cel({"operation": "CREATE" if old is CREATE else "UPDATE"}),
        "object": json_to_cel(obj(new)),
        "oldObject": json_to_cel(None if old is CREATE else obj(old)),
    }
    assert bool(program.evaluate(activation)) is sent
