"""The cluster's transfer trust, kept in Secrets by the control plane. Pure.

- ``architect-transfer``, in the trust namespace (``--trust-namespace``; the
  chart's ``<release namespace>-trust``): the HMAC key that signs tickets and
  the transfer CA (certificate and key). Only the control plane reads it: node
  daemons can read every Secret of ``--namespace`` (RBAC cannot narrow their
  list/watch to their node's), so there one compromised node could mint
  certificates for every node. ``--trust-namespace`` defaults to ``--namespace``
  for single-namespace setups.
- ``architect-node-<node>`` (in ``--namespace``; type kubernetes.io/tls,
  labelled with the node): the node's certificate (CN = node name, SANs = its
  name and addresses, client and server use), its key, the CA certificate and
  the ticket key (a source daemon verifies tickets with it); the node's daemon
  mounts or reads it, never the CA's key. Issued for every Node and renewed a month before it expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from architect.engine.tls import CertAuthority, make_ca, make_node_cert, not_after
from architect.policy.annotations import ADDRESSES_ANNOTATION, NODE_CERT_LABEL, NODE_LABEL

TRUST_SECRET = "architect-transfer"
KEY_FIELD, CA_CERT_FIELD, CA_KEY_FIELD = "key", "ca.crt", "ca.key"
TICKET_KEY_FIELD = "ticket.key"  # in a node's Secret: the HMAC key, to verify tickets
RENEW_BEFORE = timedelta(days=30)


class TrustError(ValueError):
    pass


@dataclass(frozen=True)
class Trust:
    key: bytes
    ca: CertAuthority


def new_trust_secret(namespace: str) -> dict[str, Any]:
    """A fresh transfer key and CA, as the Secret that keeps them."""
    ca = make_ca("architect-transfer-ca")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": TRUST_SECRET, "namespace": namespace},
        "data": {
            KEY_FIELD: base64.b64encode(os.urandom(32)).decode(),
            CA_CERT_FIELD: base64.b64encode(ca.cert_pem).decode(),
            CA_KEY_FIELD: base64.b64encode(ca.key_pem).decode(),
        },
    }


def _field(secret: Mapping[str, Any], key: str) -> bytes:
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace')}/{meta.get('name')}"
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        raise TrustError(f"{where}: no {key!r}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise TrustError(f"{where}: {key!r} is not base64") from None


def trust_from_secret(secret: Mapping[str, Any]) -> Trust:
    key = _field(secret, KEY_FIELD)
    if len(key) < 32:
        raise TrustError(f"Secret {TRUST_SECRET}: {KEY_FIELD!r} must be at least 32 bytes")
    return Trust(key, CertAuthority(_field(secret, CA_CERT_FIELD), _field(secret, CA_KEY_FIELD)))


def node_secret_name(node: str) -> str:
    """A valid Secret name for any node name (they can be long)."""
    if len(node) <= 200:
        return f"architect-node-{node}"
    return f"architect-node-{hashlib.sha256(node.encode()).hexdigest()[:32]}"


def _addresses(node: Mapping[str, Any]) -> list[str]:
    return sorted(
        {
            str(a["address"])
            for a in ((node.get("status") or {}).get("addresses") or [])
            if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
        }
    )


def nodes_needing_certs(
    nodes: Iterable[Mapping[str, Any]],
    secrets: Iterable[Mapping[str, Any]],
    cluster: Trust,
    now: datetime,
) -> list[Mapping[str, Any]]:
    """Nodes without a certificate from this CA (or the current ticket key),
    with one expiring within a month, or whose addresses changed."""
    ca = cluster.ca
    by_node = {
        str(((s.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL)): s for s in secrets
    }
    out = []
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name"))
        s = by_node.get(name)
        if s is None:
            out.append(node)
            continue
        try:
            cert, ca_pem = _field(s, "tls.crt"), _field(s, CA_CERT_FIELD)
            stale = (
                ca_pem != ca.cert_pem
                or _field(s, TICKET_KEY_FIELD) != cluster.key
                or not_after(cert) - now < RENEW_BEFORE
                or ((s.get("metadata") or {}).get("annotations") or {}).get(ADDRESSES_ANNOTATION)
                != ",".join(_addresses(node))
            )
        except (TrustError, ValueError):
            stale = True
        if stale:
            out.append(node)
    return out


def node_cert_secret(cluster: Trust, node: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    name = str((node.get("metadata") or {}).get("name"))
    addresses = _addresses(node)
    cert = make_node_cert(cluster.ca, name, addresses)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": node_secret_name(name),
            "namespace": namespace,
            "labels": {NODE_LABEL: name, NODE_CERT_LABEL: "true"},
            "annotations": {ADDRESSES_ANNOTATION: ",".join(addresses)},
        },
        "data": {
            "tls.crt": base64.b64encode(cert.cert_pem).decode(),
            "tls.key": base64.b64encode(cert.key_pem).decode(),
            CA_CERT_FIELD: base64.b64encode(cert.ca_pem).decode(),
            TICKET_KEY_FIELD: base64.b64encode(cluster.key).decode(),
        },
    }
