"""The engine's operator, run as a subprocess against the e2e API server.

The API server calls its webhooks over TLS on 127.0.0.1 with a CA this fixture
makes. The webhook configurations are scoped to namespaces labelled for these
tests, so nobody else's objects ever reach this operator, and are deleted at
the end.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from architect.engine.admission.webhooks import ClientConfig, Scope, build_configurations
from architect.engine.tls import make_serving_cert
from e2e.pytest_cluster import REPO, Cluster
from e2e.tests.cluster.kube import eventually, kubectl

NS_LABEL = "architect-e2e-engine"
START_TIMEOUT_S = 60
RUNTIME_CLASSES = """
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runc-architect}
handler: runc-architect
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runsc-architect}
handler: runsc-architect
"""


@dataclass(frozen=True)
class Operator:
    cluster: Cluster
    port: int
    metrics_port: int
    log: Path
    label: str  # namespaces with NS_LABEL=label reach this operator's webhooks
    system_namespace: str  # Architect's own: node certificates, grants (daemons read it)
    transfer_port: int  # where the control plane says source daemons serve images
    trust_namespace: str  # the transfer CA and ticket key: the operator's alone

    def metric(self, name: str) -> float:
        """Sum of a Prometheus metric's samples (all label sets)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def quiesce(self, timeout_s: float = 180) -> None:
        """Delete every test namespace of this operator and wait until they are gone.

        The operator's counters are process-wide: a test that asserts on their
        deltas must not share the window with earlier tests' leftovers (pods a
        controller recreates, checkpoints handed back as their pods go).
        """

        def others() -> list[str]:
            out = kubectl(
                self.cluster, "get", "ns", "-l", f"{NS_LABEL}={self.label}", "-o", "name"
            )
            own = {f"namespace/{self.system_namespace}", f"namespace/{self.trust_namespace}"}
            return [n for n in out.stdout.split() if n not in own]

        left = others()
        if left:
            kubectl(self.cluster, "delete", *left, "--wait=false", check=False)
            eventually(
                "earlier test namespaces gone", lambda: not others(), timeout_s=timeout_s, every_s=1
            )

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        kubectl(self.cluster, "create", "namespace", name)
        kubectl(self.cluster, "label", "namespace", name, f"{NS_LABEL}={self.label}")
        # Pods need the namespace's default ServiceAccount; without a
        # controller-manager (control-plane tier) nobody else makes it.
        kubectl(self.cluster, "create", "serviceaccount", "default", "-n", name, check=False)
        eventually(
            "default serviceaccount",
            lambda: (
                kubectl(self.cluster, "get", "sa/default", "-n", name, check=False).returncode == 0
            ),
            timeout_s=30,
        )
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tls_up(port: int, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except OSError:
        return False


class OperatorFailed(Exception):
    pass


@contextmanager
def running_operator(control_plane: Cluster, work: Path, *extra_args: str) -> Iterator[Operator]:
    """Start the operator, point scoped webhook configurations at it; undo both after."""
    kubectl(control_plane, "apply", "--server-side", "-f", str(REPO / "crds"))
    for crd in ("hibernationpolicies", "migrationpolicies", "checkpoints", "persistentcheckpoints"):
        kubectl(
            control_plane,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            f"crd/{crd}.architect.loopholelabs.io",
        )
    kubectl(control_plane, "apply", "-f", "-", stdin=RUNTIME_CLASSES)

    certs = make_serving_cert(["127.0.0.1"])
    (work / "ca.pem").write_bytes(certs.ca_pem)
    (work / "tls.crt").write_bytes(certs.cert_pem)
    (work / "tls.key").write_bytes(certs.key_pem)
    port, metrics_port, transfer_port = _free_port(), _free_port(), _free_port()
    log = work / "operator.log"
    label = uuid.uuid4().hex[:8]
    name = f"architect-e2e-engine-{label}"
    system_ns = f"architect-e2e-sys-{label}"
    trust_ns = f"architect-e2e-trust-{label}"
    for ns in (system_ns, trust_ns):
        kubectl(control_plane, "create", "namespace", ns)
        kubectl(control_plane, "label", "namespace", ns, f"{NS_LABEL}={label}")
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "architect.engine.serve",
                "--webhook-addr",
                "127.0.0.1",
                "--webhook-port",
                str(port),
                "--webhook-host",
                "127.0.0.1",
                "--tls-cert",
                str(work / "tls.crt"),
                "--tls-key",
                str(work / "tls.key"),
                "--metrics-port",
                str(metrics_port),
                "--gc-interval",
                "1s",
                "--consumed-ttl",
                "3s",
                "--sidecar-image",
                "example.test/architect:e2e",
                "--namespace",
                system_ns,
                "--trust-namespace",
                trust_ns,
                "--transfer-port",
                str(transfer_port),
                "--kubeconfig",
                str(control_plane.kubeconfig),
                *extra_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _tls_up(port, work / "ca.pem"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise OperatorFailed(f"operator did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        client = ClientConfig(
            base64.b64encode(certs.ca_pem).decode(), url=f"https://127.0.0.1:{port}"
        )
        scope = Scope(excluded_namespaces=("kube-system",), namespace_labels={NS_LABEL: label})
        mutating, validating = build_configurations(client, scope, name=name)
        kubectl(
            control_plane,
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [mutating, validating]}),
        )
        op = Operator(
            control_plane, port, metrics_port, log, label, system_ns, transfer_port, trust_ns
        )
        eventually("metrics endpoint", lambda: _metrics_up(op), timeout_s=30)
        yield op
    finally:
        kubectl(
            control_plane,
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            name,
            "--ignore-not-found",
            check=False,
        )
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        out = subprocess.run(
            control_plane.kubectl_cmd("get", "ns", "-l", f"{NS_LABEL}={label}", "-o", "name"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for ns in out.stdout.split():
            kubectl(control_plane, "delete", ns, "--wait=false", check=False)


def _metrics_up(op: Operator) -> bool:
    try:
        op.metric("architect_admission_reviews_total")
        return True
    except OSError:
        return False
