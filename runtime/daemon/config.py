"""Command line and environment of the daemon, checked before anything starts."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from architect.errors import UsageError
from architect.runtime.daemon.shimclient import DEFAULT_RUN, DEFAULT_STATE


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    node: str
    kubeconfig: str | None
    tick: float
    metrics_port: int
    metrics_host: str
    shim_run: Path
    shim_state: Path
    state_dir: Path
    kubelet_root: str
    wake_timeout: float
    max_held: int
    resize: bool
    log_level: str
    transfer_port: int = 9447
    transfer_host: str = "0.0.0.0"
    namespace: str = "architect-system"
    node_cert_dir: Path | None = None
    cgroup_root: str | None = None  # None: the host's, found by UsageSampler


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive(flag: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a number") from None
    if not low <= value <= high:
        raise UsageError(f"{flag} {text!r}: must be between {low:g} and {high:g}")
    return value


def parse_args(argv: list[str], env: dict[str, str] | None = None) -> DaemonConfig:
    env = dict(os.environ) if env is None else env
    p = _Parser(prog="architect daemon", description="Architect's per-node daemon.")
    p.add_argument("--node", default=env.get("NODE_NAME"),
                   help="this node's name (default: $NODE_NAME, set by the downward API)")
    p.add_argument("--kubeconfig", default=env.get("KUBECONFIG"),
                   help="kubeconfig when not running in a pod")
    p.add_argument("--tick", default="1", help="seconds between reconcile passes (0.1-60)")
    p.add_argument("--metrics-port", default="9090", help="Prometheus port; 0 disables")
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--shim-run", default=env.get("ARCHITECT_SHIM_RUN", DEFAULT_RUN),
                   help="the shim's control-socket directory")
    p.add_argument("--shim-state", default=env.get("ARCHITECT_SHIM_STATE", DEFAULT_STATE),
                   help="the shim's state directory (handovers live under it)")
    p.add_argument("--state-dir", default="/var/lib/architect/daemon",
                   help="the daemon's own state (original requests of resized containers)")
    p.add_argument("--kubelet-root", default="/var/lib/kubelet",
                   help="kubelet's root dir (health-proxy status files live under it)")
    p.add_argument("--wake-timeout", default="30", help="seconds a wake may take (1-600)")
    p.add_argument("--max-held", default="1024", help="packets held per container (1-65535)")
    p.add_argument("--resize", action=argparse.BooleanOptionalAction, default=True,
                   help="give hibernated containers' requests back via pods/resize "
                        "(default on; --no-resize keeps them)")
    p.add_argument("--transfer-port", default="9447",
                   help="port of the checkpoint transfer server (mutual TLS); 0: do not serve")
    p.add_argument("--transfer-host", default="0.0.0.0", help="address it listens on")
    p.add_argument("--namespace", default=env.get("ARCHITECT_NAMESPACE", "architect-system"),
                   help="Architect's namespace: this node's certificate Secret and the "
                        "transfer grants (default $ARCHITECT_NAMESPACE or architect-system)")
    p.add_argument("--node-cert-dir", default=None,
                   help="read the node certificate (tls.crt, tls.key, ca.crt, ticket.key) "
                        "from this directory instead of the Secret architect-node-<node>")
    p.add_argument("--cgroup-root", default=None,
                   help="the node's cgroup filesystem as the daemon sees it (in its pod: "
                        "a hostPath mount of /sys/fs/cgroup); default: the host's via "
                        "/proc/1/root, else /sys/fs/cgroup")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a = p.parse_args(argv)
    if not a.node:
        raise UsageError("--node: not given and NODE_NAME is not set")
    port = int(_positive("--metrics-port", a.metrics_port, 0, 65535))
    if str(port) != a.metrics_port.strip():
        raise UsageError(f"--metrics-port {a.metrics_port!r}: not an integer")
    tport = int(_positive("--transfer-port", a.transfer_port, 0, 65535))
    if str(tport) != a.transfer_port.strip():
        raise UsageError(f"--transfer-port {a.transfer_port!r}: not an integer")
    if not a.namespace:
        raise UsageError("--namespace: empty")
    max_held = _positive("--max-held", a.max_held, 1, 65535)
    if max_held != int(max_held):
        raise UsageError(f"--max-held {a.max_held!r}: not an integer")
    return DaemonConfig(
        node=a.node,
        kubeconfig=a.kubeconfig,
        tick=_positive("--tick", a.tick, 0.1, 60),
        metrics_port=port,
        metrics_host=a.metrics_host,
        shim_run=Path(a.shim_run),
        shim_state=Path(a.shim_state),
        state_dir=Path(a.state_dir),
        kubelet_root=a.kubelet_root,
        wake_timeout=_positive("--wake-timeout", a.wake_timeout, 1, 600),
        max_held=int(max_held),
        resize=a.resize,
        log_level=a.log_level,
        transfer_port=tport,
        transfer_host=a.transfer_host,
        namespace=a.namespace,
        node_cert_dir=Path(a.node_cert_dir) if a.node_cert_dir else None,
        cgroup_root=a.cgroup_root or None,
    )


def check_paths(cfg: DaemonConfig) -> None:
    """Flags naming host paths that must exist where the daemon runs (not checked
    by ``parse_args``, which also reads rendered chart args off the node)."""
    if cfg.cgroup_root and not Path(cfg.cgroup_root).is_dir():
        raise UsageError(f"--cgroup-root {cfg.cgroup_root!r}: not a directory")
