"""Checkpoint lifecycle, lookup for replacement pods, and garbage collection. Pure.

Phases: Pending -> Ready -> Restoring -> Consumed, and Failed from any
non-final phase. A failed restore hands the checkpoint back (Restoring ->
Ready) so another replacement may try; Consumed and Failed are final.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from architect.policy.annotations import OBSERVED_PHASE, PHASE_SINCE
from architect.policy.timestamps import fmt_time, parse_time

PHASES = ("Pending", "Ready", "Restoring", "Consumed", "Failed")
TRANSITIONS: dict[str, frozenset[str]] = {
    "Pending": frozenset({"Ready", "Failed"}),
    "Ready": frozenset({"Restoring", "Failed"}),
    "Restoring": frozenset({"Consumed", "Ready", "Failed"}),
    "Consumed": frozenset(),
    "Failed": frozenset(),
}
PERSISTENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "Pending": frozenset({"Checkpointing", "Failed"}),
    "Checkpointing": frozenset({"Ready", "Failed"}),
    "Ready": frozenset(),
    "Failed": frozenset(),
}


class TransitionError(ValueError):
    pass


def phase_of(obj: Mapping[str, Any], default: str = "Pending") -> str:
    return str((obj.get("status") or {}).get("phase") or default)


def check_transition(
    kind: str, old: str, new: str, table: Mapping[str, frozenset[str]] = TRANSITIONS
) -> None:
    """Raise TransitionError with a message naming both phases when not allowed."""
    if old == new:
        return
    allowed = table.get(old)
    if allowed is None:
        raise TransitionError(f"{kind}: unknown phase {old!r}")
    if new not in allowed:
        nexts = ", ".join(sorted(allowed)) or f"none: {old} is final"
        raise TransitionError(f"{kind}: phase {old} -> {new} is not allowed (from {old}: {nexts})")


@dataclass(frozen=True)
class PhaseChange:
    """A phase the control plane has not yet recorded: an Event, metrics, annotations."""

    old: str | None
    new: str
    since: datetime | None  # when the old phase began (None if unknown)
    annotations: dict[str, str]


def observe_phase(
    obj: Mapping[str, Any], now: datetime, default: str = "Pending"
) -> PhaseChange | None:
    """What changed since the control plane last looked; None when nothing did."""
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    new = phase_of(obj, default)
    old = ann.get(OBSERVED_PHASE)
    if old == new:
        return None
    since = parse_time(ann.get(PHASE_SINCE)) or parse_time(meta.get("creationTimestamp"))
    return PhaseChange(old, new, since, {OBSERVED_PHASE: new, PHASE_SINCE: fmt_time(now)})


def event_for(kind: str, name: str, change: PhaseChange, message: str) -> tuple[str, str, str]:
    """(type, reason, message) of the Kubernetes Event for a phase change."""
    etype = "Warning" if change.new == "Failed" else "Normal"
    before = f" (was {change.old})" if change.old else ""
    text = f"{kind} {name} is {change.new}{before}"
    if message:
        text += f": {message}"
    return (
        etype,
        f"Checkpoint{change.new}" if kind == "Checkpoint" else f"Persistent{change.new}",
        text,
    )


# --- lookup for a replacement pod ----------------------------------------------


def find_for_replacement(
    checkpoints: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    template_hash: str,
    container: str,
    pod: str,
) -> Mapping[str, Any] | None:
    """The Ready checkpoint a starting pod should restore, newest first.

    Same namespace, same pod-template-hash, same container ("" for runsc pods),
    taken from another pod. Migration checkpoints beat Hibernation ones of the
    same age: they hold the most recent state of a pod that is gone.
    """
    best: tuple[str, int, str] | None = None
    found: Mapping[str, Any] | None = None
    for c in checkpoints:
        meta = c.get("metadata") or {}
        spec = c.get("spec") or {}
        if (
            meta.get("namespace") != namespace
            or spec.get("templateHash") != template_hash
            or (spec.get("container") or "") != container
            or spec.get("sourcePod") == pod
            or phase_of(c) != "Ready"
            or not spec.get("image")
        ):
            continue
        rank = (
            str(meta.get("creationTimestamp") or ""),
            1 if spec.get("reason") == "Migration" else 0,
            str(meta.get("name") or ""),
        )
        if best is None or rank > best:
            best, found = rank, c
    return found


def claim_patch(pod: str, now: datetime) -> list[dict[str, Any]]:
    """JSON patch that claims a Ready checkpoint for ``pod``; the ``test`` op makes
    it a compare-and-swap, so two replacement pods never restore the same one."""
    return [
        {"op": "test", "path": "/status/phase", "value": "Ready"},
        {"op": "replace", "path": "/status/phase", "value": "Restoring"},
        {"op": "replace", "path": "/status/consumedBy", "value": pod},
        {
            "op": "replace",
            "path": "/status/message",
            "value": f"claimed by {pod} at {fmt_time(now)}",
        },
    ]


# --- garbage collection --------------------------------------------------------


@dataclass(frozen=True)
class GcSettings:
    consumed_ttl: timedelta = timedelta(minutes=10)  # keep a little for `kubectl get` / debugging
    failed_ttl: timedelta = timedelta(hours=1)
    unclaimed_ttl: timedelta = timedelta(hours=24)  # Ready but no replacement ever came
    pending_timeout: timedelta = timedelta(minutes=15)  # a checkpoint that never finished
    restoring_timeout: timedelta = timedelta(minutes=10)
    checkpointing_timeout: timedelta = timedelta(minutes=30)  # PersistentCheckpoint


DEFAULT_GC = GcSettings()


@dataclass(frozen=True)
class GcAction:
    verb: str  # "delete" | "fail"
    namespace: str
    name: str
    reason: str


def phase_since(obj: Mapping[str, Any]) -> datetime | None:
    """When the current phase began, as the control plane recorded it.

    Never recorded at all (no control plane saw the object yet): its creation.
    Another phase recorded: the current one has just begun and its record is on
    its way, so None (garbage collection waits for the record; ageing it from the
    creation would delete a Consumed checkpoint the moment it is consumed)."""
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    observed = ann.get(OBSERVED_PHASE)
    if observed is None:
        return parse_time(meta.get("creationTimestamp"))
    if observed != phase_of(obj):
        return None
    return parse_time(ann.get(PHASE_SINCE)) or parse_time(meta.get("creationTimestamp"))


def plan_gc(
    checkpoints: Iterable[Mapping[str, Any]], now: datetime, settings: GcSettings = DEFAULT_GC
) -> list[GcAction]:
    """Checkpoints to delete (consumed, failed, never claimed) or fail (stuck)."""
    out = []
    for c in checkpoints:
        meta = c.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        since = phase_since(c)
        if since is None:
            continue
        age = now - since
        phase = phase_of(c)
        limits = {
            "Consumed": ("delete", settings.consumed_ttl, "consumed"),
            "Failed": ("delete", settings.failed_ttl, "failed"),
            "Ready": ("delete", settings.unclaimed_ttl, "never claimed by a replacement pod"),
            "Pending": ("fail", settings.pending_timeout, "the checkpoint did not complete"),
            "Restoring": ("fail", settings.restoring_timeout, "the restore did not complete"),
        }
        if phase in limits:
            verb, limit, why = limits[phase]
            if age >= limit:
                secs = int(limit.total_seconds())
                out.append(GcAction(verb, ns, name, f"{why}; {phase} for over {secs}s"))
    return out
