"""PersistentCheckpoint lifecycle and allowedNamespaces enforcement. Pure.

Pending -> Checkpointing once the source pod is a scheduled runsc-architect pod
with managed-pod; the daemon of that node (it watches PersistentCheckpoints
with the node label, server-side filtered) takes the checkpoint and writes
Ready or Failed. Anything wrong with the source pod fails it with a message
that says what.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from architect.engine.controlplane.phases import (
    DEFAULT_GC,
    GcAction,
    GcSettings,
    phase_of,
    phase_since,
)
from architect.policy.annotations import MANAGED_POD, NODE_LABEL, RUNSC_CLASS
from architect.policy.timestamps import fmt_time


@dataclass(frozen=True)
class Step:
    """What the control plane writes: status fields and labels (None: nothing)."""

    status: dict[str, Any] | None = None
    labels: dict[str, str] | None = None


def next_step(pc: Mapping[str, Any], source_pod: Mapping[str, Any] | None) -> Step:
    phase = phase_of(pc)
    spec = pc.get("spec") or {}
    ns = (pc.get("metadata") or {}).get("namespace")
    src = f"{ns}/{spec.get('sourcePod')}"
    if phase != "Pending":
        return Step()
    if not (pc.get("status") or {}).get("phase"):
        # First sight: make the phase explicit before anything else.
        return Step(status={"phase": "Pending", "message": f"waiting for source pod {src}"})
    if source_pod is None:
        return Step(status={"phase": "Failed", "message": f"source pod {src} not found"})
    pspec = source_pod.get("spec") or {}
    ann = (source_pod.get("metadata") or {}).get("annotations") or {}
    if pspec.get("runtimeClassName") != RUNSC_CLASS:
        return Step(
            status={
                "phase": "Failed",
                "message": f"source pod {src} must use runtimeClassName {RUNSC_CLASS} "
                f"(it uses {pspec.get('runtimeClassName') or 'none'})",
            }
        )
    if ann.get(MANAGED_POD) != "true":
        return Step(
            status={
                "phase": "Failed",
                "message": f'source pod {src} needs the annotation {MANAGED_POD}: "true"',
            }
        )
    node = pspec.get("nodeName")
    if not node:
        return Step()  # not scheduled yet: stay Pending
    return Step(
        status={
            "phase": "Checkpointing",
            "message": f"the daemon on node {node} checkpoints pod {src}",
        },
        labels={NODE_LABEL: str(node)},
    )


def plan_gc(
    pcs: Sequence[Mapping[str, Any]], now: datetime, settings: GcSettings = DEFAULT_GC
) -> list[GcAction]:
    """PersistentCheckpoints stuck in Checkpointing fail; they are never deleted
    (users own them)."""
    out = []
    for pc in pcs:
        if phase_of(pc) != "Checkpointing":
            continue
        since = phase_since(pc)
        if since is not None and now - since >= settings.checkpointing_timeout:
            meta = pc.get("metadata") or {}
            secs = int(settings.checkpointing_timeout.total_seconds())
            out.append(
                GcAction(
                    "fail",
                    str(meta.get("namespace")),
                    str(meta.get("name")),
                    f"the checkpoint did not complete; Checkpointing for over {secs}s",
                )
            )
    return out


# --- starting from a PersistentCheckpoint ------------------------------------


@dataclass(frozen=True)
class StartDecision:
    restore: bool
    reason: str
    image: Mapping[str, Any] | None = None


def may_start_from(pc: Mapping[str, Any], pod_namespace: str) -> tuple[bool, str]:
    """allowedNamespaces: images hold process memory, secrets included."""
    meta = pc.get("metadata") or {}
    ns = meta.get("namespace")
    ref = f"PersistentCheckpoint {ns}/{meta.get('name')}"
    if pod_namespace == ns:
        return True, f"{ref} is in the pod's namespace"
    allowed = (pc.get("spec") or {}).get("allowedNamespaces") or []
    if pod_namespace in allowed:
        return True, f"{ref} allows namespace {pod_namespace}"
    return False, f"{ref} does not list namespace {pod_namespace} in allowedNamespaces"


def resolve_start(
    ref: tuple[str, str], pc: Mapping[str, Any] | None, pod_namespace: str
) -> StartDecision:
    """Restore or start fresh; any failure starts fresh and never falls back to
    template-hash Checkpoints (annotation contract)."""
    ns, name = ref
    if pc is None:
        return StartDecision(False, f"PersistentCheckpoint {ns}/{name} not found: starting fresh")
    ok, why = may_start_from(pc, pod_namespace)
    if not ok:
        return StartDecision(False, why + ": starting fresh")
    phase = phase_of(pc)
    image = (pc.get("status") or {}).get("image")
    if phase != "Ready" or not image:
        return StartDecision(
            False, f"PersistentCheckpoint {ns}/{name} is {phase}, not Ready: starting fresh"
        )
    return StartDecision(True, why, image)


def ready_status(image: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status the daemon writes when the image is stored."""
    return {"phase": "Ready", "image": dict(image), "completedAt": fmt_time(now), "message": ""}


__all__ = [
    "StartDecision",
    "Step",
    "may_start_from",
    "next_step",
    "plan_gc",
    "ready_status",
    "resolve_start",
]
