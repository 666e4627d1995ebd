"""The admission handlers, as plain functions that know nothing of kopf.

``engine.operator`` binds them to kopf's webhooks; tests call them with dicts
and a fake ``KubeLike`` or a real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from architect.engine.admission.pods import SidecarConfig, admit_pod, validate_workload
from architect.engine.admission.warnings import config_warnings
from architect.engine.admission.workloads import (
    AdmissionDenied,
    Op,
    controller_owner,
    describe,
    desired_policies,
    owns_its_policies,
    plan_sync,
)
from architect.engine.controlplane import persistent
from architect.engine.controlplane.phases import (
    PERSISTENT_TRANSITIONS,
    TRANSITIONS,
    TransitionError,
    check_transition,
    phase_of,
)
from architect.engine.ports import KubeLike
from architect.policy.annotations import (
    HEALTH_CHECK_PROXY,
    PREFIX,
    START_FROM_PERSISTENT,
    WRITTEN_BY_ARCHITECT,
)
from architect.policy.models import MigrationPolicy


def mutate_pod(
    body: Mapping[str, Any], sidecar: SidecarConfig, migration: Iterable[MigrationPolicy] = ()
) -> dict[str, Any]:
    """The pod as it should be stored; AdmissionDenied on bad annotations.
    ``migration``: the MigrationPolicies the operator knows of."""
    return admit_pod(body, sidecar, migration=migration)


@dataclass(frozen=True)
class Review:
    """An admitted object: warnings for ``kubectl``, policy writes still to do."""

    warnings: list[str]
    ops: list[Op]
    # The policies as they should be: a write that meets a newer version (e.g. the
    # status pass wrote in between) is planned again from them.
    desired: list[dict[str, Any]] = field(default_factory=list)


async def review_workload(body: Mapping[str, Any], *, dryrun: bool, kube: KubeLike) -> Review:
    """Validate a Pod or workload and plan the writes of its compiled policies.

    The writes are not done here: during admission the object is not stored
    yet, and the garbage collector deletes a policy whose owner it cannot find.
    ``record_policies`` does them once the owner exists.
    """
    policies = validate_workload(body)
    # A workload's pods would repeat its warnings to the controller creating them.
    warnings = config_warnings(body, policies) if owns_its_policies(body) else []
    if body.get("kind") == "Pod":
        warnings.extend(await start_from_warnings(body, kube))
    if dryrun or not owns_its_policies(body):
        return Review(warnings, [])
    namespace = (body.get("metadata") or {}).get("namespace") or "default"
    desired = desired_policies(body, policies)
    existing = await kube.list_policies(namespace)
    return Review(warnings, plan_sync(body, desired, existing), desired)


def architect_annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """The user-written Architect annotations (not those Architect writes itself)."""
    ann = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return {
        str(k): str(v)
        for k, v in ann.items()
        if str(k).startswith(PREFIX) and k not in WRITTEN_BY_ARCHITECT
    }


async def review_pod_update(
    body: Mapping[str, Any], old: Mapping[str, Any] | None, *, dryrun: bool, kube: KubeLike
) -> Review:
    """Annotations edited on a running pod: validated like at creation; a bare
    pod's compiled policies follow the edit. A pod of a workload keeps its
    workload's policies (the template is the source): it is told so."""
    before, after = architect_annotations(old), architect_annotations(body)
    if before == after:
        return Review([], [])
    if before.get(HEALTH_CHECK_PROXY) != after.get(HEALTH_CHECK_PROXY):
        # The sidecar and probes were set at creation and a pod's containers
        # cannot change: the new mapping could never take effect.
        raise AdmissionDenied(
            f"{describe(body)}: {HEALTH_CHECK_PROXY} cannot change on an existing pod "
            "(its health-check sidecar is fixed at creation); recreate the pod"
        )
    review = await review_workload(body, dryrun=dryrun, kube=kube)
    if owns_its_policies(body):
        return review
    owner = controller_owner(body) or {}
    note = (
        f"{describe(body)}: Architect annotations edited on a pod of {owner.get('kind')} "
        f"{owner.get('name')}; its policies follow that workload's pod template: edit it there"
    )
    return Review([*review.warnings, note], review.ops, review.desired)


CONFLICT_RETRIES = 5


async def record_policies(
    body: Mapping[str, Any],
    review: Review,
    *,
    kube: KubeLike,
    attempts: int = 60,
    every_s: float = 0.25,
) -> bool:
    """Apply the planned writes once the owner is stored (bounded wait).

    False when it never appears (the request failed after admission) or was
    replaced by another object of the same name: then nothing is written and
    no orphan is left. A write that meets a newer version of a policy (409) is
    planned again from the policies as they are now (a bounded number of times).
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
            ops = review.ops
            for _ in range(CONFLICT_RETRIES):
                if await kube.apply(ops):
                    return True
                ops = plan_sync(body, review.desired, await kube.list_policies(ns))
            raise RuntimeError(
                f"{describe(body)}: its policies kept changing under "
                f"{CONFLICT_RETRIES} writes; not recorded"
            )
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
