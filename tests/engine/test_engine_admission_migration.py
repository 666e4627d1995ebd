"""Admission tells the shim which containers a MigrationPolicy object selects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from architect.engine.admission.pods import SidecarConfig, admit_pod, migration_containers
from architect.engine.admission.policycache import MigrationPolicyCache
from architect.policy.annotations import MIGRATION_CONTAINERS, PREFIX, WRITTEN_BY_ARCHITECT
from architect.policy.compiler import compile_workload
from architect.runtime.shim import plan

CFG = SidecarConfig(image="example/architect:test")


def policy(name: str = "move", namespace: str = "shop", containers: tuple[str, ...] = ("app",),
           match: dict[str, str] | None = None, runtime: str = "runc") -> dict[str, Any]:
    return {
        "apiVersion": "architect.loopholelabs.io/v1alpha1",
        "kind": "MigrationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": match if match is not None else {"app": "web"}},
            "runtime": runtime,
            "containers": [{"name": c} for c in containers],
        },
    }


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        namespace: str = "shop", runtime_class: str = "runc-architect") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-5d9c7b7f6-",
            "namespace": namespace,
            "labels": labels if labels is not None else {"app": "web",
                                                         "pod-template-hash": "5d9c7b7f6"},
            "annotations": annotations or {},
        },
        "spec": {
            "runtimeClassName": runtime_class,
            "containers": [{"name": "log", "image": "log:1"}, {"name": "app", "image": "app:1"}],
        },
    }


def cache(*objs: dict[str, Any]) -> MigrationPolicyCache:
    c = MigrationPolicyCache()
    assert c.replace_all(objs) == []
    return c


NONE = {"autoScaleupAfterMigration": False, "migrateEmptyDir": False,
        "rewriteListenerAddresses": False, "rewriteEstablishedAddresses": False}


def listed(out: dict[str, Any]) -> dict[str, dict[str, bool]]:
    raw = out["metadata"]["annotations"].get(MIGRATION_CONTAINERS)
    return json.loads(raw) if raw else {}


def test_a_pod_a_migration_policy_selects_is_annotated_with_its_containers() -> None:
    more = policy("more", containers=("log", "gone"))
    more["spec"]["containers"][0].update(migrateEmptyDir=True, autoScaleupAfterMigration=True)
    out = admit_pod(pod(), CFG, migration=cache(policy(), more).policies())
    # Pod order, containers the pod does not have left out, each with its policy's choices.
    assert list(listed(out)) == ["log", "app"]
    assert listed(out) == {"log": {**NONE, "migrateEmptyDir": True,
                                   "autoScaleupAfterMigration": True}, "app": NONE}
    assert listed(admit_pod(out, CFG, migration=cache(policy()).policies())) == {
        "app": NONE}  # reinvoked: computed again


def test_the_governing_policy_gives_the_choices() -> None:
    # The evaluator's precedence: priority, then compiled from annotations, then name.
    low = policy("a-low")
    high = policy("z-high")
    high["spec"]["priority"] = 5
    high["spec"]["containers"][0]["migrateEmptyDir"] = True
    assert listed(admit_pod(pod(), CFG, migration=cache(low, high).policies()))["app"][
        "migrateEmptyDir"]
    compiled = policy("z-compiled")
    compiled["metadata"]["labels"] = {PREFIX + "compiled-from": "annotations"}
    compiled["spec"]["containers"][0]["rewriteListenerAddresses"] = True
    by_name = policy("b-other")
    assert listed(admit_pod(pod(), CFG, migration=cache(by_name, compiled).policies()))[
        "app"]["rewriteListenerAddresses"]
    named = policy("a-first")
    named["spec"]["containers"][0]["autoScaleupAfterMigration"] = True
    assert listed(admit_pod(pod(), CFG, migration=cache(by_name, named).policies()))[
        "app"]["autoScaleupAfterMigration"]


def test_policies_of_other_namespaces_runtimes_or_labels_select_nothing() -> None:
    others = cache(policy(namespace="default"), policy("sc", runtime="runsc"),
                   policy("lbl", match={"app": "db"}), policy("empty", match={}))
    assert migration_containers(pod(), others.policies()) == {}
    assert MIGRATION_CONTAINERS not in admit_pod(pod(), CFG, migration=others.policies())[
        "metadata"]["annotations"]
    # A runsc pod moves as one unit: no per-container entry.
    assert migration_containers(pod(runtime_class="runsc-architect"),
                                cache(policy(runtime="runsc")).policies()) == {}


def test_without_a_template_hash_nothing_is_listed() -> None:
    # A bare pod has no replacement: nothing would ever come to its Create.
    out = admit_pod(pod(labels={"app": "web"}), CFG, migration=cache(policy()).policies())
    assert MIGRATION_CONTAINERS not in out["metadata"]["annotations"]


def test_a_value_a_user_wrote_is_replaced_and_not_compiled() -> None:
    forged = {MIGRATION_CONTAINERS: json.dumps({"log": NONE})}
    out = admit_pod(pod(annotations=forged), CFG, migration=())
    assert MIGRATION_CONTAINERS not in out["metadata"]["annotations"]
    out = admit_pod(pod(annotations=forged), CFG, migration=cache(policy()).policies())
    assert listed(out) == {"app": NONE}
    assert MIGRATION_CONTAINERS in WRITTEN_BY_ARCHITECT
    assert compile_workload(pod(annotations=forged)) == []  # not a user key: passed over


def test_the_shim_expects_a_migration_for_a_listed_container() -> None:
    out = admit_pod(pod(), CFG, migration=cache(policy()).policies())
    ann = {**out["metadata"]["annotations"], plan.CRI_CONTAINER_NAME: "app"}
    assert plan.migration_expected(ann)
    assert not plan.migration_expected({**ann, plan.CRI_CONTAINER_NAME: "log"})
    # Before: only managed-containers made a container expect one.
    assert not plan.migration_expected({k: v for k, v in ann.items()
                                        if k != MIGRATION_CONTAINERS})
    assert plan.migration_expected({plan.ANN_TEMPLATE_HASH: "h", plan.CRI_CONTAINER_NAME: "app",
                                    PREFIX + "managed-containers": '["app"]'})


def test_the_shim_does_what_the_policy_object_says() -> None:
    mp = policy()
    mp["spec"]["containers"][0].update(migrateEmptyDir=True, rewriteEstablishedAddresses=True)
    ann = admit_pod(pod(), CFG, migration=cache(mp).policies())["metadata"]["annotations"]
    assert plan.migration_choices(ann, "app") == plan.MigrationChoices(
        empty_dirs=True, wake=False, rewrite_listeners=False, rewrite_established=True)
    # The object's entry wins over the per-container annotations (admission found
    # the governing policy); a container it does not list reads the annotations.
    both = {**ann, PREFIX + "postmigration-autoscaleup-containers": '["app", "log"]'}
    assert not plan.migration_choices(both, "app").wake
    assert plan.migration_choices(both, "log").wake
    bad = plan.migration_choices({MIGRATION_CONTAINERS: '["app"]'}, "app")
    assert bad.problems and MIGRATION_CONTAINERS in bad.problems[0] and not bad.empty_dirs
    with pytest.raises(plan.PlanError, match="migration-containers"):
        plan.migration_expected({plan.ANN_TEMPLATE_HASH: "h", plan.CRI_CONTAINER_NAME: "app",
                                 MIGRATION_CONTAINERS: "{"})


def test_the_cache_follows_puts_and_removes_and_leaves_out_invalid_objects() -> None:
    c = cache(policy())
    assert c.put(policy("two")) is None and len(c) == 2
    c.put({**policy(), "spec": {**policy()["spec"], "containers": [{"name": "log"}]}})
    assert sorted(ct.name for p in c.policies() for ct in p.spec.containers) == ["app", "log"]
    c.remove("shop", "two")
    assert [p.metadata.name for p in c.policies()] == ["move"]
    bad = policy("move")
    bad["spec"]["runtime"] = "kata"
    note = c.put(bad)
    assert note is not None and "move" in note and "runtime" in note
    assert len(c) == 0  # the invalid version replaced the valid one: it no longer selects
