"""Pure: the daemon's side of a Checkpoint's lifecycle (docs/daemon.md "Checkpoints").

The shim writes a handover image when a migrating container stops; the daemon
turns that into a Checkpoint object the control plane can see, and reports
what the replacement did with it. Every decision here takes plain dicts (the
Checkpoint objects as the API server has them) and returns what to write, so it
is table-tested without a cluster.

Phases the daemon writes: Ready / Failed (after the shim's checkpoint), and,
for a replacement, Consumed or Failed/Ready (``consumed_patch`` /
``failed_patch`` of the control plane). A replacement on the source node that
restored before the control plane claimed the checkpoint (its container had
started, so the control plane never will) is claimed by the daemon with the
control plane's own compare-and-swap ``claim_patch``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from architect.engine.controlplane.coordinate import consumed_patch, failed_patch
from architect.engine.controlplane.phases import claim_patch, phase_of
from architect.policy.annotations import (
    API_VERSION,
    DESTINATION_ANNOTATION,
    NODE_LABEL,
    OBSERVED_PHASE,
    PREFIX,
    TEMPLATE_HASH_LABEL,
)
from architect.policy.timestamps import fmt_time
from architect.runtime.shim.plan import source_slot

NAME_MAX = 253
# On a Checkpoint: the manifest digest of the handover directory it was packed
# from, so the source can tell that directory from a newer pod's handover.
HANDOVER_DIGEST = PREFIX + "handover-digest"
LIVE_PHASES = frozenset({"Pending", "Ready", "Restoring"})
# How long a daemon's own claim waits for the control plane to record Restoring
# before it reports Consumed anyway (no operator running must not stall it).
CLAIM_OBSERVE_GRACE = timedelta(seconds=5)

Outcome = Literal["restored", "fresh"]


@dataclass(frozen=True, slots=True)
class Written:
    """A handover the shim wrote (or failed to write) for a stopping container."""

    namespace: str
    pod: str
    container: str
    template_hash: str
    node: str
    runtime: str = "runc"

    @property
    def slot(self) -> str:
        """The handover directory the shim writes for this pod (plan.source_slot)."""
        return source_slot(self.namespace, self.pod)


def checkpoint_name(pod: str, container: str) -> str:
    """One Checkpoint per (source pod, container): a daemon restarted after the
    shim's event finds the object it made, never a second one."""
    name = f"{pod}-{container}".lower()
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: NAME_MAX - 17]}-{digest}"


def checkpoint_body(
    w: Written, image: Mapping[str, Any] | None, handover_digest: str | None = None
) -> dict[str, Any]:
    """The Checkpoint object; labelled with the template hash (the control plane
    lists replacements' checkpoints by it) and the source node (this daemon
    watches only its own with a label selector). ``handover_digest``: of the
    handover directory on this node it was packed from (``moved_handovers``)."""
    spec: dict[str, Any] = {
        "templateHash": w.template_hash,
        "container": w.container,
        "runtime": w.runtime,
        "sourcePod": w.pod,
        "sourceNode": w.node,
        "reason": "Migration",
    }
    if image is not None:
        spec["image"] = dict(image)
    meta: dict[str, Any] = {
        "name": checkpoint_name(w.pod, w.container),
        "namespace": w.namespace,
        "labels": {TEMPLATE_HASH_LABEL: w.template_hash, NODE_LABEL: w.node},
    }
    if handover_digest:
        meta["annotations"] = {HANDOVER_DIGEST: handover_digest}
    return {"apiVersion": API_VERSION, "kind": "Checkpoint", "metadata": meta, "spec": spec}


def written_status(
    existing: Mapping[str, Any] | None, *, ok: bool, message: str
) -> dict[str, Any] | None:
    """Merge patch of the status once the image is written (Ready) or the shim's
    checkpoint failed (Failed); None when the object has moved on already (a
    restarted daemon, or the control plane claimed it)."""
    if existing is not None and phase_of(existing) != "Pending":
        return None
    return {"status": {"phase": "Ready" if ok else "Failed", "message": message}}


# --- the replacement ------------------------------------------------------------


