"""Table-driven tests of the annotation compiler: every key, default and rule."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from architect.policy import annotations as a
from architect.policy.compiler import (
    CompileError,
    compile_notes,
    compile_workload,
    generated_label_value,
    pod_label_value,
    pod_template,
)
from architect.policy.validation import validate_object

P = a.PREFIX


def pod(
    ann: dict[str, str],
    containers: tuple[str, ...] = ("app", "side"),
    runtime: str | None = "runc-architect",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "x"} for c in containers]}
    if runtime:
        spec["runtimeClassName"] = runtime
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {"app": "p"} if labels is None else labels,
            "annotations": ann,
        },
        "spec": spec,
    }


def compiled(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {p.kind: p.to_dict() for p in compile_workload(obj)}
    for o in out.values():  # what the compiler emits is always valid for the API server
        assert validate_object(o) == [], o
    return out


def problems(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(CompileError) as info:
        compile_workload(obj)
    return [str(p) for p in info.value.problems]


MANAGED = {P + "managed-containers": '["app"]'}


def hp_container(out: dict[str, dict[str, Any]], name: str = "app") -> dict[str, Any]:
    return next(c for c in out["HibernationPolicy"]["spec"]["containers"] if c["name"] == name)


def mp_container(out: dict[str, dict[str, Any]], name: str = "app") -> dict[str, Any]:
    return next(c for c in out["MigrationPolicy"]["spec"]["containers"] if c["name"] == name)


# --- what each key compiles to (and its default) ------------------------------

CASES: list[tuple[str, dict[str, str], str, str, Any]] = [
    # (case, extra annotations, policy, field, expected value for container "app")
    ("scaledown default", {}, "hp", "scaledownAfter", "60s"),
    ("scaledown set", {P + "scaledown-durations": '{"app":"30s"}'}, "hp", "scaledownAfter", "30s"),
    ("network default", {}, "hp", "wakeOn", {"network": "none", "exec": True}),
    (
        "network packets",
        {P + "network-monitor": '{"app":"packets"}'},
        "hp",
        "wakeOn",
        {"network": "packets", "exec": True},
    ),
    (
        "network connections",
        {P + "network-monitor": '{"app":"connections"}'},
        "hp",
        "wakeOn",
        {"network": "connections", "exec": True},
    ),
    (
        "health proxy",
        {
            P + "network-monitor": '{"app":"packets"}',
            P
            + "health-check-proxy": '{"mappings":[{"containerName":"app","appPort":8080,"shadowPort":9080}]}',
        },
        "hp",
        "healthCheckProxy",
        [{"appPort": 8080, "shadowPort": 9080}],
    ),
    (
        "shadow ports",
        {
            P + "network-monitor": '{"app":"packets"}',
            P
            + "shadow-ports": '{"mappings":[{"containerName":"app","appPort":9100,"shadowPort":9101}]}',
        },
        "hp",
        "shadowPorts",
        [{"appPort": 9100, "shadowPort": 9101}],
    ),
    ("health proxy default", {}, "hp", "healthCheckProxy", []),
    ("autoscaledown default", {}, "hp", "autoScaledown", True),
    (
        "autoscaledown disabled",
        {P + "disable-autoscaledown-containers": '["app"]'},
        "hp",
        "autoScaledown",
        False,
    ),
    ("scaleup timeout default", {}, "hp", "scaleupTimeout", "30s"),
    (
        "scaleup timeout set",
        {P + "scaleup-timeout-containers": '{"app": "60s"}'},
        "hp",
        "scaleupTimeout",
        "60s",
    ),
    ("postmigration default", {}, "mp", "autoScaleupAfterMigration", False),
    (
        "postmigration set",
        {P + "postmigration-autoscaleup-containers": '["app"]'},
        "mp",
        "autoScaleupAfterMigration",
        True,
    ),
    ("emptydir default", {}, "mp", "migrateEmptyDir", False),
    ("emptydir set", {P + "migrate-emptydir-containers": '["app"]'}, "mp", "migrateEmptyDir", True),
    (
        "listener set",
        {P + "rewrite-listener-addresses-containers": '["app"]'},
        "mp",
        "rewriteListenerAddresses",
        True,
    ),
    (
        "established set",
        {P + "rewrite-established-addresses-containers": '["app"]'},
        "mp",
        "rewriteEstablishedAddresses",
        True,
    ),
    ("established default", {}, "mp", "rewriteEstablishedAddresses", False),
]


@pytest.mark.parametrize(
    ("extra", "policy", "field", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_key_compiles(extra: dict[str, str], policy: str, field: str, expected: Any) -> None:
    out = compiled(pod({**MANAGED, **extra}))
    container = hp_container(out) if policy == "hp" else mp_container(out)
    assert container[field] == expected


def test_every_key_is_covered_by_a_case() -> None:
    used = {k for c in CASES for k in c[1]} | {
        a.MANAGED_CONTAINERS,
        a.MANAGED_POD,
        a.START_FROM_PERSISTENT,
    }
    assert used == {x.key for x in a.ANNOTATIONS}


def test_seed_shape() -> None:
    out = compiled(pod({**MANAGED, P + "scaledown-durations": '{"app":"30s"}'}))
    hp, mp = out["HibernationPolicy"], out["MigrationPolicy"]
    for o in (hp, mp):
        assert o["apiVersion"] == "architect.loopholelabs.io/v1alpha1"
        assert o["metadata"]["name"] == "p"
        assert o["metadata"]["namespace"] == "ns"
        assert o["metadata"]["labels"] == {a.COMPILED_LABEL: "annotations"}
        assert o["spec"]["selector"]["matchLabels"] == {"app": "p"}
        assert o["spec"]["runtime"] == "runc"
    assert [c["name"] for c in hp["spec"]["containers"]] == ["app"]  # "side" is not managed
    assert [c["name"] for c in mp["spec"]["containers"]] == ["app"]


def test_no_annotations_compiles_to_nothing() -> None:
    assert compile_workload(pod({})) == []
    assert (
        compile_workload(pod({"other.io/x": "1", a.STATUS_ANNOTATION: '{"app":"RUNNING"}'})) == []
    )
    # Admission writes the template hash as an annotation; it is not a user's key.
    assert compile_workload(pod({a.TEMPLATE_HASH_ANNOTATION: "5d9c7b7f6"})) == []
    assert (
        compile_workload({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}) == []
    )


def test_runsc_managed_pod_and_start_from() -> None:
    out = compiled(
        pod(
            {P + "managed-pod": "true", P + "start-from-persistent-checkpoint": "team-a/warm"},
            runtime="runsc-architect",
        )
    )
    assert out["HibernationPolicy"]["spec"] == {
        "selector": {"matchLabels": {"app": "p"}, "matchExpressions": []},
        "runtime": "runsc",
        "priority": 0,
        "managedPod": True,
        "containers": [],
    }
    assert out["MigrationPolicy"]["spec"]["startFrom"] == {
        "persistentCheckpoint": {"namespace": "team-a", "name": "warm"}
    }


def test_start_from_bare_name_means_the_pods_namespace() -> None:
    out = compiled(
        pod(
            {P + "managed-pod": "true", P + "start-from-persistent-checkpoint": "warm"},
            runtime="runsc-architect",
        )
    )
    assert out["MigrationPolicy"]["spec"]["startFrom"] == {"persistentCheckpoint": {"name": "warm"}}


def test_managed_pod_false_compiles_to_nothing() -> None:
    assert compile_workload(pod({P + "managed-pod": "false"}, runtime="runsc-architect")) == []


# --- workload kinds -------------------------------------------------------------

TEMPLATE = {
    "metadata": {"labels": {"app": "w"}, "annotations": MANAGED},
    "spec": {"runtimeClassName": "runc-architect", "containers": [{"name": "app"}]},
}


@pytest.mark.parametrize(
    ("api", "kind", "spec"),
    [
        ("apps/v1", "Deployment", {"template": TEMPLATE}),
        ("apps/v1", "StatefulSet", {"template": TEMPLATE}),
        ("apps/v1", "ReplicaSet", {"template": TEMPLATE}),
        ("apps/v1", "DaemonSet", {"template": TEMPLATE}),
        ("batch/v1", "Job", {"template": TEMPLATE}),
        (
            "batch/v1",
            "CronJob",
            {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": TEMPLATE}}},
        ),
    ],
)
def test_workload_kinds(api: str, kind: str, spec: dict[str, Any]) -> None:
    obj = {"apiVersion": api, "kind": kind, "metadata": {"name": "w"}, "spec": spec}
    out = compiled(obj)
    assert out["HibernationPolicy"]["metadata"]["name"] == "w"
    assert out["HibernationPolicy"]["metadata"]["annotations"] == {
        a.WORKLOAD_ANNOTATION: f"{kind}/w"
    }
    assert out["HibernationPolicy"]["spec"]["selector"]["matchLabels"] == {"app": "w"}
    assert pod_template(obj)[1]["containers"] == [{"name": "app"}]


def test_workload_template_without_labels_is_refused() -> None:
    tpl = {**TEMPLATE, "metadata": {"annotations": MANAGED}}
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
           "spec": {"template": tpl}}
    assert problems(obj) == [
        "metadata.labels: value '{}': the pod template needs labels: the compiled "
        "policies select its pods by them"
    ]


# --- bare pods without labels ------------------------------------------------------


def test_bare_pod_without_labels_is_selected_by_its_pod_label() -> None:
    out = compiled(pod({**MANAGED, P + "network-monitor": '{"app":"packets"}'}, labels={}))
    for kind in ("HibernationPolicy", "MigrationPolicy"):
        assert out[kind]["metadata"]["name"] == "p"
        assert out[kind]["spec"]["selector"]["matchLabels"] == {a.POD_LABEL: "p"}
    assert compile_notes(pod(MANAGED, labels={})) == [
        f"the Pod has no labels: admission labels it {a.POD_LABEL}=p and the policies select "
        "it by that label; the policies are owned by the Pod (ownerReference) and deleted "
        "with it"
    ]


def test_labelled_pod_has_no_note_and_keeps_its_selector() -> None:
    obj = pod(MANAGED)
    assert compile_notes(obj) == []
    assert compiled(obj)["HibernationPolicy"]["spec"]["selector"]["matchLabels"] == {"app": "p"}


def test_admitted_bare_pod_compiles_to_the_same_selector() -> None:
    # After the mutating webhook: the pod carries the label, the selector is the same.
    before = compiled(pod(MANAGED, labels={}))
    after = compiled(pod(MANAGED, labels={a.POD_LABEL: "p"}))
    assert before == after


def test_generate_name_pod_compiles_with_a_note() -> None:
    obj = pod(MANAGED, labels={})
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "web-"
    out = compiled(obj)
    assert out["HibernationPolicy"]["spec"]["selector"]["matchLabels"] == {a.POD_LABEL: "web"}
    (note,) = compile_notes(obj)
    assert "generateName 'web-'" in note and "random suffix" in note


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web", "web"),
        ("a.b-c", "a.b-c"),
        ("x" * 63, "x" * 63),
    ],
)
def test_pod_label_value_is_the_name_when_it_fits(name: str, expected: str) -> None:
    assert pod_label_value(name) == expected


@given(st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_pod_label_value_is_always_a_valid_label_value(name: str) -> None:
    value = pod_label_value(name)
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value), value
    if len(name) > 63:  # distinct long names get distinct values (the hash)
        assert pod_label_value(name + "z") != value


def test_generated_label_value() -> None:
    assert generated_label_value("web-", "3fa9c0e1b2") == "web-3fa9c0e1b2"
    assert generated_label_value("", "3fa9c0e1b2") == "3fa9c0e1b2"
    long = generated_label_value("a" * 80 + "-", "3fa9c0e1b2")
    assert len(long) == 63 and long.endswith("-3fa9c0e1b2")


# --- rules: each message names key, value and rule -------------------------------

RULES: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    (
        "unknown key",
        {**MANAGED, P + "managed-container": '["app"]'},
        {},
        f"{P}managed-container: value '[\"app\"]': unknown Architect annotation",
    ),
    (
        "not json",
        {P + "managed-containers": "[app]"},
        {},
        f"{P}managed-containers: value '[app]': not valid JSON",
    ),
    (
        "wrong json type",
        {P + "managed-containers": '{"app": 1}'},
        {},
        f"{P}managed-containers: value '{{\"app\": 1}}': expected JSON list of container names",
    ),
    (
        "empty list",
        {P + "managed-containers": "[]"},
        {},
        f"{P}managed-containers: value '[]': list at least one container",
    ),
    (
        "duplicate",
        {P + "managed-containers": '["app","app"]'},
        {},
        f"{P}managed-containers: value 'app': container listed twice",
    ),
    (
        "no such container",
        {P + "managed-containers": '["db"]'},
        {},
        f"{P}managed-containers: value 'db': not a container of the pod (containers: app, side)",
    ),
    (
        "not managed",
        {**MANAGED, P + "scaledown-durations": '{"side":"30s"}'},
        {},
        f"{P}scaledown-durations: value 'side': not a managed container",
    ),
    (
        "bad duration",
        {**MANAGED, P + "scaledown-durations": '{"app":"30"}'},
        {},
        f"{P}scaledown-durations: value '30': container 'app': is not a duration",
    ),
    (
        "zero duration",
        {**MANAGED, P + "scaledown-durations": '{"app":"0s"}'},
        {},
        f"{P}scaledown-durations: value '0s': container 'app': must be greater than 0",
    ),
    (
        "negative timeout",
        {**MANAGED, P + "scaleup-timeout-containers": '{"app":"-5s"}'},
        {},
        f"{P}scaleup-timeout-containers: value '-5s': container 'app': must be greater than 0",
    ),
    (
        "bad mode",
        {**MANAGED, P + "network-monitor": '{"app":"always"}'},
        {},
        f"{P}network-monitor: value 'always': container 'app': expected packets or connections",
    ),
    (
        "requires managed",
        {P + "network-monitor": '{"app":"packets"}'},
        {},
        f'{P}network-monitor: value \'{{"app":"packets"}}\': requires the annotation {P}managed-containers',
    ),
    (
        "health requires monitor",
        {
            **MANAGED,
            P
            + "health-check-proxy": '{"mappings":[{"containerName":"app","appPort":1,"shadowPort":2}]}',
        },
        {},
        f"requires the annotation {P}network-monitor",
    ),
    (
        "health needs wake for that container",
        {
            P + "managed-containers": '["app","side"]',
            P + "network-monitor": '{"side":"packets"}',
            P
            + "health-check-proxy": '{"mappings":[{"containerName":"app","appPort":1,"shadowPort":2}]}',
        },
        {},
        f"{P}health-check-proxy: value 'app': container has no network wake",
    ),
    (
        "mapping fields",
        {
            **MANAGED,
            P + "network-monitor": '{"app":"packets"}',
            P + "shadow-ports": '{"mappings":[{"containerName":"app","appPort":1}]}',
        },
        {},
        "each mapping needs exactly containerName, appPort and shadowPort",
    ),
    (
        "mapping port range",
        {
            **MANAGED,
            P + "network-monitor": '{"app":"packets"}',
            P
            + "shadow-ports": '{"mappings":[{"containerName":"app","appPort":1,"shadowPort":70000}]}',
        },
        {},
        "appPort and shadowPort must be integers between 1 and 65535",
    ),
    (
        "mapping equal ports",
        {
            **MANAGED,
            P + "network-monitor": '{"app":"packets"}',
            P
            + "shadow-ports": '{"mappings":[{"containerName":"app","appPort":80,"shadowPort":80}]}',
        },
        {},
        "appPort and shadowPort must differ",
    ),
    (
        "mapping shape",
        {
            **MANAGED,
            P + "network-monitor": '{"app":"packets"}',
            P + "shadow-ports": '[{"containerName":"app"}]',
        },
        {},
        'expected JSON object {"mappings"',
    ),
    (
        "runc-only key under runsc",
        {P + "managed-pod": "true", P + "scaleup-timeout-containers": '{"app":"5s"}'},
        {"runtime": "runsc-architect"},
        f'{P}scaleup-timeout-containers: value \'{{"app":"5s"}}\': only for runtimeClassName runc-architect',
    ),
    (
        "managed-containers under runsc",
        {P + "managed-containers": '["app"]'},
        {"runtime": "runsc-architect"},
        f"with runsc-architect use {P}managed-pod",
    ),
    (
        "runsc key under runc",
        {**MANAGED, P + "managed-pod": "true"},
        {},
        f"{P}managed-pod: value 'true': only for runtimeClassName runsc-architect",
    ),
    (
        "managed-pod value",
        {P + "managed-pod": "yes"},
        {"runtime": "runsc-architect"},
        f'{P}managed-pod: value \'yes\': expected "true" or "false"',
    ),
    (
        "bad reference",
        {P + "managed-pod": "true", P + "start-from-persistent-checkpoint": "a/b/c"},
        {"runtime": "runsc-architect"},
        'expected "name" or "namespace/name"',
    ),
    (
        "start-from requires managed-pod",
        {P + "start-from-persistent-checkpoint": "warm"},
        {"runtime": "runsc-architect"},
        f"requires the annotation {P}managed-pod",
    ),
    (
        "start-from with managed-pod false",
        {P + "managed-pod": "false", P + "start-from-persistent-checkpoint": "warm"},
        {"runtime": "runsc-architect"},
        f'requires {P}managed-pod: "true"',
    ),
    (
        "no runtime class",
        MANAGED,
        {"runtime": None},
        "needs runtimeClassName runc-architect or runsc-architect (the pod template has none)",
    ),
    (
        "other runtime class",
        MANAGED,
        {"runtime": "kata"},
        "needs runtimeClassName runc-architect or runsc-architect (the pod template has kata)",
    ),
]


@pytest.mark.parametrize(
    ("ann", "kw", "message"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rule(ann: dict[str, str], kw: dict[str, Any], message: str) -> None:
    found = problems(pod(ann, **kw))
    assert any(message in p for p in found), found


def test_all_problems_reported_together() -> None:
    found = problems(
        pod(
            {
                P + "managed-containers": '["app","db"]',
                P + "scaledown-durations": '{"app":"soon"}',
                P + "network-monitor": '{"app":"sometimes"}',
                P + "bogus": "1",
            }
        )
    )
    assert len(found) == 4
    assert {p.split(":")[0] for p in found} == {
        P + "managed-containers",
        P + "scaledown-durations",
        P + "network-monitor",
        P + "bogus",
    }


def test_problem_format() -> None:
    with pytest.raises(CompileError) as info:
        compile_workload(pod({P + "managed-containers": '["db"]'}))
    (p,) = info.value.problems
    assert (p.key, p.value) == (P + "managed-containers", "db")
    assert str(p) == f"{P}managed-containers: value 'db': {p.rule}"


# --- property: arbitrary strings never crash the compiler ------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
annotation_value = st.one_of(
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.lists(st.sampled_from(["app", "side", "db", ""]), max_size=3).map(json.dumps),
    st.dictionaries(
        st.sampled_from(["app", "side", "x"]),
        st.sampled_from(["30s", "0s", "packets", "connections", "1m", "x"]),
        max_size=2,
    ).map(json.dumps),
)
keys = st.sampled_from([x.key for x in a.ANNOTATIONS] + [P + "unknown", "other/key"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ann=st.dictionaries(keys, annotation_value, max_size=6),
    runtime=st.sampled_from(["runc-architect", "runsc-architect", None, "x"]),
)
def test_compile_raises_only_compile_error(ann: dict[str, str], runtime: str | None) -> None:
    try:
        out = compile_workload(pod(ann, runtime=runtime))
    except CompileError as e:
        assert e.problems, "a CompileError always carries problems"
        for p in e.problems:
            assert p.key and p.rule
        return
    for policy in out:  # whatever compiles is valid for the API server
        assert validate_object(policy.to_dict()) == []


def _runsc_deployment(ann: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gv"},
        "spec": {"template": {
            "metadata": {"labels": {"app": "gv"},
                         "annotations": {"architect.loopholelabs.io/managed-pod": "true", **ann}},
            "spec": {"runtimeClassName": "runsc-architect",
                     "containers": [{"name": "app"}, {"name": "side"}]}}},
    }


def test_runsc_pod_idle_rule_is_opt_in_and_takes_the_longest_duration() -> None:
    from architect.policy.compiler import compile_workload

    hp = compile_workload(_runsc_deployment({}))[0]
    assert hp.spec.pod is None  # the seed: gVisor pods are checkpointed explicitly
    sd = "architect.loopholelabs.io/scaledown-durations"
    hp = compile_workload(_runsc_deployment({sd: '{"app": "20s", "side": "2m"}'}))[0]
    assert hp.spec.pod is not None and hp.spec.pod.scaledown_after == "2m"
    hp = compile_workload(_runsc_deployment({sd: '{"app": "20s"}'}))[0]
    assert hp.spec.pod is not None and hp.spec.pod.scaledown_after == "60s"  # side: default
    off = "architect.loopholelabs.io/disable-autoscaledown-containers"
    hp = compile_workload(_runsc_deployment({off: '["side"]'}))[0]
    assert hp.spec.pod is not None and not hp.spec.pod.auto_scaledown
