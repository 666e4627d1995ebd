"""What each kopf handler does, as plain functions that know nothing of kopf.

The operator module binds these to kopf's decorators; tests call them with
dicts and a fake ``Kube`` or a real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from architect.engine import metrics
from architect.engine.admission.pods import SidecarConfig, admit_pod, validate_workload
from architect.engine.admission.workloads import (
    AdmissionDenied,
    Op,
    desired_policies,
    owns_its_policies,
    plan_sync,
)
from architect.engine.controlplane import persistent
from architect.engine.controlplane.checkpoints import (
    PERSISTENT_TRANSITIONS,
    TRANSITIONS,
    GcSettings,
    PhaseChange,
    TransitionError,
    check_transition,
    event_for,
    observe_phase,
    parse_time,
    phase_of,
    plan_gc,
)
from architect.engine.directives import PolicyRef
from architect.engine.evaluate import evaluate
from architect.engine.explain import parse_policies
from architect.engine.pods import pod_info, telemetry_from_pod
from architect.engine.status import selector_string, statuses
from architect.engine.telemetry import ContainerKey, ContainerTelemetry
from architect.policy.annotations import START_FROM_PERSISTENT

# (object, type, reason, message): posts a Kubernetes Event about the object.
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]


class KubeLike(Protocol):
    async def list_policies(self, namespace: str) -> list[dict[str, Any]]: ...
    async def apply(self, ops: list[Op]) -> None: ...
    async def get(self, plural_: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_objects(
        self, plural_: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...
    async def patch_status(
        self, plural_: str, namespace: str, name: str, patch: Any
    ) -> dict[str, Any]: ...
    async def patch_meta(self, plural_: str, namespace: str, name: str, patch: Any) -> None: ...
    async def delete(self, plural_: str, namespace: str, name: str) -> None: ...
    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...
    async def get_uid(self, kind: str, namespace: str, name: str) -> str | None: ...


# --- admission ---------------------------------------------------------------


def mutate_pod(body: Mapping[str, Any], sidecar: SidecarConfig) -> dict[str, Any]:
    """The pod as it should be stored; AdmissionDenied on bad annotations."""
    return admit_pod(body, sidecar)


@dataclass(frozen=True)
class Review:
    """An admitted object: warnings for ``kubectl``, policy writes still to do."""

    warnings: list[str]
    ops: list[Op]


async def review_workload(body: Mapping[str, Any], *, dryrun: bool, kube: KubeLike) -> Review:
    """Validate a Pod or workload and plan the writes of its compiled policies.

    The writes are not done here: during admission the object is not stored
    yet, and the garbage collector deletes a policy whose owner it cannot find.
    ``record_policies`` does them once the owner exists.
    """
    policies = validate_workload(body)
    warnings: list[str] = []
    if body.get("kind") == "Pod":
        warnings.extend(await start_from_warnings(body, kube))
    if dryrun or not owns_its_policies(body):
        return Review(warnings, [])
    namespace = (body.get("metadata") or {}).get("namespace") or "default"
    desired = desired_policies(body, policies)
    existing = await kube.list_policies(namespace)
    return Review(warnings, plan_sync(body, desired, existing))


async def record_policies(
    body: Mapping[str, Any],
    ops: list[Op],
    *,
    kube: KubeLike,
    attempts: int = 60,
    every_s: float = 0.25,
) -> bool:
    """Apply the planned writes once the owner is stored (bounded wait).

    False when it never appears (the request failed after admission) or was
    replaced by another object of the same name: then nothing is written and
    no orphan is left.
    """
    meta = body.get("metadata") or {}
    kind, ns, name = (
        str(body.get("kind")),
        str(meta.get("namespace") or "default"),
        str(meta.get("name")),
    )
    for _ in range(attempts):
        uid = await kube.get_uid(kind, ns, name)
        if uid == meta.get("uid"):
            await kube.apply(ops)
            return True
        if uid is not None:
            return False
        await asyncio.sleep(every_s)
    return False


async def start_from_warnings(pod: Mapping[str, Any], kube: KubeLike) -> list[str]:
    """A pod that will not be allowed to restore is admitted (it starts fresh, per
    the contract) but told why at ``kubectl apply``."""
    meta = pod.get("metadata") or {}
    ref = (meta.get("annotations") or {}).get(START_FROM_PERSISTENT)
    if not ref:
        return []
    pod_ns = meta.get("namespace") or "default"
    ns, _, name = ref.rpartition("/")
    ns = ns or pod_ns
    pc = await kube.get("persistentcheckpoints", ns, name)
    decision = persistent.resolve_start((ns, name), pc, pod_ns)
    return [] if decision.restore else [f"{START_FROM_PERSISTENT}: {decision.reason}"]


def review_status_update(
    kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> None:
    """Refuse a phase change the lifecycle does not allow."""
    if old is None or new is None:
        return
    table = TRANSITIONS if kind == "Checkpoint" else PERSISTENT_TRANSITIONS
    try:
        check_transition(kind, phase_of(old), phase_of(new), table)
    except TransitionError as err:
        name = (new.get("metadata") or {}).get("name")
        raise AdmissionDenied(f"{kind} {name}: {str(err).removeprefix(kind + ': ')}") from None


# --- control plane -----------------------------------------------------------


def _record(kind: str, body: Mapping[str, Any], change: PhaseChange, now: datetime) -> None:
    metrics.TRANSITIONS.labels(kind=kind, phase=change.new).inc()
    spec = body.get("spec") or {}
    created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
    if kind == "Checkpoint" and change.new == "Ready" and created is not None:
        metrics.CHECKPOINT_DURATION.labels(
            runtime=spec.get("runtime", ""), reason=spec.get("reason", "")
        ).observe(max(0.0, (now - created).total_seconds()))
    if (
        kind == "Checkpoint"
        and change.new == "Consumed"
        and change.old == "Restoring"
        and change.since
    ):
        metrics.RESTORE_DURATION.labels(runtime=spec.get("runtime", "")).observe(
            max(0.0, (now - change.since).total_seconds())
        )


async def on_checkpoint(
    body: Mapping[str, Any], *, kube: KubeLike, now: datetime, post_event: PostEvent
) -> None:
    """Make the phase explicit, and record every transition once: Event, metrics."""
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    if not (body.get("status") or {}).get("phase"):
        await kube.patch_status("checkpoints", ns, name, {"status": {"phase": "Pending"}})
        return  # the resulting event records the transition
    await _observe("Checkpoint", "checkpoints", body, kube=kube, now=now, post_event=post_event)


async def _observe(
    kind: str,
    plural_: str,
    body: Mapping[str, Any],
    *,
    kube: KubeLike,
    now: datetime,
    post_event: PostEvent,
) -> None:
    change = observe_phase(body, now)
    if change is None:
        return
    meta = body.get("metadata") or {}
    message = str((body.get("status") or {}).get("message") or "")
    etype, reason, text = event_for(kind, str(meta.get("name")), change, message)
    post_event(body, etype, reason, text)
    _record(kind, body, change, now)
    await kube.patch_meta(
        plural_,
        str(meta.get("namespace")),
        str(meta.get("name")),
        {"metadata": {"annotations": change.annotations}},
    )


async def on_persistent(
    body: Mapping[str, Any], *, kube: KubeLike, now: datetime, post_event: PostEvent
) -> None:
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    if phase_of(body) == "Pending" and (body.get("status") or {}).get("phase"):
        source = await kube.get_pod(ns, str((body.get("spec") or {}).get("sourcePod")))
    else:
        source = None
    step = persistent.next_step(body, source)
    if step.labels:
        await kube.patch_meta(
            "persistentcheckpoints", ns, name, {"metadata": {"labels": step.labels}}
        )
    if step.status:
        await kube.patch_status("persistentcheckpoints", ns, name, {"status": step.status})
        return
    await _observe(
        "PersistentCheckpoint",
        "persistentcheckpoints",
        body,
        kube=kube,
        now=now,
        post_event=post_event,
    )


async def collect_garbage(
    *, kube: KubeLike, now: datetime, settings: GcSettings, post_event: PostEvent
) -> int:
    """One GC pass over all Checkpoints and PersistentCheckpoints; actions taken."""
    done = 0
    ckpts = await kube.list_objects("checkpoints")
    pcs = await kube.list_objects("persistentcheckpoints")
    by_key = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in ckpts}
    for action in plan_gc(ckpts, now, settings):
        body = by_key[(action.namespace, action.name)]
        if action.verb == "delete":
            await kube.delete("checkpoints", action.namespace, action.name)
            post_event(body, "Normal", "CheckpointDeleted", f"garbage-collected: {action.reason}")
        else:
            await kube.patch_status(
                "checkpoints",
                action.namespace,
                action.name,
                {"status": {"phase": "Failed", "message": action.reason}},
            )
        done += 1
    for action in persistent.plan_gc(list(pcs), now, settings):
        await kube.patch_status(
            "persistentcheckpoints",
            action.namespace,
            action.name,
            {"status": {"phase": "Failed", "message": action.reason}},
        )
        done += 1
    return done


async def refresh_policy_status(*, kube: KubeLike, now: datetime) -> int:
    """Evaluate each namespace's policies on the pods they select and write the
    statuses that changed (conflicts on the losing policy). Pods are listed per
    policy with its selector, so the API server does the filtering; statuses
    written."""
    objs = [
        *await kube.list_objects("hibernationpolicies"),
        *await kube.list_objects("migrationpolicies"),
    ]
    for o, kind in ((o, o.get("kind")) for o in objs):
        if kind is None:
            o["kind"] = (
                "HibernationPolicy" if "managedPod" in (o.get("spec") or {}) else "MigrationPolicy"
            )
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_ns.setdefault(str(o["metadata"]["namespace"]), []).append(o)
    written = 0
    for ns, ns_objs in sorted(by_ns.items()):
        policies, _ = parse_policies(ns_objs)
        pods: dict[str, dict[str, Any]] = {}
        for p in policies:
            sel = selector_string(p.spec.selector)
            if sel is None:
                continue
            for pod in await kube.list_pods(ns, sel):
                pods[pod["metadata"]["name"]] = pod
        telemetry: dict[ContainerKey, ContainerTelemetry] = {}
        for pod in pods.values():
            telemetry.update(telemetry_from_pod(pod)[0])
        ev = evaluate(policies, [pod_info(p) for p in pods.values()], telemetry, now)
        previous = {
            PolicyRef(str(o["kind"]), ns, str(o["metadata"]["name"])): o.get("status")
            for o in ns_objs
        }
        for ref, status in statuses(ev, previous, now).items():
            plural_ = (
                "hibernationpolicies" if ref.kind == "HibernationPolicy" else "migrationpolicies"
            )
            await kube.patch_status(plural_, ns, ref.name, {"status": status})
            written += 1
    return written