def start_outcome(
    start_path: str, start_reason: str, template_hash: str, container: str
) -> Outcome | None:
    """What a replacement container's start says about the handover of
    (template hash, container): ``restored`` from it, ``fresh`` although one was
    expected (withdrawn, timed out, restore failed), None: no handover involved."""
    if not template_hash or not start_reason:
        return None
    ref = f"{template_hash}/{container}"
    if start_path == "restore" and start_reason.startswith(f"handover checkpoint for {ref}"):
        return "restored"
    if start_path == "fresh" and (
        start_reason.startswith("restore from ")
        or start_reason.startswith("scaleup-timeout passed waiting for ")
        or start_reason.endswith(" withdrawn")
    ) and f"/handover/{ref}" in start_reason:
        return "fresh"
    return None


_TAKEN = re.compile(r"\[((?:from|to)_[^\]]+)\]")


def taken_handover(start_reason: str) -> str:
    """The handover slot a start reason of runtime/shim/plan.py names, a local
    one (``from_*``) or the one fetched for the pod (``to_*``); "" if none."""
    m = _TAKEN.search(start_reason)
    return m.group(1) if m else ""


def taken_slot(start_reason: str) -> str:
    """The local handover slot (``from_*``) a start reason names ("" if none)."""
    slot = taken_handover(start_reason)
    return slot if slot.startswith(SOURCE_SLOT_PREFIX) else ""


def what_was_taken(namespace: str, container: str, slot: str) -> str:
    """The handover ``slot`` in words, by the Checkpoint it belongs to where that
    is known here: a local one is its source pod's (checkpoint_name)."""
    prefix = source_slot(namespace, "")
    if slot.startswith(prefix):
        return (f"Checkpoint {namespace}/{checkpoint_name(slot[len(prefix):], container)} "
                f"(handover {slot} on this node)")
    return f"the image fetched for it from another node (handover {slot})"


def claimed_not_taken(
    checkpoints: Iterable[Mapping[str, Any]],
    handovers: Iterable[HandoverSlot],
    *,
    namespace: str,
    template_hash: str,
    container: str,
    pod: str,
    node: str,
    slot: str,
) -> list[Mapping[str, Any]]:
    """This node's Checkpoints the control plane claimed for ``pod`` on this node
    (Restoring for it, no transfer) whose handover it did not take: it restored
    from ``slot``. Only those whose handover is still here, ready and unclaimed:
    one another local replacement took (or claims now) is that pod's to claim
    (report_outcome's reclaim), never to hand to a third pod."""
    free = {(h.template_hash, h.container, h.slot) for h in handovers if not h.claimed_by}
    out = []
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        status = c.get("status") or {}
        theirs = source_slot(namespace, str(spec.get("sourcePod") or ""))
        if (
            meta.get("namespace") == namespace
            and spec.get("sourceNode") == node
            and spec.get("templateHash") == template_hash
            and (spec.get("container") or "") == container
            and phase_of(c) == "Restoring"
            and status.get("consumedBy") == pod
            and not status.get("transfer")
            and theirs != slot
            and (template_hash, container, theirs) in free
        ):
            out.append(c)
    return out


def consumed_checkpoint(
    checkpoints: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    template_hash: str,
    container: str,
    pod: str,
    node: str,
    slot: str = "",
) -> Mapping[str, Any] | None:
    """The Checkpoint whose handover ``pod`` took on this node: written here, same
    namespace, template hash and container, Ready or being restored by ``pod``;
    the newest when several qualify. With ``slot`` (the handover the shim says
    the pod took, exclusively), the one of that source pod, also when the
    control plane claimed it for another replacement on this node: two replicas'
    replacements may take the two handovers the other way round."""
    best: tuple[str, str] | None = None
    found: Mapping[str, Any] | None = None
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        status = c.get("status") or {}
        phase = phase_of(c)
        if (
            meta.get("namespace") != namespace
            or spec.get("sourceNode") != node
            or spec.get("templateHash") != template_hash
            or (spec.get("container") or "") != container
            or spec.get("sourcePod") == pod
            or (slot and source_slot(namespace, str(spec.get("sourcePod") or "")) != slot)
            or not (
                phase == "Ready"
                or (phase == "Restoring" and status.get("consumedBy") == pod)
                or (slot and phase == "Restoring" and not status.get("transfer"))
            )
        ):
            continue
        rank = (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))
        if best is None or rank > best:
            best, found = rank, c
    return found


@dataclass(frozen=True, slots=True)
class Report:
    """One status write for a replacement's outcome; ``done``: nothing follows."""

    patch: list[dict[str, Any]] | None
    done: bool
    why: str


