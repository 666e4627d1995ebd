"""The handlers' logic with an in-memory stand-in for the API (no cluster)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from architect.engine.admission import handlers as admission
from architect.engine.admission.workloads import AdmissionDenied
from architect.engine.controlplane import handlers as controlplane
from architect.engine.controlplane.phases import OBSERVED_PHASE, GcSettings
from architect.policy.timestamps import fmt_time
from tests.engine.fakes import FakeKube

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
P = "architect.loopholelabs.io/"



def workload(annotations: dict[str, str], owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "ns", "uid": "u1"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "uid": "o1", "controller": True}]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": meta,
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {"runtimeClassName": "runc-architect", "containers": [{"name": "app"}]},
            }
        },
    }


# With a network wake: a managed container without one is warned about.
GOOD = {P + "managed-containers": '["app"]', P + "network-monitor": '{"app":"packets"}'}


async def review_and_record(kube: FakeKube, body: dict[str, Any]) -> bool:
    review = await admission.review_workload(body, dryrun=False, kube=kube)
    assert review.warnings == []
    assert kube.calls == [], "admission itself writes nothing"
    return await admission.record_policies(body, review, kube=kube, attempts=3, every_s=0)


async def test_a_write_that_meets_a_newer_version_is_planned_again() -> None:
    kube = FakeKube()
    kube.uids[("ReplicaSet", "ns", "web")] = "u1"
    kube.conflicts = 2
    assert await review_and_record(kube, workload(GOOD))
    assert kube.calls[:2] == [("conflict",), ("conflict",)]
    assert len(kube.objects) == 2
    kube2 = FakeKube()
    kube2.uids[("ReplicaSet", "ns", "web")] = "u1"
    kube2.conflicts = admission.CONFLICT_RETRIES
    with pytest.raises(RuntimeError, match="kept changing"):
        await review_and_record(kube2, workload(GOOD))
    assert kube2.objects == {}


async def test_review_records_policies_once_the_owner_exists() -> None:
    kube = FakeKube()
    kube.uids[("ReplicaSet", "ns", "web")] = "u1"
    assert await review_and_record(kube, workload(GOOD))
    assert sorted(kube.calls) == [
        ("create", "HibernationPolicy", "web"),
        ("create", "MigrationPolicy", "web"),
    ]
    kube.calls.clear()
    review = await admission.review_workload(workload(GOOD), dryrun=False, kube=kube)
    assert review.ops == []  # nothing changed: no writes


@pytest.mark.parametrize("stored_uid", [None, "someone-else"])
async def test_nothing_recorded_when_the_owner_never_appears(stored_uid: str | None) -> None:
    kube = FakeKube()
    if stored_uid:
        kube.uids[("ReplicaSet", "ns", "web")] = stored_uid
    assert not await review_and_record(kube, workload(GOOD))
    assert kube.calls == []


@pytest.mark.parametrize(("dryrun", "owner"), [(True, None), (False, "Deployment")])
async def test_review_writes_nothing_for_dry_runs_and_owned_objects(
    dryrun: bool, owner: str | None
) -> None:
    kube = FakeKube()
    review = await admission.review_workload(workload(GOOD, owner), dryrun=dryrun, kube=kube)
    assert review.ops == [] and kube.calls == []


async def test_review_denies_bad_annotations_before_any_write() -> None:
    kube = FakeKube()
    with pytest.raises(AdmissionDenied, match="managed-containers: value 'x'"):
        await admission.review_workload(
            workload({P + "managed-containers": '["x"]'}), dryrun=False, kube=kube
        )
    assert kube.calls == []


def running_pod(annotations: dict[str, str], owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "solo",
        "namespace": "ns",
        "uid": "p1",
        "labels": {"app": "solo"},
        "annotations": annotations,
    }
    if owner:
        meta["ownerReferences"] = [
            {"kind": owner, "name": "web-1", "uid": "o1", "controller": True}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"runtimeClassName": "runc-architect", "containers": [{"name": "app"}]},
    }


async def test_pod_edit_of_a_bare_pod_recompiles_its_policies() -> None:
    kube = FakeKube()
    kube.uids[("Pod", "ns", "solo")] = "p1"
    assert await review_and_record(kube, running_pod(GOOD))
    kube.calls.clear()
    edited = {**GOOD, P + "scaledown-durations": '{"app":"5m"}'}
    review = await admission.review_pod_update(
        running_pod(edited), running_pod(GOOD), dryrun=False, kube=kube
    )
    assert [(op.verb, op.kind) for op in review.ops] == [("replace", "HibernationPolicy")]
    assert review.ops[0].body is not None
    assert review.ops[0].body["spec"]["containers"][0]["scaledownAfter"] == "5m"


async def test_pod_edit_unchanged_or_status_only_does_nothing() -> None:
    kube = FakeKube()
    status = {**GOOD, P + "status": '{"app":"SCALED_DOWN"}'}
    review = await admission.review_pod_update(
        running_pod(status), running_pod(GOOD), dryrun=False, kube=kube
    )
    assert review == admission.Review([], [])


async def test_pod_edit_invalid_or_of_the_sidecar_mapping_is_denied() -> None:
    kube = FakeKube()
    with pytest.raises(AdmissionDenied, match=r"Pod ns/solo: invalid Architect annotations"):
        await admission.review_pod_update(
            running_pod({P + "managed-containers": '["x"]'}),
            running_pod(GOOD),
            dryrun=False,
            kube=kube,
        )
    hc = '{"mappings": [{"containerName": "app", "appPort": 80, "shadowPort": 81}]}'
    with pytest.raises(
        AdmissionDenied, match="health-check-proxy cannot change on an existing pod"
    ):
        await admission.review_pod_update(
            running_pod({**GOOD, P + "health-check-proxy": hc}),
            running_pod(GOOD),
            dryrun=False,
            kube=kube,
        )
    assert kube.calls == []


async def test_pod_edit_of_a_workload_pod_is_validated_and_pointed_at_the_template() -> None:
    kube = FakeKube()
    edited = {**GOOD, P + "scaledown-durations": '{"app":"5m"}'}
    review = await admission.review_pod_update(
        running_pod(edited, "ReplicaSet"), running_pod(GOOD, "ReplicaSet"), dryrun=False, kube=kube
    )
    assert review.ops == []
    (w,) = review.warnings
    assert "pod of ReplicaSet web-1" in w and "edit it there" in w


async def test_start_from_warning() -> None:
    kube = FakeKube()
    pod = {
        "kind": "Pod",
        "metadata": {
            "namespace": "b",
            "annotations": {P + "start-from-persistent-checkpoint": "a/warm"},
        },
    }
    (w,) = await admission.start_from_warnings(pod, kube)
    assert "PersistentCheckpoint a/warm not found" in w
    kube.objects[("persistentcheckpoints", "a", "warm")] = {
        "metadata": {"namespace": "a", "name": "warm"},
        "spec": {"allowedNamespaces": ["b"]},
        "status": {"phase": "Ready", "image": {"digest": "x"}},
    }
    assert await admission.start_from_warnings(pod, kube) == []


def test_status_review() -> None:
    old = {"status": {"phase": "Consumed"}}
    new = {"metadata": {"name": "c"}, "status": {"phase": "Ready"}}
    with pytest.raises(
        AdmissionDenied, match="Checkpoint c: phase Consumed -> Ready is not allowed"
    ):
        admission.review_status_update("Checkpoint", old, new)
    admission.review_status_update(
        "Checkpoint", {"status": {"phase": "Ready"}}, {"status": {"phase": "Restoring"}}
    )


async def test_checkpoint_events_once_per_transition() -> None:
    kube = FakeKube()
    body: dict[str, Any] = {
        "kind": "Checkpoint",
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "creationTimestamp": fmt_time(NOW - timedelta(seconds=5)),
        },
        "spec": {"runtime": "runc", "reason": "Migration"},
    }
    kube.objects[("checkpoints", "ns", "c")] = body
    events: list[tuple[str, str, str]] = []

    def post(obj: Any, t: str, r: str, m: str) -> None:
        events.append((t, r, m))

    await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    assert body["status"]["phase"] == "Pending" and events == []
    for _ in range(2):  # the same state seen twice: one event
        await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    assert [e[1] for e in events] == ["CheckpointPending"]
    body["status"]["phase"] = "Failed"
    body["status"]["message"] = "criu dump failed"
    await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    assert events[-1] == (
        "Warning",
        "CheckpointFailed",
        "Checkpoint c is Failed (was Pending): criu dump failed",
    )
    assert body["metadata"]["annotations"][OBSERVED_PHASE] == "Failed"


def _stored(kube: FakeKube, name: str, phase: str, rv: str | None = None) -> dict[str, Any]:
    """A Checkpoint created 5 s ago, stored in ``kube`` (the same dict is returned)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "creationTimestamp": fmt_time(NOW - timedelta(seconds=5)),
    }
    if rv is not None:
        meta["resourceVersion"] = rv
    body: dict[str, Any] = {
        "kind": "Checkpoint",
        "metadata": meta,
        "spec": {"runtime": "runc", "reason": "Migration"},
        "status": {"phase": phase},
    }
    kube.objects[("checkpoints", "ns", name)] = body
    return body


