"""Certificates made locally with ``cryptography``: a CA, webhook serving
certificates, and node certificates for the daemons' mutual TLS.

The webhook CA reaches the API server through the webhook configurations'
caBundle (development, tests, a chart without cert-manager). The node CA is
the cluster transfer CA the control plane keeps in a Secret: it signs one
certificate per node (CN = node name, client and server use), so two daemons
can check each other before a checkpoint image moves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SKEW = timedelta(minutes=5)  # tolerate small clock differences between machines


@dataclass(frozen=True)
class ServingCert:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertAuthority:
    cert_pem: bytes
    key_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str, days: int = 3650) -> CertAuthority:
    """A self-signed CA that may sign leaf certificates only."""
    now = datetime.now(UTC) - SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def sign_leaf(
    ca: CertAuthority,
    common_name: str,
    hosts: list[str],
    *,
    client: bool = False,
    server: bool = True,
    days: int = 365,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``common_name`` with ``hosts`` as SANs."""
    if not server and not client:
        raise ValueError("a certificate must be usable as server or client")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    now = datetime.now(UTC) - SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_serving_cert(hosts: list[str], days: int = 365) -> ServingCert:
    """A fresh CA and a certificate for ``hosts`` (IPs or DNS names) signed by it."""
    if not hosts:
        raise ValueError("at least one host name or IP address is needed")
    ca = make_ca("architect-webhook-ca", days=days)
    cert, key = sign_leaf(ca, hosts[0], hosts, days=days)
    return ServingCert(ca_pem=ca.cert_pem, cert_pem=cert, key_pem=key)


def make_node_cert(
    ca: CertAuthority, node: str, addresses: list[str], days: int = 365
) -> ServingCert:
    """A daemon's certificate: CN = node name (what the peer checks), SANs = its
    name and addresses, usable as both server and client."""
    if not node:
        raise ValueError("a node certificate needs the node's name")
    cert, key = sign_leaf(ca, node, [node, *addresses], client=True, server=True, days=days)
    return ServingCert(ca_pem=ca.cert_pem, cert_pem=cert, key_pem=key)


def not_after(cert_pem: bytes) -> datetime:
    """When a PEM certificate expires (to renew node certificates in time)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def common_name(cert_der: bytes) -> str:
    """The subject CN of a DER certificate (as ``ssl`` hands the peer's over)."""
    cert = x509.load_der_x509_certificate(cert_der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def pem_common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate; ValueError when it is not one."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