def report_outcome(
    checkpoint: Mapping[str, Any],
    *,
    pod: str,
    outcome: Outcome,
    reason: str,
    now: datetime,
    restoring_since: datetime | None = None,
    taken: bool = False,
) -> Report:
    """The next write for ``pod``'s outcome on ``checkpoint``.

    Ready + restored: claim it (Restoring, consumedBy = pod) with the control
    plane's compare-and-swap; then, once the control plane has recorded
    Restoring (so its Event and metrics see the claim) or a grace after the
    daemon first saw it Restoring (``restoring_since``; no operator must not
    stall it), Consumed. Restoring for ``pod`` + fresh: Failed (the shim
    removed the image it could not restore, or it never came).

    ``taken``: the shim says ``pod`` took this Checkpoint's handover on this
    node; a same-node claim for another pod (no transfer) moves to ``pod``."""
    phase = phase_of(checkpoint)
    status = checkpoint.get("status") or {}
    mine = phase == "Restoring" and status.get("consumedBy") == pod
    other = str(status.get("consumedBy") or "")
    if (taken and outcome == "restored" and phase == "Restoring" and other != pod
            and not status.get("transfer")):
        return Report(reclaim_patch(other, pod, now), False, f"claimed (from {other})")
    if outcome == "fresh":
        if mine:
            return Report(failed_patch(pod, f"started fresh: {reason}", retry=False), True,
                          "failed")
        return Report(None, True, "not claimed by this pod")
    if phase == "Ready":
        return Report(claim_patch(pod, now), False, "claimed")
    if not mine:
        return Report(None, True, f"{phase}, not for {pod}")
    ann = (checkpoint.get("metadata") or {}).get("annotations") or {}
    if ann.get(OBSERVED_PHASE) != "Restoring" and (
        restoring_since is None or now - restoring_since < CLAIM_OBSERVE_GRACE
    ):
        return Report(None, False, "waiting for the control plane to record the claim")
    return Report(consumed_patch(pod, now), True, "consumed")


def reclaim_patch(other: str, pod: str, now: datetime) -> list[dict[str, Any]]:
    """Compare-and-swap: the same-node claim for ``other`` becomes ``pod``'s."""
    return [
        {"op": "test", "path": "/status/phase", "value": "Restoring"},
        {"op": "test", "path": "/status/consumedBy", "value": other},
        {"op": "replace", "path": "/status/consumedBy", "value": pod},
        {"op": "replace", "path": "/status/message",
         "value": f"claimed by {pod} at {fmt_time(now)}: it took the handover {other} "
                  "was claimed for"},
    ]


def incoming_handover(
    checkpoints: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    template_hash: str,
    container: str,
    pod: str,
    node: str,
) -> str | None:
    """What says a handover of (template hash, container) is on its way to ``pod``,
    a replacement on this node whose container has not started: a Checkpoint of
    another node that is Pending, Ready or Restoring for ``pod``, or a pod of the
    same template hash being deleted on another node (its checkpoint runs now).
    None: nothing is coming. The grant that marks the handover pending comes only
    once the source's Checkpoint is Ready and claimed, which on a drain is later
    than the kubelet's Create of the replacement."""
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        status = c.get("status") or {}
        phase = phase_of(c)
        if (
            meta.get("namespace") == namespace
            and spec.get("templateHash") == template_hash
            and (spec.get("container") or "") == container
            and spec.get("sourceNode") not in (None, "", node)
            and spec.get("sourcePod") != pod
            and (phase in ("Pending", "Ready")
                 or (phase == "Restoring" and status.get("consumedBy") == pod))
        ):
            return f"Checkpoint {namespace}/{meta.get('name')} {phase} on {spec.get('sourceNode')}"
    for p in pods:
        meta = p.get("metadata") or {}
        spec = p.get("spec") or {}
        ann = meta.get("annotations") or {}
        if (
            meta.get("namespace") == namespace
            and meta.get("name") != pod
            and meta.get("deletionTimestamp")
            and spec.get("nodeName") not in (None, "", node)
            and ann.get(TEMPLATE_HASH_LABEL) == template_hash
            and container in {x.get("name") for x in spec.get("containers") or []}
        ):
            return f"pod {namespace}/{meta.get('name')} being deleted on {spec.get('nodeName')}"
    return None