def _duration_count() -> float:
    from architect.engine import metrics

    return sum(
        s.value
        for m in metrics.CHECKPOINT_DURATION.collect()
        for s in m.samples
        if s.name.endswith("_count")
    )


async def test_checkpoint_duration_counts_the_first_ready_only() -> None:
    kube = FakeKube()
    body = _stored(kube, "d", "Pending")

    def post(obj: Any, t: str, r: str, m: str) -> None:
        pass

    before = _duration_count()
    for phase in ("Pending", "Ready", "Restoring", "Ready"):  # the last one: a handback
        body["status"]["phase"] = phase
        await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    assert _duration_count() == before + 1


async def test_a_stale_event_records_a_transition_once() -> None:
    """The watch may deliver the body of a version older than our own annotation
    patch (e.g. the one our lastTransitionTime patch made): it must not count again."""
    kube = FakeKube()
    body = _stored(kube, "s", "Ready", rv="7")
    stale = copy.deepcopy(body)
    events: list[str] = []

    def post(obj: Any, t: str, r: str, m: str) -> None:
        events.append(r)

    before = _duration_count()
    await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    await controlplane.on_checkpoint(stale, kube=kube, now=NOW, post_event=post)
    assert events == ["CheckpointReady"]
    assert _duration_count() == before + 1
    assert body["metadata"]["annotations"][OBSERVED_PHASE] == "Ready"


