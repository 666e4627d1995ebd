"""The operator's settings, from the command line or the environment."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta

from architect.engine.admission.pods import SidecarConfig
from architect.engine.controlplane.coordinate import TransferSettings
from architect.engine.controlplane.phases import GcSettings
from architect.engine.controlplane.trust import TRUST_SECRET
from architect.policy.durations import parse_positive_duration
from architect.policy.models import DNS_LABEL

_NAMESPACE = re.compile(DNS_LABEL)


@dataclass(frozen=True)
class OperatorConfig:
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_host: str | None = None  # the name the API server uses (kopf's client config)
    cert_file: str | None = None
    key_file: str | None = None
    metrics_port: int = 0  # 0: no metrics endpoint
    gc_interval: timedelta = timedelta(seconds=60)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    gc: GcSettings = field(default_factory=GcSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    # Where the transfer CA and ticket key live; None: transfer.namespace.
    trust_namespace: str | None = None

    @property
    def trust_home(self) -> str:
        """The namespace of the trust Secret (``--trust-namespace``)."""
        return self.trust_namespace or self.transfer.namespace


def _duration(text: str) -> timedelta:
    try:
        return parse_positive_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _namespace(text: str) -> str:
    if len(text) > 63 or not _NAMESPACE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (lowercase letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return text


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    ap = argparse.ArgumentParser(
        prog="architect operator",
        description="Run Architect's admission webhooks and control plane.",
    )
    ap.add_argument("--webhook-addr", default=env("ARCHITECT_WEBHOOK_ADDR", "0.0.0.0"))
    # String defaults go through `type` too: a bad environment value is a usage
    # error naming the flag, not a traceback.
    ap.add_argument("--webhook-port", type=int, default=env("ARCHITECT_WEBHOOK_PORT", "9443"))
    ap.add_argument("--webhook-host", default=env("ARCHITECT_WEBHOOK_HOST"))
    ap.add_argument("--tls-cert", default=env("ARCHITECT_TLS_CERT"), help="PEM certificate file")
    ap.add_argument("--tls-key", default=env("ARCHITECT_TLS_KEY"), help="PEM private key file")
    ap.add_argument("--metrics-port", type=int, default=env("ARCHITECT_METRICS_PORT", "0"))
    ap.add_argument(
        "--gc-interval", type=_duration, default=env("ARCHITECT_GC_INTERVAL", "60s")
    )
    ap.add_argument("--consumed-ttl", type=_duration, default=_duration("10m"))
    ap.add_argument("--failed-ttl", type=_duration, default=_duration("1h"))
    ap.add_argument("--unclaimed-ttl", type=_duration, default=_duration("24h"))
    ap.add_argument(
        "--sidecar-image",
        default=env("ARCHITECT_SIDECAR_IMAGE", SidecarConfig.image),
        help="image of the health-check proxy sidecar",
    )
    ap.add_argument(
        "--namespace",
        type=_namespace,
        # A string default goes through `type` too: a bad value from the
        # environment gets the same message as one on the command line.
        default=env("ARCHITECT_NAMESPACE", TransferSettings.namespace),
        help="Architect's own namespace: node certificates and transfer grants, "
        "which the node daemons read (env ARCHITECT_NAMESPACE)",
    )
    ap.add_argument(
        "--trust-namespace",
        type=_namespace,
        default=env("ARCHITECT_TRUST_NAMESPACE") or None,
        help=f"namespace of the Secret {TRUST_SECRET} (the transfer CA's key, the ticket "
        "key), which only the operator reads (env ARCHITECT_TRUST_NAMESPACE; default: "
        "--namespace). Prefer one of its own: daemons read every Secret of --namespace "
        "(RBAC cannot narrow list/watch to their node's), so there one compromised "
        "node could mint certificates for every node",
    )
    ap.add_argument(
        "--transfer-port",
        type=int,
        default=env("ARCHITECT_TRANSFER_PORT", str(TransferSettings.port)),
        help="the port the daemons serve checkpoint images on",
    )
    ap.add_argument("--ticket-ttl", type=_duration, default=_duration("10m"))
    ap.add_argument("--kubeconfig", default=env("KUBECONFIG"))
    return ap


def from_args(ns: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        webhook_addr=ns.webhook_addr,
        webhook_port=ns.webhook_port,
        webhook_host=ns.webhook_host,
        cert_file=ns.tls_cert,
        key_file=ns.tls_key,
        metrics_port=ns.metrics_port,
        gc_interval=ns.gc_interval,
        sidecar=SidecarConfig(image=ns.sidecar_image),
        gc=GcSettings(
            consumed_ttl=ns.consumed_ttl, failed_ttl=ns.failed_ttl, unclaimed_ttl=ns.unclaimed_ttl
        ),
        transfer=TransferSettings(
            namespace=ns.namespace, port=ns.transfer_port, ticket_ttl=ns.ticket_ttl
        ),
        trust_namespace=ns.trust_namespace,
    )
