"""A bare Pod without labels: admission labels it, its policies select it by that
label and are owned by it (pure: dicts and the in-memory API stand-in)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from architect.engine.admission import handlers as admission
from architect.engine.admission.pods import SidecarConfig, admit_pod, pod_label, validate_workload
from architect.engine.admission.workloads import AdmissionDenied, desired_policies
from architect.policy.annotations import POD_LABEL
from tests.engine.fakes import FakeKube

P = "architect.loopholelabs.io/"
CFG = SidecarConfig(image="example/architect:test")
ANN = {P + "managed-containers": '["app"]', P + "network-monitor": '{"app":"packets"}'}


def bare(name: str | None = "solo", generate: str | None = None, **meta: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"namespace": "ns", "annotations": dict(ANN), **meta}
    if name is not None:
        m["name"] = name
    if generate is not None:
        m["generateName"] = generate
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": m,
        "spec": {
            "runtimeClassName": "runc-architect",
            "containers": [{"name": "app", "image": "app:1"}],
        },
    }


def test_admission_labels_a_bare_pod_by_its_name() -> None:
    out = admit_pod(bare(), CFG)
    assert out["metadata"]["labels"] == {POD_LABEL: "solo"}
    assert admit_pod(out, CFG) == out  # a reinvoked webhook changes nothing


def test_generate_name_pods_get_distinct_labels() -> None:
    tokens = iter(["aaaaaaaaaa", "bbbbbbbbbb"])
    one = admit_pod(bare(None, "web-"), CFG, lambda: next(tokens))
    two = admit_pod(bare(None, "web-"), CFG, lambda: next(tokens))
    assert one["metadata"]["labels"] == {POD_LABEL: "web-aaaaaaaaaa"}
    assert two["metadata"]["labels"] == {POD_LABEL: "web-bbbbbbbbbb"}


@pytest.mark.parametrize(
    ("meta", "label"),
    [
        ({"labels": {"app": "x"}}, None),  # it has labels: they select it
        ({"ownerReferences": [{"kind": "ReplicaSet", "name": "r", "uid": "u",
                               "controller": True}]}, None),  # its workload owns the policies
        ({"ownerReferences": [{"kind": "MyThing", "name": "r", "uid": "u",
                               "controller": True}]}, "solo"),  # not a workload kind
    ],
)
def test_who_gets_the_pod_label(meta: dict[str, Any], label: str | None) -> None:
    assert pod_label(bare(**meta)) == label


def test_policies_select_the_admitted_pod_and_are_owned_by_it() -> None:
    stored = admit_pod(bare(), CFG)
    stored["metadata"]["uid"] = "p1"
    policies = validate_workload(stored)
    desired = desired_policies(stored, policies)
    assert {d["kind"] for d in desired} == {"HibernationPolicy", "MigrationPolicy"}
    for d in desired:
        assert d["spec"]["selector"]["matchLabels"] == {POD_LABEL: "solo"}
        assert d["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Pod", "name": "solo", "uid": "p1",
             "controller": True, "blockOwnerDeletion": False}
        ]


def test_a_stored_pod_without_labels_is_refused_with_the_label_to_add() -> None:
    # Annotated after creation (the mutating webhook never labelled it).
    pod = bare(uid="p1")
    with pytest.raises(AdmissionDenied) as info:
        validate_workload(pod)
    assert f"kubectl label pod solo {POD_LABEL}=solo" in str(info.value)


async def test_review_of_the_admitted_pod_records_its_policies() -> None:
    kube = FakeKube()
    kube.uids[("Pod", "ns", "solo")] = "p1"
    stored = admit_pod(bare(), CFG)
    stored["metadata"]["uid"] = "p1"
    review = await admission.review_workload(copy.deepcopy(stored), dryrun=False, kube=kube)
    assert await admission.record_policies(stored, review, kube=kube, attempts=2, every_s=0)
    hp = kube.objects[("hibernationpolicies", "ns", "solo")]
    assert hp["spec"]["selector"]["matchLabels"] == {POD_LABEL: "solo"}
    assert hp["metadata"]["ownerReferences"][0]["uid"] == "p1"
