"""The daemons' mutual TLS: contexts from a node certificate and the cluster CA.

Both ends require a certificate signed by the cluster transfer CA; the peer's
node name is its certificate's CN. Host names are not checked: the caller
checks the CN against the node the ticket names, which binds the connection to
the right node even when its address changes.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from architect.engine.controlplane.transfer import TransferError
from architect.engine.controlplane.trust import TICKET_KEY_FIELD
from architect.engine.tls import ServingCert, common_name, pem_common_name

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"  # a kubernetes.io/tls Secret's keys
TICKET_KEY_FILE = TICKET_KEY_FIELD  # the control plane's ticket key, in the same Secret


@dataclass(frozen=True)
class NodeTLS:
    node: str  # this node's name: the CN of cert_pem
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_cert(cls, node: str, cert: ServingCert) -> NodeTLS:
        return cls(node, cert.ca_pem, cert.cert_pem, cert.key_pem)

    @classmethod
    def from_dir(cls, directory: Path) -> NodeTLS:
        """ca.crt, tls.crt, tls.key (a mounted node Secret); the node is the CN."""
        try:
            ca, cert, key = ((directory / f).read_bytes() for f in (CA_FILE, CERT_FILE, KEY_FILE))
        except OSError as e:
            raise TransferError(
                f"node certificate in {directory}: {e.strerror}: {e.filename}"
            ) from None
        try:
            node = pem_common_name(cert)
        except ValueError as e:
            raise TransferError(f"{directory / CERT_FILE}: not a PEM certificate ({e})") from None
        return cls(node, ca, cert, key)

    def _context(self, purpose: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # both ends are ours
        ctx.check_hostname = False  # the CN is checked against the ticket instead
        ctx.verify_mode = ssl.CERT_REQUIRED  # the server asks for and checks the client's
        try:
            ctx.load_verify_locations(cadata=self.ca_pem.decode())
            # ssl loads a chain from files only; keep the key on disk for an instant, 0600.
            with tempfile.TemporaryDirectory(prefix="architect-tls-") as d:
                cert, key = Path(d) / CERT_FILE, Path(d) / KEY_FILE
                cert.write_bytes(self.cert_pem)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.key_pem)
                ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as e:
            raise TransferError(f"node certificate of {self.node}: {e}") from None
        return ctx

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_CLIENT)


def peer_node(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The verified peer's node name (certificate CN); '' when there is none."""
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    return common_name(der) if der else ""


def ticket_key_from_dir(directory: Path) -> bytes:
    """The ticket key from a mounted node Secret (``ticket.key``)."""
    path = directory / TICKET_KEY_FILE
    try:
        key = path.read_bytes()
    except OSError as e:
        raise TransferError(f"ticket key: {e.strerror}: {path}") from None
    if len(key) < 32:
        raise TransferError(f"ticket key {path}: {len(key)} bytes, want at least 32")
    return key