async def test_a_newer_phase_in_a_body_without_our_record_is_not_lost() -> None:
    """Another writer moved the phase on before our annotation patch landed: its
    body carries no record of what we observed, and must still be recorded, from
    the phase recorded last."""
    kube = FakeKube()
    body = _stored(kube, "n", "Ready", rv="7")
    claimed = copy.deepcopy(body)  # the claim, written before our record landed
    claimed["metadata"]["resourceVersion"] = "8"
    claimed["status"]["phase"] = "Restoring"
    events: list[str] = []

    def post(obj: Any, t: str, r: str, m: str) -> None:
        events.append(m)

    await controlplane.on_checkpoint(body, kube=kube, now=NOW, post_event=post)
    await controlplane.on_checkpoint(claimed, kube=kube, now=NOW, post_event=post)
    assert events == ["Checkpoint n is Ready", "Checkpoint n is Restoring (was Ready)"]
    assert body["metadata"]["annotations"][OBSERVED_PHASE] == "Restoring"


async def test_pending_is_set_only_when_no_phase_was_written_meanwhile() -> None:
    kube = FakeKube()
    stale: dict[str, Any] = {
        "kind": "Checkpoint",
        "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "1"},
        "spec": {},
    }
    kube.objects[("checkpoints", "ns", "d")] = {
        **copy.deepcopy(stale),
        "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "2"},
        "status": {"phase": "Ready"},  # the daemon's, before the operator's first look
    }

    def post(obj: Any, t: str, r: str, m: str) -> None:
        pass

    await controlplane.on_checkpoint(stale, kube=kube, now=NOW, post_event=post)
    assert kube.objects[("checkpoints", "ns", "d")]["status"] == {"phase": "Ready"}
    fresh = {**stale, "metadata": {**stale["metadata"], "resourceVersion": "2"}}
    kube.objects[("checkpoints", "ns", "d")] = fresh
    await controlplane.on_checkpoint(fresh, kube=kube, now=NOW, post_event=post)
    assert fresh["status"] == {"phase": "Pending"}