# --- the source's packed images -------------------------------------------------


def outgoing_to_drop(
    entries: Iterable[tuple[str, str, str, float]],
    checkpoints: Iterable[Mapping[str, Any]],
    *,
    node: str,
    min_age_s: float = 60.0,
) -> list[tuple[str, str, str]]:
    """Packed images (template hash, container, digest, age in seconds) under
    outgoing/ that no live Checkpoint of this node refers to any more: at once
    when its Checkpoint is Consumed or Failed; after ``min_age_s`` when none
    names it (deleted, or not created yet: export comes first, and the
    snapshot of Checkpoints may lag). By digest: another replica of the same
    template may have packed its own image meanwhile."""
    live: set[tuple[str, str, str]] = set()
    final: set[tuple[str, str, str]] = set()
    for c in checkpoints:
        spec = c.get("spec") or {}
        if spec.get("sourceNode") != node:
            continue
        ref = (str(spec.get("templateHash")), str(spec.get("container") or ""),
               str((spec.get("image") or {}).get("digest") or ""))
        (live if phase_of(c) in LIVE_PHASES else final).add(ref)
    return sorted(
        (h, c, d)
        for h, c, d, age in entries
        if (h, c, d) not in live and ((h, c, d) in final or age >= min_age_s)
    )


def moved_handovers(
    checkpoints: Iterable[Mapping[str, Any]], *, node: str
) -> list[tuple[str, str, str, str]]:
    """(template hash, container, handover slot, digest) of this node's Checkpoints that
    a pod on another node consumed: the handover directory they were packed from
    holds state that now runs elsewhere, and a later pod of the same template on
    this node must not restore it a second time."""
    out = []
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        ann = meta.get("annotations") or {}
        dest = str(ann.get(DESTINATION_ANNOTATION) or "")
        digest = str(ann.get(HANDOVER_DIGEST) or "")
        if (
            spec.get("sourceNode") == node
            and phase_of(c) == "Consumed"
            and dest not in ("", node)
            and digest
        ):
            slot = source_slot(str(meta.get("namespace") or ""), str(spec.get("sourcePod") or ""))
            out.append((str(spec.get("templateHash")), str(spec.get("container") or ""), slot,
                        digest))
    return sorted(set(out))


# The content of a ``claimed`` mark the daemon writes to take a handover away
# (withdrawn_handovers): no pod is named so (spaces), so no shim takes it as its own.
WITHDRAW_CLAIM = "withdrawn by the architect daemon"
# A ready handover no live Checkpoint names is withdrawn only after this long: the
# Checkpoint is created once the image is packed (seconds to a minute), and the
# watch's snapshot may lag behind this daemon's own create (outgoing_to_drop's too).
UNNAMED_GRACE_S = 60.0
SOURCE_SLOT_PREFIX = "from_"  # of plan.source_slot's names


@dataclass(frozen=True, slots=True)
class HandoverSlot:
    """A ready handover directory on this node (Images.ready_handovers)."""

    template_hash: str
    container: str
    slot: str  # plan.source_slot of the pod that left it (from_*), or a to_* one
    digest: str  # its manifest's (plan.manifest_digest), as HANDOVER_DIGEST records it
    age_s: float  # since it became ready
    claimed_by: str = ""  # a local replacement's pod (plan.claim_local), or WITHDRAW_CLAIM
    claimed_age_s: float = 0.0  # since it was claimed


# A claim whose pod is gone (deleted, or being deleted, before it restored) is
# released after this long: a claimant restores within seconds of its claim, and a
# pod being deleted may still be in its Create.
CLAIM_GRACE_S = 60.0
# A claimed mark that names nobody (empty, or unreadable): never released, nobody
# can tell whose it is (plan.claim_slot always wrote the claimant's name).
UNNAMED_CLAIM = "?"


def stale_claim_candidates(
    slots: Iterable[HandoverSlot], *, min_age_s: float = CLAIM_GRACE_S
) -> list[HandoverSlot]:
    """The ready handovers a local replacement pod claimed ``min_age_s`` ago or
    more and still has not restored (a restore removes the handover): its
    pod may be gone. Not the daemon's own claim, nor an unnamed one."""
    return [s for s in slots
            if s.claimed_by not in ("", WITHDRAW_CLAIM, UNNAMED_CLAIM)
            and s.slot.startswith(SOURCE_SLOT_PREFIX) and s.claimed_age_s >= min_age_s]


