"""pytest plugin: the e2e cluster for integration tests (register with `-p e2e.pytest_cluster`).

Session fixtures:
  control_plane -> Cluster   etcd + kube-apiserver (`e2e/cluster/up --control-plane`)
  node_cluster  -> Cluster   the node tier too: kubelet, containerd (`e2e/cluster/up`)
  kubeconfig    -> Path      the test cluster's kubeconfig (control plane at least)

Each starts the cluster when it is not up, so `pytest -m cluster` works on a fresh
machine after install. A kubeconfig whose context is not the test cluster's (name,
loopback server, CA issued by e2e/cluster) is refused: tests never reach a real
cluster, whatever KUBECONFIG says. During the session KUBECONFIG points at the
test cluster so clients and kubectl subprocesses find it.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
UP = REPO / "e2e" / "cluster" / "up"
STATE = Path(os.environ.get("ARCHITECT_E2E_STATE", "/var/lib/architect-e2e"))
KUBECONFIG = STATE / "kubeconfig"
CA_FILE = STATE / "pki" / "ca.crt"
KUBECTL = Path(os.environ.get("ARCHITECT_CACHE", "/var/cache/architect")) / "bin" / "kubectl"
CONTEXT = "architect-e2e"
SERVER = "https://127.0.0.1:6443"
NODE = "architect-e2e-node"
CONTAINERD_SOCK = Path("/run/architect-e2e/containerd/containerd.sock")
# A cold first start builds Kubernetes from source (tens of minutes on 2 cores).
UP_TIMEOUT_S = 3600
PROBE_TIMEOUT_S = 20


class NotTestCluster(Exception):
    """The kubeconfig does not point at the e2e test cluster."""


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    context: str
    tier: str  # "control-plane" or "node"
    kubectl: Path

    def kubectl_cmd(self, *args: str) -> list[str]:
        return [str(self.kubectl), "--kubeconfig", str(self.kubeconfig),
                "--context", self.context, *args]


def _named(items: Any, name: str, where: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(where.rstrip("s"))
            if isinstance(value, dict):
                return value
    raise NotTestCluster(f"kubeconfig: no {where.rstrip('s')} named {name!r}")


def check_kubeconfig(doc: Any, expected_ca_pem: bytes | None) -> None:
    """Pure: raise NotTestCluster unless doc's current context is the test cluster's."""
    if not isinstance(doc, dict):
        raise NotTestCluster("kubeconfig: not a YAML mapping")
    current = doc.get("current-context")
    if current != CONTEXT:
        raise NotTestCluster(
            f"kubeconfig: current-context is {current!r}, not the test cluster's {CONTEXT!r}")
    context = _named(doc.get("contexts"), CONTEXT, "contexts")
    cluster = _named(doc.get("clusters"), str(context.get("cluster")), "clusters")
    server = cluster.get("server")
    if server != SERVER:
        raise NotTestCluster(
            f"kubeconfig: context {CONTEXT!r} points at {server!r}, not the local {SERVER}")
    if expected_ca_pem is not None:
        data = cluster.get("certificate-authority-data", "")
        try:
            ca = base64.b64decode(str(data), validate=True)
        except ValueError as err:
            raise NotTestCluster("kubeconfig: certificate-authority-data is not base64") from err
        if ca.strip() != expected_ca_pem.strip():
            raise NotTestCluster(
                f"kubeconfig: context {CONTEXT!r} trusts a CA other than e2e/cluster's {CA_FILE}")


def load_checked(path: Path) -> None:
    try:
        doc = YAML(typ="safe").load(path.read_text())
    except OSError as err:
        raise NotTestCluster(f"kubeconfig {path}: {err.strerror}") from err
    ca = CA_FILE.read_bytes() if CA_FILE.exists() else None
    check_kubeconfig(doc, ca)


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ensure(tier: str) -> Cluster:
    cluster = Cluster(KUBECONFIG, CONTEXT, tier, KUBECTL)
    if tier == "node":
        # The Node stays Ready for a while after its containerd has gone: ask both.
        ready = _probe(cluster.kubectl_cmd("wait", "--for=condition=Ready", f"node/{NODE}",
                                           "--timeout=5s")) and _probe(
            ["ctr", "--address", str(CONTAINERD_SOCK), "version"])
    else:
        ready = _probe(cluster.kubectl_cmd("get", "--raw", "/readyz"))
    if not (KUBECONFIG.exists() and KUBECTL.exists() and ready):
        args = [str(UP)] if tier == "node" else [str(UP), "--control-plane"]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=UP_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(args)} did not finish in {UP_TIMEOUT_S}s", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}",
                        pytrace=False)
    try:
        load_checked(KUBECONFIG)
    except NotTestCluster as err:
        pytest.fail(f"refusing to run cluster tests: {err}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def _kubeconfig_env() -> Iterator[None]:
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    yield
    if saved is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = saved


@pytest.fixture(scope="session")
def control_plane(_kubeconfig_env: None) -> Cluster:
    """etcd + kube-apiserver of the e2e cluster, started if needed."""
    return _ensure("control-plane")


@pytest.fixture(scope="session")
def node_cluster(_kubeconfig_env: None) -> Cluster:
    """The whole single-node e2e cluster (kubelet, containerd), started if needed."""
    return _ensure("node")


@pytest.fixture(scope="session")
def kubeconfig(control_plane: Cluster) -> Path:
    """Path of the test cluster's kubeconfig (its only context: architect-e2e)."""
    return control_plane.kubeconfig