async def test_persistent_moves_to_checkpointing() -> None:
    kube = FakeKube()
    pc: dict[str, Any] = {
        "kind": "PersistentCheckpoint",
        "metadata": {"name": "w", "namespace": "ns"},
        "spec": {"sourcePod": "w-0"},
    }
    kube.objects[("persistentcheckpoints", "ns", "w")] = pc
    kube.pods[("ns", "w-0")] = {
        "metadata": {"annotations": {P + "managed-pod": "true"}},
        "spec": {"runtimeClassName": "runsc-architect", "nodeName": "n1"},
    }
    noop = lambda *a: None  # noqa: E731
    await controlplane.on_persistent(pc, kube=kube, now=NOW, post_event=noop)
    assert pc["status"]["phase"] == "Pending"
    await controlplane.on_persistent(pc, kube=kube, now=NOW, post_event=noop)
    assert pc["status"]["phase"] == "Checkpointing"
    assert pc["metadata"]["labels"] == {P + "node": "n1"}


async def test_gc_pass() -> None:
    kube = FakeKube()
    old = fmt_time(NOW - timedelta(hours=2))
    for name, phase in (("done", "Consumed"), ("stuck", "Restoring"), ("fresh", "Ready")):
        kube.objects[("checkpoints", "ns", name)] = {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "creationTimestamp": old if name != "fresh" else fmt_time(NOW),
            },
            "status": {"phase": phase},
        }
    n = await controlplane.collect_garbage(
        kube=kube, now=NOW, settings=GcSettings(), post_event=lambda *a: None
    )
    assert n == 2
    assert ("delete", "done") in kube.calls and ("status", "stuck", "Failed") in kube.calls
    assert ("checkpoints", "ns", "fresh") in kube.objects


async def test_policy_status_pass_marks_the_loser() -> None:
    kube = FakeKube()
    for name, prio in (("a", 0), ("b", 5)):
        kube.objects[("hibernationpolicies", "ns", name)] = {
            "kind": "HibernationPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "runtime": "runc",
                "priority": prio,
                "containers": [{"name": "app"}],
            },
        }
    kube.pods[("ns", "web-1")] = {
        "metadata": {
            "name": "web-1",
            "namespace": "ns",
            "labels": {"app": "web"},
            "annotations": {P + "status": '{"app": "SCALED_DOWN"}'},
        },
        "spec": {"runtimeClassName": "runc-architect", "containers": [{"name": "app"}]},
    }
    assert await controlplane.refresh_policy_status(kube=kube, now=NOW) == 2
    a = kube.objects[("hibernationpolicies", "ns", "a")]["status"]
    b = kube.objects[("hibernationpolicies", "ns", "b")]["status"]
    assert {c["type"]: c["status"] for c in a["conditions"]}["Conflicted"] == "True"
    assert {c["type"]: c["status"] for c in b["conditions"]}["Conflicted"] == "False"
    assert (b["matchedPods"], b["hibernatedContainers"]) == (1, 1)
    assert await controlplane.refresh_policy_status(kube=kube, now=NOW) == 0  # nothing changed
