"""The operator's settings, from the command line or the environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from datetime import timedelta

from architect.engine.admission.pods import SidecarConfig
from architect.engine.controlplane.checkpoints import GcSettings
from architect.engine.controlplane.coordinate import TransferSettings
from architect.policy.durations import parse_positive_duration


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


def _duration(text: str) -> timedelta:
    try:
        return parse_positive_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    ap = argparse.ArgumentParser(
        prog="architect operator",
        description="Run Architect's admission webhooks and control plane.",
    )
    ap.add_argument("--webhook-addr", default=env("ARCHITECT_WEBHOOK_ADDR", "0.0.0.0"))
    ap.add_argument("--webhook-port", type=int, default=int(env("ARCHITECT_WEBHOOK_PORT", "9443")))
    ap.add_argument("--webhook-host", default=env("ARCHITECT_WEBHOOK_HOST"))
    ap.add_argument("--tls-cert", default=env("ARCHITECT_TLS_CERT"), help="PEM certificate file")
    ap.add_argument("--tls-key", default=env("ARCHITECT_TLS_KEY"), help="PEM private key file")
    ap.add_argument("--metrics-port", type=int, default=int(env("ARCHITECT_METRICS_PORT", "0")))
    ap.add_argument(
        "--gc-interval", type=_duration, default=_duration(env("ARCHITECT_GC_INTERVAL", "60s"))
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
        default=env("ARCHITECT_NAMESPACE", TransferSettings.namespace),
        help="Architect's own namespace: the transfer key, node certificates, grants",
    )
    ap.add_argument(
        "--transfer-port",
        type=int,
        default=int(env("ARCHITECT_TRANSFER_PORT", str(TransferSettings.port))),
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
    )
