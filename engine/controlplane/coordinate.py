"""Coordination of a checkpoint's move to a replacement pod on another node. Pure.

For a Ready Checkpoint the control plane looks for its replacement pod: same
namespace and pod-template-hash (label, so the API server filters), bound to a
node, not the source pod, not being deleted, its container not started yet,
and not already restoring that container from another checkpoint. Then:

- on the source node: claim it (Ready -> Restoring); the shim's handover
  directory is already there, nothing moves;
- on another node: claim it, issue a ticket bound to the checkpoint, the two
  nodes and the pod, and write it with the source daemon's endpoint into a
  grant Secret of Architect's namespace labelled with the destination node
  (the destination daemon watches those with a label selector).

The destination daemon reports the outcome (``consumed_patch`` /
``failed_patch``); when the checkpoint leaves Restoring the grant is revoked.
A Restoring checkpoint whose pod is gone is handed back (-> Ready).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from architect.engine.controlplane.phases import claim_patch, phase_of
from architect.engine.controlplane.transfer import (
    GRANT_TOKEN,
    Grant,
    Ticket,
    TransferError,
    grant_data,
    issue,
    peek,
)
from architect.policy.annotations import (
    CHECKPOINT_ANNOTATION,
    DESTINATION_ANNOTATION,
    GRANT_ANNOTATION,
    GRANT_LABEL,
    GRANT_TYPE,
    NODE_LABEL,
    SOURCE_ANNOTATION,
    TEMPLATE_HASH_LABEL,
)
from architect.policy.timestamps import fmt_time


@dataclass(frozen=True)
class TransferSettings:
    namespace: str = "architect-system"  # Architect's own: grants and the transfer key
    port: int = 9447  # the daemons' transfer port
    ticket_ttl: timedelta = timedelta(minutes=10)  # as long as a restore may take


DEFAULT_TRANSFER = TransferSettings()


def replacement_selector(checkpoint: Mapping[str, Any]) -> str:
    """The label selector of the pods that may replace the checkpoint's source."""
    return f"{TEMPLATE_HASH_LABEL}={(checkpoint.get('spec') or {}).get('templateHash', '')}"


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _container_started(pod: Mapping[str, Any], container: str) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container or not container:
            state = cs.get("state") or {}
            if "running" in state or "terminated" in state or cs.get("restartCount"):
                return True
    return False


def pick_replacement(
    checkpoint: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    siblings: Iterable[Mapping[str, Any]] = (),
) -> Mapping[str, Any] | None:
    """The pod that should restore ``checkpoint``, oldest first; None: none yet.

    ``siblings``: the namespace's other Checkpoints of the same template hash,
    so a pod never restores one container from two checkpoints.
    """
    spec = checkpoint.get("spec") or {}
    meta = checkpoint.get("metadata") or {}
    container = str(spec.get("container") or "")
    busy = {
        str((s.get("status") or {}).get("consumedBy"))
        for s in siblings
        if phase_of(s) in ("Restoring", "Consumed")
        and str((s.get("spec") or {}).get("container") or "") == container
        and (s.get("metadata") or {}).get("name") != meta.get("name")
    }
    best: tuple[str, str] | None = None
    found: Mapping[str, Any] | None = None
    for pod in pods:
        pmeta = pod.get("metadata") or {}
        pspec = pod.get("spec") or {}
        name = str(pmeta.get("name"))
        if (
            pmeta.get("namespace") != meta.get("namespace")
            or (pmeta.get("labels") or {}).get(TEMPLATE_HASH_LABEL) != spec.get("templateHash")
            or name == spec.get("sourcePod")
            or name in busy
            or pmeta.get("deletionTimestamp")
            or not pspec.get("nodeName")
            or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            or (
                container
                and container not in {c.get("name") for c in pspec.get("containers") or []}
            )
            or _container_started(pod, container)
        ):
            continue
        rank = (str(pmeta.get("creationTimestamp") or ""), name)
        if best is None or rank < best:
            best, found = rank, pod
    return found


