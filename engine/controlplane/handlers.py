"""The control plane's handlers (Checkpoint and PersistentCheckpoint phases, GC,
policy statuses, transfer grants and node certificates), as plain functions that
know nothing of kopf.

``engine.operator`` binds them to kopf's watches and timers; tests call them
with dicts and a fake ``KubeLike`` or a real one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any

from architect.engine import metrics
from architect.engine.controlplane import coordinate, persistent, trust
from architect.engine.controlplane.phases import (
    GcSettings,
    PhaseChange,
    event_for,
    observe_phase,
    phase_of,
    plan_gc,
)
from architect.engine.directives import PolicyRef
from architect.engine.evaluate import evaluate
from architect.engine.pods import pod_info, telemetry_from_pod
from architect.engine.ports import KubeLike, PostEvent
from architect.engine.status import selector_string, statuses
from architect.engine.telemetry import ContainerKey, ContainerTelemetry
from architect.policy.annotations import (
    GRANT_ANNOTATION,
    GRANT_LABEL,
    NODE_CERT_LABEL,
    OBSERVED_PHASE,
    SOURCE_ANNOTATION,
)
from architect.policy.models import parse_policies
from architect.policy.timestamps import fmt_time, parse_time


def _record(kind: str, body: Mapping[str, Any], change: PhaseChange, now: datetime) -> None:
    metrics.TRANSITIONS.labels(kind=kind, phase=change.new).inc()
    spec = body.get("spec") or {}
    created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
    # Creation to first Ready only: a handback (Restoring -> Ready) is not a dump.
    if (
        kind == "Checkpoint"
        and change.new == "Ready"
        and change.old in (None, "Pending")
        and created is not None
    ):
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
        # Only if nobody wrote a phase since this body (a daemon creates its
        # Checkpoints and sets Ready at once; Ready -> Pending would be refused).
        ops: list[dict[str, Any]] = []
        if meta.get("resourceVersion"):
            ops.append(
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
            )
        if body.get("status") is None:
            ops.append({"op": "add", "path": "/status", "value": {"phase": "Pending"}})
        else:
            ops.append({"op": "add", "path": "/status/phase", "value": "Pending"})
        await kube.try_patch_status("checkpoints", ns, name, ops)
        return  # the resulting event (or the newer one) records the transition
    change = await _observe(
        "Checkpoint", "checkpoints", body, kube=kube, now=now, post_event=post_event
    )
    if change is not None and change.old == "Restoring":
        await revoke_grant(body, kube=kube)


async def _observe(
    kind: str,
    plural_: str,
    body: Mapping[str, Any],
    *,
    kube: KubeLike,
    now: datetime,
    post_event: PostEvent,
) -> PhaseChange | None:
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    view: Mapping[str, Any] = body
    # Claim the transition before its Event and metrics: a compare-and-swap on the
    # observed-phase annotation. The watch may deliver a body older than our own
    # annotation patch; checked against the object as it is now, a phase already
    # recorded is not recorded again, and a newer one is recorded from the phase
    # recorded last (so no phase a body shows is lost).
    for _ in range(3):
        change = observe_phase(view, now)
        if change is None:
            return None
        view_meta = view.get("metadata") or {}
        if await kube.try_patch_meta(plural_, ns, name, observed_patch(view_meta, change)):
            break
        current = await kube.get(plural_, ns, name)
        if current is None:
            return None
        view = {**current, "status": {**(current.get("status") or {}), "phase": phase_of(body)}}
    else:
        return None
    message = str((body.get("status") or {}).get("message") or "")
    etype, reason, text = event_for(kind, name, change, message)
    post_event(body, etype, reason, text)
    _record(kind, body, change, now)
    # Observed, not exact: phases are written by daemons too, and the control plane
    # sees each change within one watch event.
    await kube.patch_status(plural_, ns, name, {"status": {"lastTransitionTime": fmt_time(now)}})
    return change


def observed_patch(meta: Mapping[str, Any], change: PhaseChange) -> list[dict[str, Any]]:
    """JSON patch writing the phase-observed annotations, if the record of what was
    observed is still ``change.old`` (for a first observation, which has no record
    to test: if the object is still at the resourceVersion of ``meta``)."""
    ops: list[dict[str, Any]] = []
    if change.old is not None:
        ops.append({"op": "test", "path": _annotation(OBSERVED_PHASE), "value": change.old})
    elif meta.get("resourceVersion"):
        ops.append(
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        )
    if not meta.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    for key, value in change.annotations.items():
        ops.append({"op": "add", "path": _annotation(key), "value": value})
    return ops


def _annotation(key: str) -> str:
    """The JSON pointer of an annotation (RFC 6901 escapes '~' and '/')."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


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


# --- transfer between nodes ----------------------------------------------------


async def load_trust(
    namespace: str, *, kube: KubeLike, daemons_namespace: str | None = None
) -> trust.Trust:
    """The transfer key and CA from ``namespace`` (``--trust-namespace``); made
    once per cluster (the first writer wins).

    ``daemons_namespace`` (``--namespace``), when another one: a trust Secret an
    older version left there is deleted, since every daemon can read it.
    """
    for _ in range(3):
        secret = await kube.get_secret(namespace, trust.TRUST_SECRET)
        if secret is not None:
            found = trust.trust_from_secret(secret)
            if daemons_namespace and daemons_namespace != namespace:
                await kube.delete_secret(daemons_namespace, trust.TRUST_SECRET)
            return found
        await kube.put_secret(trust.new_trust_secret(namespace), replace=False)
    raise trust.TrustError(f"Secret {namespace}/{trust.TRUST_SECRET} could not be read back")