def slot_namespace(slot: str) -> str:
    """The namespace in a ``from_<namespace>_<pod>`` slot name (no ``_`` in namespaces);
    a claimant is of that namespace (plan.claim_local takes only its own)."""
    return slot.removeprefix(SOURCE_SLOT_PREFIX).partition("_")[0]


def claimant_gone(
    pods: Iterable[Mapping[str, Any]], *, namespace: str, pod: str, node: str
) -> str | None:
    """Why the claimant ``pod`` will never restore the handover it claimed on this
    node (None while it may: it exists here, starting or not). ``pods``: the
    namespace's pods of the handover's template hash, from the API."""
    for p in pods:
        meta = p.get("metadata") or {}
        if meta.get("namespace") != namespace or meta.get("name") != pod:
            continue
        where = (p.get("spec") or {}).get("nodeName")
        if where not in (None, "", node):
            return f"pod {namespace}/{pod} is on {where}, not this node"
        if meta.get("deletionTimestamp"):
            return f"pod {namespace}/{pod} is being deleted"
        return None
    return f"pod {namespace}/{pod} is gone"


def withdrawn_handovers(
    slots: Iterable[HandoverSlot],
    checkpoints: Iterable[Mapping[str, Any]],
    *,
    node: str,
    keep: Iterable[tuple[str, str, str]] = (),
    min_age_s: float = UNNAMED_GRACE_S,
) -> list[tuple[str, str, str, str, str]]:
    """(template hash, container, slot, digest, why) of the ready handovers a pod
    deleted on this node left (``from_*``) that no pod may restore any more:

    - its Checkpoint (this node's, same slot and digest) is Failed: the
      replacement started fresh, elsewhere or here, and has run since, so a later
      pod of the template restoring it would bring back older state;
    - no live Checkpoint names it (collected, deleted, never created) for
      ``min_age_s``, unless ``keep`` lists it (an armed record: a restarted
      daemon still creates its Checkpoint; or one this daemon just created).

    Never one a local replacement claimed (it restores or waits for it now), nor
    one a live (Pending, Ready, Restoring) Checkpoint names: a replacement may
    still take it. One the daemon claimed to withdraw (and was stopped before it
    removed it) is finished once no live Checkpoint names it. A Checkpoint without HANDOVER_DIGEST (an older
    daemon's) names its slot whatever image is there."""
    kept = set(keep)
    live: set[tuple[str, str, str, str]] = set()  # digest "" = any image in that slot
    failed: dict[tuple[str, str, str, str], str] = {}
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        if spec.get("sourceNode") != node:
            continue
        ref = (str(spec.get("templateHash") or ""), str(spec.get("container") or ""),
               source_slot(str(meta.get("namespace") or ""), str(spec.get("sourcePod") or "")),
               str((meta.get("annotations") or {}).get(HANDOVER_DIGEST) or ""))
        phase = phase_of(c)
        if phase in LIVE_PHASES:
            live.add(ref)
        elif phase == "Failed" and ref[3]:
            failed[ref] = f"Checkpoint {meta.get('namespace')}/{meta.get('name')} Failed"
    out = []
    for s in slots:
        where = (s.template_hash, s.container, s.slot)
        if not s.slot.startswith(SOURCE_SLOT_PREFIX):
            continue  # a to_* slot: the grants' (discard_ready), not this
        if (s.claimed_by not in ("", WITHDRAW_CLAIM) or (*where, s.digest) in live
                or (*where, "") in live):
            continue
        why = "withdrawal resumed" if s.claimed_by else failed.get((*where, s.digest))
        if why is None and where not in kept and s.age_s >= min_age_s:
            why = f"no live Checkpoint names it after {int(min_age_s)}s"
        if why is not None:
            out.append((*where, s.digest, why))
    return sorted(out)


# --- the destination's transfer -------------------------------------------------

# Messages of runtime/transfer that mean the image itself is bad (Failed):
# anything else (refused connection, timeout, a source that is down) hands the
# checkpoint back for another try.
_BAD_IMAGE = ("digest mismatch", "bad manifest", "larger than the recorded", "expected ",
              "image of ", "sends ")


def transfer_retryable(message: str) -> bool:
    return not any(s in message for s in _BAD_IMAGE)
