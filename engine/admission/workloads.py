"""What admission decides for a workload: its compiled policies and who owns them.

Pure functions over plain dicts. The I/O shell (``engine.admission.sync``)
applies the plan these functions compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from architect.policy.annotations import (
    COMPILED_FROM_ANNOTATIONS,
    COMPILED_LABEL,
    RUNTIME_CLASSES,
    WORKLOAD_ANNOTATION,
)
from architect.policy.compiler import (
    CompileError,
    Policy,
    architect_annotations,
    compile_workload,
    pod_template,
)
from architect.policy.models import HibernationPolicy, OwnerReference

# Kinds whose pods are compiled from their own template; a Pod or ReplicaSet
# controlled by one of these gets its policies from that owner instead.
WORKLOAD_KINDS: dict[str, str] = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}
ADMITTED_KINDS = frozenset({"Pod", *WORKLOAD_KINDS})


class AdmissionDenied(Exception):
    """The request is refused; the message is what ``kubectl apply`` prints."""


def controller_owner(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return None


def owns_its_policies(obj: Mapping[str, Any]) -> bool:
    """True when this object, not a controlling workload above it, owns the policies.

    A Deployment's ReplicaSets and Pods, a CronJob's Jobs, a StatefulSet's Pods
    carry the same annotations; compiling each of them into policies would give
    several policies selecting the same pods, all in conflict.
    """
    owner = controller_owner(obj)
    return owner is None or owner.get("kind") not in WORKLOAD_KINDS


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "(unnamed)"
    return f"{obj.get('kind')} {meta.get('namespace') or 'default'}/{name}"


def compile_or_deny(obj: Mapping[str, Any]) -> list[Policy]:
    """Compile the annotations; a CompileError becomes a denial naming the object."""
    try:
        return compile_workload(obj)
    except CompileError as err:
        raise AdmissionDenied(f"{describe(obj)}: invalid Architect annotations:\n{err}") from None


def owner_reference(obj: Mapping[str, Any]) -> OwnerReference:
    meta = obj.get("metadata") or {}
    api_version = obj.get("apiVersion") or WORKLOAD_KINDS.get(str(obj.get("kind")), "v1")
    return OwnerReference(
        api_version=str(api_version),
        kind=str(obj.get("kind")),
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        controller=True,
        block_owner_deletion=False,
    )


def desired_policies(obj: Mapping[str, Any], policies: Sequence[Policy]) -> list[dict[str, Any]]:
    """The policy objects as they should exist, owned by the workload."""
    meta = obj.get("metadata") or {}
    if not meta.get("uid"):
        raise ValueError(f"{describe(obj)} has no uid yet: it cannot own policies")
    owner = owner_reference(obj)
    out = []
    for policy in policies:
        p = policy.model_copy(deep=True)
        p.metadata.namespace = meta.get("namespace") or "default"
        p.metadata.owner_references = [owner]
        out.append(p.to_dict())
    return out


@dataclass(frozen=True)
class Op:
    verb: Literal["create", "replace", "delete"]
    kind: str
    namespace: str
    name: str
    body: dict[str, Any] | None = None
    resource_version: str | None = None


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid for r in refs)


def plural(kind: str) -> str:
    return "hibernationpolicies" if kind == HibernationPolicy.KIND else "migrationpolicies"


def plan_sync(
    owner: Mapping[str, Any],
    desired: Sequence[Mapping[str, Any]],
    existing: Sequence[Mapping[str, Any]],
) -> list[Op]:
    """Operations that make the workload's compiled policies match ``desired``.

    ``existing``: policies of the namespace (both kinds). A name already taken by
    a policy that the workload does not own is refused, never overwritten.
    """
    uid = str((owner.get("metadata") or {}).get("uid"))
    by_key = {(e.get("kind"), (e.get("metadata") or {}).get("name")): e for e in existing}
    ops: list[Op] = []
    wanted = set()
    for d in desired:
        meta = d["metadata"]
        key = (d["kind"], meta["name"])
        wanted.add(key)
        cur = by_key.get(key)
        if cur is None:
            ops.append(Op("create", d["kind"], meta["namespace"], meta["name"], dict(d)))
            continue
        if not _owned_by(cur, uid):
            by = ((cur.get("metadata") or {}).get("annotations") or {}).get(WORKLOAD_ANNOTATION)
            raise AdmissionDenied(
                f"{describe(owner)}: cannot record its compiled {d['kind']} "
                f"{meta['namespace']}/{meta['name']}: a {d['kind']} of that name already exists"
                + (f" (compiled from {by})" if by else " (written by hand)")
                + "; rename the workload or delete that policy"
            )
        if cur.get("spec") != d.get("spec") or _labels(cur) != _labels(d):
            rv = (cur.get("metadata") or {}).get("resourceVersion")
            ops.append(Op("replace", d["kind"], meta["namespace"], meta["name"], dict(d), rv))
    for e in existing:
        meta = e.get("metadata") or {}
        key = (e.get("kind"), meta.get("name"))
        compiled = (meta.get("labels") or {}).get(COMPILED_LABEL) == COMPILED_FROM_ANNOTATIONS
        if key not in wanted and compiled and _owned_by(e, uid):
            ops.append(
                Op("delete", str(e.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
            )
    return ops


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def has_architect_intent(obj: Mapping[str, Any] | None) -> bool:
    """Annotations or an Architect runtime class: the webhook has work to do."""
    if not obj:
        return False
    if architect_annotations(obj):
        return True
    try:
        _, spec = pod_template(obj)
    except KeyError:
        return False
    return spec.get("runtimeClassName") in RUNTIME_CLASSES
