"""Checkpoint / PersistentCheckpoint lifecycles, lookup, GC and transfer checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from architect.engine.controlplane import persistent, transfer
from architect.engine.controlplane.phases import (
    OBSERVED_PHASE,
    PHASE_SINCE,
    TRANSITIONS,
    TransitionError,
    check_transition,
    claim_patch,
    find_for_replacement,
    observe_phase,
    plan_gc,
)
from architect.policy.timestamps import fmt_time

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "a" * 64


def ckpt(
    name: str = "c1",
    *,
    phase: str | None = "Ready",
    created: float = 60,
    th: str = "h1",
    container: str = "app",
    source: str = "web-old",
    reason: str = "Migration",
    observed: tuple[str, float] | None = None,
    image: bool = True,
) -> dict[str, Any]:
    ann = {}
    if observed:
        ann = {
            OBSERVED_PHASE: observed[0],
            PHASE_SINCE: fmt_time(NOW - timedelta(seconds=observed[1])),
        }
    obj: dict[str, Any] = {
        "kind": "Checkpoint",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": fmt_time(NOW - timedelta(seconds=created)),
            "annotations": ann,
        },
        "spec": {
            "templateHash": th,
            "container": container,
            "runtime": "runc",
            "sourcePod": source,
            "sourceNode": "n1",
            "reason": reason,
        },
    }
    if image:
        obj["spec"]["image"] = {"location": "node://n1/x", "digest": DIGEST, "sizeBytes": 3}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("Pending", "Ready", True),
        ("Ready", "Restoring", True),
        ("Restoring", "Consumed", True),
        ("Restoring", "Ready", True),
        ("Pending", "Failed", True),
        ("Pending", "Pending", True),
        ("Pending", "Restoring", False),
        ("Consumed", "Ready", False),
        ("Failed", "Ready", False),
        ("Ready", "Consumed", False),
    ],
)
def test_transitions(old: str, new: str, ok: bool) -> None:
    if ok:
        check_transition("Checkpoint", old, new)
    else:
        with pytest.raises(TransitionError, match=f"phase {old} -> {new} is not allowed"):
            check_transition("Checkpoint", old, new)


def test_final_phases_say_so() -> None:
    with pytest.raises(TransitionError, match="Consumed is final"):
        check_transition("Checkpoint", "Consumed", "Ready", TRANSITIONS)


def test_lookup_picks_newest_ready_of_same_hash_and_container() -> None:
    cands = [
        ckpt("old", created=300),
        ckpt("new", created=10),
        ckpt("other-hash", created=1, th="h2"),
        ckpt("other-container", created=1, container="db"),
        ckpt("restoring", created=1, phase="Restoring"),
        ckpt("mine", created=1, source="web-new"),
        ckpt("no-image", created=1, image=False),
    ]
    got = find_for_replacement(
        cands, namespace="default", template_hash="h1", container="app", pod="web-new"
    )
    assert got is not None and got["metadata"]["name"] == "new"
    assert (
        find_for_replacement(cands, namespace="x", template_hash="h1", container="app", pod="p")
        is None
    )


def test_lookup_prefers_migration_at_equal_age() -> None:
    cands = [ckpt("hib", reason="Hibernation"), ckpt("mig", reason="Migration")]
    got = find_for_replacement(
        cands, namespace="default", template_hash="h1", container="app", pod="p"
    )
    assert got is not None and got["metadata"]["name"] == "mig"


def test_claim_is_compare_and_swap() -> None:
    patch = claim_patch("web-new", NOW)
    assert patch[0] == {"op": "test", "path": "/status/phase", "value": "Ready"}
    assert {"op": "replace", "path": "/status/consumedBy", "value": "web-new"} in patch


def test_observe_phase_records_once() -> None:
    c = ckpt(phase="Ready", observed=("Pending", 30))
    change = observe_phase(c, NOW)
    assert change is not None and (change.old, change.new) == ("Pending", "Ready")
    assert change.since == NOW - timedelta(seconds=30)
    c["metadata"]["annotations"].update(change.annotations)
    assert observe_phase(c, NOW) is None


def test_gc_waits_for_the_record_of_a_phase_not_yet_observed() -> None:
    # Consumed a moment ago; the control plane's record still says Restoring. Aged
    # from its creation (an hour ago) it would go at once.
    c = ckpt(phase="Consumed", created=3600, observed=("Restoring", 5))
    assert plan_gc([c], NOW) == []
    never = ckpt(phase="Consumed", created=3600)  # no control plane saw it: its creation
    assert [a.verb for a in plan_gc([never], NOW)] == ["delete"]


@pytest.mark.parametrize(
    ("phase", "age", "verb"),
    [
        ("Consumed", 601, "delete"),
        ("Consumed", 60, None),
        ("Failed", 3601, "delete"),
        ("Ready", 86401, "delete"),
        ("Ready", 3600, None),
        ("Pending", 901, "fail"),
        ("Restoring", 601, "fail"),
        ("Restoring", 30, None),
    ],
)
def test_gc(phase: str, age: float, verb: str | None) -> None:
    actions = plan_gc([ckpt(phase=phase, created=99999, observed=(phase, age))], NOW)
    assert [a.verb for a in actions] == ([verb] if verb else [])
    if verb:
        assert phase in actions[0].reason


def pc(
    phase: str | None = "Pending", allowed: list[str] | None = None, ns: str = "team-a"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "PersistentCheckpoint",
        "metadata": {"name": "warm", "namespace": ns, "creationTimestamp": fmt_time(NOW)},
        "spec": {
            "sourcePod": "warm-0",
            "storage": {"nodeLocal": True},
            "allowedNamespaces": allowed or [],
        },
    }
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def source_pod(
    runtime: str = "runsc-architect", managed: bool = True, node: str | None = "n1"
) -> dict[str, Any]:
    ann = {"architect.loopholelabs.io/managed-pod": "true"} if managed else {}
    spec: dict[str, Any] = {"runtimeClassName": runtime}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "warm-0", "annotations": ann}, "spec": spec}


@pytest.mark.parametrize(
    ("obj", "pod", "phase", "message"),
    [
        (pc(None), None, "Pending", "waiting for source pod"),
        (pc(), None, "Failed", "source pod team-a/warm-0 not found"),
        (pc(), source_pod("runc-architect"), "Failed", "must use runtimeClassName runsc-architect"),
        (pc(), source_pod(managed=False), "Failed", "managed-pod"),
        (pc(), source_pod(), "Checkpointing", "daemon on node n1"),
        (pc(), source_pod(node=None), None, None),
        (pc("Ready"), source_pod(), None, None),
    ],
)
def test_persistent_steps(
    obj: dict[str, Any], pod: dict[str, Any] | None, phase: str | None, message: str | None
) -> None:
    step = persistent.next_step(obj, pod)
    if phase is None:
        assert step.status is None
        return
    assert step.status is not None
    assert step.status["phase"] == phase
    assert message is not None and message in step.status["message"]
    if phase == "Checkpointing":
        assert step.labels == {persistent.NODE_LABEL: "n1"}


def test_allowed_namespaces() -> None:
    ready = pc("Ready", allowed=["team-b"])
    ready["status"]["image"] = {"location": "r/x", "digest": DIGEST, "sizeBytes": 1}
    assert persistent.resolve_start(("team-a", "warm"), ready, "team-a").restore
    assert persistent.resolve_start(("team-a", "warm"), ready, "team-b").restore
    denied = persistent.resolve_start(("team-a", "warm"), ready, "team-c")
    assert not denied.restore and "does not list namespace team-c" in denied.reason
    assert "not found" in persistent.resolve_start(("team-a", "warm"), None, "team-a").reason
    assert "is Pending" in persistent.resolve_start(("team-a", "warm"), pc(), "team-a").reason


def test_persistent_gc_fails_stuck_checkpointing() -> None:
    stuck = pc("Checkpointing")
    stuck["metadata"]["annotations"] = {
        OBSERVED_PHASE: "Checkpointing",
        PHASE_SINCE: fmt_time(NOW - timedelta(hours=1)),
    }
    (a,) = persistent.plan_gc([stuck], NOW)
    assert a.verb == "fail"
    assert persistent.plan_gc([pc("Ready")], NOW) == []


KEY = b"k" * 32


def ticket(**kw: Any) -> transfer.Ticket:
    base: dict[str, Any] = dict(
        namespace="default",
        name="c1",
        uid="uid-c1",
        digest=DIGEST,
        size_bytes=3,
        source_node="n1",
        destination_node="n2",
        destination_pod="web-new",
        expires_at=int((NOW + timedelta(minutes=5)).timestamp()),
    )
    base.update(kw)
    return transfer.Ticket(**base)


def test_ticket_round_trip_and_tamper() -> None:
    token = transfer.issue(ticket(), KEY)
    assert transfer.verify(token, KEY, NOW) == ticket()
    _, sig = token.split(".")
    forged = transfer.issue(ticket(destination_node="evil"), b"x" * 32).split(".")[0] + "." + sig
    with pytest.raises(transfer.TransferError, match="signature"):
        transfer.verify(forged, KEY, NOW)
    with pytest.raises(transfer.TransferError, match="expired"):
        transfer.verify(token, KEY, NOW + timedelta(minutes=6))
    with pytest.raises(transfer.TransferError, match="malformed"):
        transfer.verify("nonsense", KEY, NOW)
    with pytest.raises(ValueError, match="32 bytes"):
        transfer.issue(ticket(), b"short")


def test_authorize() -> None:
    c = ckpt(phase="Restoring")
    c["status"]["consumedBy"] = "web-new"
    transfer.authorize(ticket(), self_node="n1", peer_node="n2", checkpoint=c)
    with pytest.raises(transfer.TransferError, match="caller is n3"):
        transfer.authorize(ticket(), self_node="n1", peer_node="n3", checkpoint=c)
    with pytest.raises(transfer.TransferError, match="source node n1, not n9"):
        transfer.authorize(ticket(), self_node="n9", peer_node="n2", checkpoint=c)
    c["status"]["consumedBy"] = "someone-else"
    with pytest.raises(transfer.TransferError, match="not being restored by web-new"):
        transfer.authorize(ticket(), self_node="n1", peer_node="n2", checkpoint=c)
    with pytest.raises(transfer.TransferError, match="no longer exists"):
        transfer.authorize(ticket(), self_node="n1", peer_node="n2", checkpoint=None)


def test_digest_verifier() -> None:
    data = b"abc"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    v = transfer.DigestVerifier(good, 3)
    v.update(b"ab")
    v.update(b"c")
    v.finish()
    bad = transfer.DigestVerifier(DIGEST, 3)
    bad.update(data)
    with pytest.raises(transfer.TransferError, match="digest mismatch"):
        bad.finish()
    short = transfer.DigestVerifier(good, 4)
    short.update(data)
    with pytest.raises(transfer.TransferError, match="3 bytes, expected 4"):
        short.finish()
    with pytest.raises(transfer.TransferError, match="larger"):
        transfer.DigestVerifier(good, 2).update(data)