def trust_unavailable(namespace: str, status: int | None, reason: str | None) -> str:
    """What to tell the operator's user when the API refused the trust Secret."""
    where = f"transfer key Secret {namespace}/{trust.TRUST_SECRET}"
    if status == HTTPStatus.NOT_FOUND:
        why = f"namespace {namespace} does not exist"
    elif status == HTTPStatus.FORBIDDEN:
        why = "the operator may not get or create Secrets there (its RBAC)"
    else:
        why = reason or f"HTTP {status}"
    return f"{where}: {why} (--trust-namespace)"


async def coordinate_checkpoint(
    body: Mapping[str, Any],
    *,
    kube: KubeLike,
    now: datetime,
    key: bytes,
    settings: coordinate.TransferSettings,
    post_event: PostEvent,
) -> str:
    """One look at a Ready or Restoring Checkpoint; what was done (for logs and tests).

    Ready: claim it for its replacement pod, with a grant when the pod is on
    another node. Restoring: hand it back when its pod is gone.
    """
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    phase = phase_of(body)
    if phase == "Restoring":
        who = str((body.get("status") or {}).get("consumedBy") or "")
        consumer = await kube.get_pod(ns, who) if who else None
        patch = coordinate.handback(body, consumer)
        if patch is None:
            return "restoring"
        await kube.patch_status("checkpoints", ns, name, patch)
        return "handed back"
    if phase != "Ready":
        return "nothing"
    # One claim at a time per template: two Checkpoints of one ReplicaSet that go
    # Ready together (a drain evicts both replicas) would each list the other's
    # claim as not made yet and pick the same replacement (each claim is a
    # compare-and-swap on its own Checkpoint only). The list after the lock is a
    # quorum read, so it sees the claim made before it.
    key_ = (ns, str((body.get("spec") or {}).get("templateHash") or ""))
    lock = _CLAIM_LOCKS.get(key_)
    if lock is None:
        lock = _CLAIM_LOCKS[key_] = asyncio.Lock()
    async with lock:
        return await _claim_ready(body, kube=kube, now=now, key=key, settings=settings,
                                  post_event=post_event)


# Held only while a claim is made: a template's entry goes with its last holder.
_CLAIM_LOCKS: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


async def _claim_ready(
    body: Mapping[str, Any],
    *,
    kube: KubeLike,
    now: datetime,
    key: bytes,
    settings: coordinate.TransferSettings,
    post_event: PostEvent,
) -> str:
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    pods = await kube.list_pods(ns, coordinate.replacement_selector(body))
    siblings = await kube.list_objects("checkpoints", ns)
    pod = coordinate.pick_replacement(body, pods, siblings)
    if pod is None:
        return "waiting for a replacement pod"
    spec = body.get("spec") or {}
    dest = str((pod.get("spec") or {}).get("nodeName"))
    source_node = (
        None if dest == spec.get("sourceNode") else await kube.get_node(str(spec.get("sourceNode")))
    )
    plan = coordinate.plan_claim(body, pod, source_node, key=key, now=now, settings=settings)
    if isinstance(plan, coordinate.Fail):
        await kube.try_patch_status(
            "checkpoints",
            ns,
            name,
            [
                {"op": "test", "path": "/status/phase", "value": "Ready"},
                {"op": "replace", "path": "/status/phase", "value": "Failed"},
                {"op": "replace", "path": "/status/message", "value": plan.message},
            ],
        )
        return "failed"
    if await kube.try_patch_status("checkpoints", ns, name, plan.patch) is None:
        return "claimed by another"
    if plan.secret is not None:
        try:
            await kube.put_secret(plan.secret)
        except Exception:
            # Without its grant the destination cannot fetch: give the checkpoint back.
            await kube.try_patch_status(
                "checkpoints",
                ns,
                name,
                coordinate.failed_patch(
                    plan.pod, "the transfer grant could not be written", retry=True
                ),
            )
            raise
    await kube.patch_meta("checkpoints", ns, name, {"metadata": {"annotations": plan.annotations}})
    if plan.secret is None:
        return f"claimed for {plan.pod} on the source node"
    grant = f"{plan.secret['metadata']['namespace']}/{plan.secret['metadata']['name']}"
    post_event(
        body,
        "Normal",
        "TransferGranted",
        f"{plan.pod} on {plan.destination_node} may fetch the image from "
        f"{spec.get('sourceNode')} ({plan.annotations[SOURCE_ANNOTATION]}); grant {grant}",
    )
    return f"granted {grant}"


async def revoke_grant(body: Mapping[str, Any], *, kube: KubeLike) -> None:
    """The checkpoint left Restoring: its grant is of no more use."""
    ref = ((body.get("metadata") or {}).get("annotations") or {}).get(GRANT_ANNOTATION)
    if ref:
        ns, _, name = str(ref).partition("/")
        await kube.delete_secret(ns, name)


async def sweep_transfer(
    *, kube: KubeLike, now: datetime, namespace: str, cluster: trust.Trust
) -> tuple[int, int]:
    """Revoke stale grants and issue missing node certificates: (revoked, issued)."""
    grants = await kube.list_secrets(namespace, f"{GRANT_LABEL}=true")
    revoked = 0
    if grants:
        ckpts = await kube.list_objects("checkpoints")
        by_key = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in ckpts}
        for name in coordinate.grants_to_revoke(grants, by_key, now):
            await kube.delete_secret(namespace, name)
            revoked += 1
    nodes = await kube.list_nodes()
    certs = await kube.list_secrets(namespace, f"{NODE_CERT_LABEL}=true")
    issued = 0
    for node in trust.nodes_needing_certs(nodes, certs, cluster, now):
        await kube.put_secret(trust.node_cert_secret(cluster, node, namespace))
        issued += 1
    return revoked, issued