def node_endpoint(node: Mapping[str, Any] | None, port: int) -> str | None:
    """https://ADDRESS:PORT of a node's daemon (its InternalIP); None without one."""
    for addr in ((node or {}).get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP" and addr.get("address"):
            host = str(addr["address"])
            try:
                if ipaddress.ip_address(host).version == 6:
                    host = f"[{host}]"
            except ValueError:
                pass
            return f"https://{host}:{port}"
    return None


def grant_name(checkpoint: Mapping[str, Any]) -> str:
    """One grant per checkpoint object (uid), a valid Secret name."""
    meta = checkpoint.get("metadata") or {}
    h = hashlib.sha256(f"{_ref(checkpoint)}/{meta.get('uid')}".encode()).hexdigest()[:20]
    return f"architect-transfer-{h}"


@dataclass(frozen=True)
class Claim:
    """What to do for a Ready checkpoint."""

    pod: str
    destination_node: str
    patch: list[dict[str, Any]]  # the compare-and-swap claim (status)
    annotations: dict[str, str]  # on the Checkpoint
    secret: dict[str, Any] | None  # the grant Secret; None: restore on the source node


@dataclass(frozen=True)
class Fail:
    message: str


def plan_claim(
    checkpoint: Mapping[str, Any],
    pod: Mapping[str, Any],
    source_node: Mapping[str, Any] | None,
    *,
    key: bytes,
    now: datetime,
    settings: TransferSettings = DEFAULT_TRANSFER,
) -> Claim | Fail:
    """Claim ``checkpoint`` for ``pod`` (from ``pick_replacement``); across nodes,
    with a ticket for the transfer."""
    spec = checkpoint.get("spec") or {}
    meta = checkpoint.get("metadata") or {}
    pod_name = str((pod.get("metadata") or {}).get("name"))
    dest = str((pod.get("spec") or {}).get("nodeName"))
    src = str(spec.get("sourceNode") or "")
    patch = claim_patch(pod_name, now)
    if dest == src:
        patch[-1]["value"] = f"claimed by {pod_name} on the source node {src} at {fmt_time(now)}"
        return Claim(pod_name, dest, patch, {DESTINATION_ANNOTATION: dest}, None)
    image = spec.get("image") or {}
    if not image.get("digest"):
        return Fail(f"no image recorded; cannot move it to {dest} for {pod_name}")
    endpoint = node_endpoint(source_node, settings.port)
    if source_node is None:
        return Fail(
            f"source node {src} no longer exists; its image cannot reach {pod_name} on {dest}"
        )
    if endpoint is None:
        return Fail(f"source node {src} has no InternalIP address to fetch the image from")
    ticket = Ticket(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        digest=str(image["digest"]),
        size_bytes=int(image.get("sizeBytes") or 0),
        source_node=src,
        destination_node=dest,
        destination_pod=pod_name,
        expires_at=int((now + settings.ticket_ttl).timestamp()),
    )
    grant = Grant(
        endpoint,
        issue(ticket, key),
        str(spec.get("templateHash")),
        str(spec.get("container") or ""),
    )
    name = grant_name(checkpoint)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": GRANT_TYPE,
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {NODE_LABEL: dest, GRANT_LABEL: "true"},
            "annotations": {CHECKPOINT_ANNOTATION: _ref(checkpoint)},
        },
        "stringData": grant_data(grant),
    }
    # Before the message op, which stays last (patch[-1]).
    patch.insert(-1, {
        "op": "add",
        "path": "/status/transfer",
        "value": {
            "destinationNode": dest,
            "sourceEndpoint": endpoint,
            "grant": f"{settings.namespace}/{name}",
            "expires": fmt_time(now + settings.ticket_ttl),
        },
    })
    patch[-1]["value"] = (
        f"claimed by {pod_name} on {dest} at {fmt_time(now)}; the image moves from {src} "
        f"({endpoint}) with grant {settings.namespace}/{name}"
    )
    annotations = {
        GRANT_ANNOTATION: f"{settings.namespace}/{name}",
        SOURCE_ANNOTATION: endpoint,
        DESTINATION_ANNOTATION: dest,
    }
    return Claim(pod_name, dest, patch, annotations, secret)


def handback(checkpoint: Mapping[str, Any], pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Restoring for a pod that is gone or being deleted: give it back (-> Ready)
    for another replacement; None while the pod is there."""
    if phase_of(checkpoint) != "Restoring":
        return None
    who = str((checkpoint.get("status") or {}).get("consumedBy") or "")
    if pod is not None and not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    why = "was deleted" if pod is None else "is being deleted"
    return {
        "status": {
            "phase": "Ready",
            "consumedBy": "",
            "message": f"pod {who} {why} before restoring",
            "transfer": None,  # merge patch: null deletes it
        }
    }


def grants_to_revoke(
    secrets: Iterable[Mapping[str, Any]],
    checkpoints: Mapping[tuple[str, str], Mapping[str, Any]],
    now: datetime,
) -> list[str]:
    """Grant Secrets whose checkpoint is gone, is no longer Restoring, is another
    object (uid), or whose ticket has expired."""
    out = []
    for s in secrets:
        meta = s.get("metadata") or {}
        ref = str((meta.get("annotations") or {}).get(CHECKPOINT_ANNOTATION) or "")
        ns, _, name = ref.partition("/")
        c = checkpoints.get((ns, name))
        if c is None or phase_of(c) != "Restoring" or grant_name(c) != meta.get("name"):
            out.append(str(meta.get("name")))
            continue
        expires = _expiry(s)
        if expires is not None and now.timestamp() >= expires:
            out.append(str(meta.get("name")))
    return sorted(out)


def _expiry(secret: Mapping[str, Any]) -> int | None:
    data = secret.get("data") or {}
    raw = data.get(GRANT_TOKEN)
    if not raw:
        return None
    try:
        return peek(base64.b64decode(raw).decode()).expires_at
    except (TransferError, ValueError, binascii.Error):
        return 0  # unreadable: revoke


# --- the destination daemon's report -------------------------------------------


def consumed_patch(pod: str, now: datetime) -> list[dict[str, Any]]:
    """JSON patch (status) the destination daemon sends once ``pod`` restored."""
    return [
        {"op": "test", "path": "/status/phase", "value": "Restoring"},
        {"op": "test", "path": "/status/consumedBy", "value": pod},
        {"op": "replace", "path": "/status/phase", "value": "Consumed"},
        {
            "op": "replace",
            "path": "/status/message",
            "value": f"restored by {pod} at {fmt_time(now)}",
        },
    ]


def failed_patch(pod: str, message: str, *, retry: bool) -> list[dict[str, Any]]:
    """JSON patch (status) for a failed transfer or restore: back to Ready for
    another replacement (``retry``, e.g. a network error) or Failed (the image
    is bad)."""
    return [
        {"op": "test", "path": "/status/phase", "value": "Restoring"},
        {"op": "test", "path": "/status/consumedBy", "value": pod},
        {"op": "replace", "path": "/status/phase", "value": "Ready" if retry else "Failed"},
        {"op": "replace", "path": "/status/consumedBy", "value": ""},
        {"op": "replace", "path": "/status/message", "value": f"{pod}: {message}"},
        # null clears it: the CRD's schema prunes nulls of non-nullable fields.
        {"op": "add", "path": "/status/transfer", "value": None},
    ]
