"""The node-to-node checkpoint transfer: tickets, grants and digest checks. Pure.

The I/O (HTTPS server and client of the daemons) is ``runtime/transfer``; the
control plane's coordination is ``controlplane/coordinate.py``.

Protocol:

1. A replacement pod claims a Ready Checkpoint (compare-and-swap to Restoring,
   ``consumedBy`` = the pod). The control plane sees the claim and issues a
   ticket: checkpoint namespace/name/uid, image digest and size, source node,
   destination node (the claiming pod's), expiry; signed with HMAC-SHA256
   under the cluster transfer key (a Secret only the control plane and the
   daemons can read). The ticket is stored in a Secret of Architect's own
   namespace, labelled with the destination node.
2. The destination daemon reads the grant Secret (ticket, source endpoint,
   template hash, container) and calls the source daemon over mutual TLS
   (node certificates from the cluster transfer CA, CN = node name):
   ``GET /v1/checkpoints/NS/NAME`` with ``Authorization: Architect-Ticket TOKEN``.
3. The source daemon serves only if the ticket verifies (signature, expiry),
   names it as the source, names the caller's certificate CN as the
   destination, and the Checkpoint is still Restoring for the ticket's pod.
4. The destination streams the image through ``DigestVerifier``; a digest or
   size mismatch fails the restore (Restoring -> Ready for another try, or
   Failed), never restores a corrupt image.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

SCHEME = "Architect-Ticket"


class TransferError(Exception):
    """A transfer refused or failed; the message says which check."""


@dataclass(frozen=True)
class Ticket:
    namespace: str
    name: str
    uid: str
    digest: str
    size_bytes: int
    source_node: str
    destination_node: str
    destination_pod: str
    expires_at: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(ticket: Ticket, key: bytes) -> str:
    if len(key) < 32:
        raise ValueError("the transfer key must be at least 32 bytes")
    body = json.dumps(asdict(ticket), sort_keys=True, separators=(",", ":")).encode()
    sig = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(sig)}"


def _split(token: str) -> tuple[bytes, bytes]:
    try:
        body_b64, sig_b64 = token.split(".")
        return _unb64(body_b64), _unb64(sig_b64)
    except ValueError:
        raise TransferError("malformed ticket") from None


def _body(body: bytes) -> Ticket:
    try:
        return Ticket(**json.loads(body))
    except (TypeError, ValueError):
        raise TransferError("malformed ticket body") from None


def peek(token: str) -> Ticket:
    """The ticket's fields, unverified: for the destination, which got the token
    from the control plane's Secret and only needs the digest and names."""
    return _body(_split(token)[0])


def verify(token: str, key: bytes, now: datetime) -> Ticket:
    body, sig = _split(token)
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), sig):
        raise TransferError(
            "ticket signature does not verify (not issued under this cluster's key)"
        )
    ticket = _body(body)
    if now.timestamp() >= ticket.expires_at:
        raise TransferError(f"ticket for {ticket.namespace}/{ticket.name} has expired")
    return ticket


def authorize(
    ticket: Ticket,
    *,
    self_node: str,
    peer_node: str,
    checkpoint: Mapping[str, Any] | None,
) -> None:
    """The source daemon's checks before it serves an image."""
    ref = f"{ticket.namespace}/{ticket.name}"
    if ticket.source_node != self_node:
        raise TransferError(
            f"ticket for {ref} names source node {ticket.source_node}, not {self_node}"
        )
    if ticket.destination_node != peer_node:
        raise TransferError(
            f"ticket for {ref} is for node {ticket.destination_node}; the caller is {peer_node}"
        )
    if checkpoint is None:
        raise TransferError(f"Checkpoint {ref} no longer exists")
    meta = checkpoint.get("metadata") or {}
    status = checkpoint.get("status") or {}
    if meta.get("uid") != ticket.uid:
        raise TransferError(f"Checkpoint {ref} was replaced since the ticket was issued")
    if status.get("phase") != "Restoring" or status.get("consumedBy") != ticket.destination_pod:
        raise TransferError(
            f"Checkpoint {ref} is not being restored by {ticket.destination_pod} "
            f"(phase {status.get('phase')}, consumedBy {status.get('consumedBy') or 'nobody'})"
        )


class DigestVerifier:
    """Feed the image as it streams in; ``finish`` checks size and sha256."""

    def __init__(self, digest: str, size_bytes: int) -> None:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64:
            raise TransferError(f"unsupported digest {digest!r} (want sha256:<64 hex>)")
        self.expected, self.size = hexd, size_bytes
        self._h = hashlib.sha256()
        self._n = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._n += len(chunk)
        if self._n > self.size:
            raise TransferError(f"image is larger than the recorded {self.size} bytes")
        self._h.update(chunk)

    def finish(self) -> None:
        if self._n != self.size:
            raise TransferError(f"image is {self._n} bytes, expected {self.size}")
        got = self._h.hexdigest()
        if not hmac.compare_digest(got, self.expected):
            raise TransferError(
                f"digest mismatch: got sha256:{got}, expected sha256:{self.expected}"
            )


# --- the grant: what the destination daemon needs, in one Secret ---------------

# Secret data keys (values are strings); the control plane writes them,
# runtime/transfer reads them.
GRANT_TOKEN = "ticket"
GRANT_ENDPOINT = "endpoint"
GRANT_TEMPLATE_HASH = "templateHash"
GRANT_CONTAINER = "container"
GRANT_KEYS = (GRANT_TOKEN, GRANT_ENDPOINT, GRANT_TEMPLATE_HASH, GRANT_CONTAINER)


@dataclass(frozen=True)
class Grant:
    """One transfer the destination daemon is allowed to make."""

    endpoint: str  # https://HOST:PORT of the source daemon
    token: str
    template_hash: str
    container: str  # "" for a pod-scoped (runsc) checkpoint

    @property
    def ticket(self) -> Ticket:
        return peek(self.token)


def grant_data(grant: Grant) -> dict[str, str]:
    return {
        GRANT_TOKEN: grant.token,
        GRANT_ENDPOINT: grant.endpoint,
        GRANT_TEMPLATE_HASH: grant.template_hash,
        GRANT_CONTAINER: grant.container,
    }


def grant_from_data(data: Mapping[str, str], where: str = "grant") -> Grant:
    """Parse a grant Secret's (decoded) data; TransferError names what is missing."""
    missing = [k for k in (GRANT_TOKEN, GRANT_ENDPOINT, GRANT_TEMPLATE_HASH) if not data.get(k)]
    if missing:
        raise TransferError(f"{where}: missing {', '.join(missing)}")
    grant = Grant(
        endpoint=str(data[GRANT_ENDPOINT]),
        token=str(data[GRANT_TOKEN]),
        template_hash=str(data[GRANT_TEMPLATE_HASH]),
        container=str(data.get(GRANT_CONTAINER) or ""),
    )
    if not grant.endpoint.startswith("https://"):
        raise TransferError(f"{where}: endpoint {grant.endpoint!r} is not an https:// URL")
    grant.ticket  # noqa: B018  (raises TransferError on a malformed token)
    return grant
