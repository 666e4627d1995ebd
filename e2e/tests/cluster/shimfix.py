"""Shared fixtures for tests that run pods through Architect's shim on the e2e node.

``architect_node``: containerd knows the runc-architect / runsc-architect handlers
(drop-in + `e2e/cluster/up`), the RuntimeClasses and the CRDs exist. The drop-in
is removed again afterwards. ``start_daemon``: the node daemon as a host
subprocess against the e2e kubeconfig. ``ready_pod``, ``shim_record`` and
friends: the handover tests' view of a Deployment's pods and of the shim.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from architect.runtime.shim.client import request
from e2e.pytest_cluster import NODE, UP, Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, wait_architect_pods_gone

ROOT = Path(__file__).resolve().parents[3]
DROPIN = Path("/etc/architect-e2e/containerd-runtimes.d/architect.toml")
SHIM_RUN = Path("/run/architect/shim")
SHIM_STATE = Path("/var/lib/architect/shim")
HANDOVER = SHIM_STATE / "handover"
KUBELET_ROOT = "/var/lib/architect-e2e/kubelet"


def shim_control(container_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """One request on a container's shim control socket, through the shim's own client."""
    return asyncio.run(request(SHIM_RUN / "k8s.io" / container_id, message))


def shim_record(container_id: str) -> dict[str, Any]:
    """The shim's status record of one container."""
    reply = shim_control(container_id, {"op": "status"})
    recs: list[dict[str, Any]] = [c for c in reply["containers"] if c["id"] == container_id]
    assert len(recs) == 1, reply
    return recs[0]


def container_id(pod: dict[str, Any], index: int = 0) -> str:
    cid: str = pod["status"]["containerStatuses"][index]["containerID"]
    return cid.removeprefix("containerd://")


def live_pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    """Pods matching ``selector`` that are not being deleted."""
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pod(cluster: Cluster, ns: str, selector: str, not_named: str = "",
              timeout_s: float = 120) -> dict[str, Any]:
    """A Ready pod matching ``selector`` (other than ``not_named``); bounded wait, and
    the namespace's events in the failure."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        for p in live_pods(cluster, ns, selector):
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if p["metadata"]["name"] != not_named and conds.get("Ready") == "True":
                found[:] = [p]
                return True
        return False

    try:
        eventually(f"a Ready pod {selector}", ready, timeout_s=timeout_s)
    except AssertionError:
        events = kubectl(cluster, "get", "events", "-n", ns, check=False).stdout
        raise AssertionError(f"no Ready pod {selector} in {ns}; events:\n{events[-3000:]}") from None
    return found[0]


def remove_handover(template_hash: str) -> None:
    shutil.rmtree(HANDOVER / template_hash, ignore_errors=True)


def left_handover(template_hash: str, container: str = "main") -> Path:
    """The handover directory a deleted pod of the template left on this node
    (runtime/shim/plan.py source_slot); the first one, or a path that does not
    exist when none is there yet."""
    found = sorted((HANDOVER / template_hash / container).glob("from_*"))
    return found[0] if found else HANDOVER / template_hash / container / "from_none"


@pytest.fixture(scope="module")
def architect_node(node_cluster: Cluster) -> Iterator[Cluster]:
    DROPIN.parent.mkdir(parents=True, exist_ok=True)
    DROPIN.write_text((ROOT / "runtime/shim/deploy/containerd-architect.toml").read_text())
    try:
        subprocess.run([str(UP)], check=True, capture_output=True, timeout=600)
        kubectl(node_cluster, "apply", "-f", str(ROOT / "runtime/shim/deploy/runtimeclasses.yaml"))
        kubectl(node_cluster, "apply", "-f", str(ROOT / "crds"))
        yield node_cluster
        wait_architect_pods_gone(node_cluster)
    finally:
        DROPIN.unlink(missing_ok=True)
        subprocess.run([str(UP)], check=False, capture_output=True, timeout=600)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_daemon(cluster: Cluster, log: Path, *extra: str) -> Daemon:
    """The daemon on the host, ready once its watches have listed (bounded wait)."""
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "architect.runtime.daemon", "--node", NODE,
         "--kubeconfig", str(cluster.kubeconfig), "--tick", "0.5", "--metrics-port", "0",
         "--kubelet-root", KUBELET_ROOT, "--state-dir", str(log.parent / "daemon-state"),
         "--log-level", "DEBUG", *extra],
        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    d = Daemon(proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "watching, tick" in d.text():
            return d
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{d.text()[-4000:]}")
        time.sleep(0.2)
    d.kill()
    raise AssertionError(f"daemon not ready in 60s:\n{d.text()[-4000:]}")
