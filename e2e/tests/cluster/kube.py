"""Small kubectl helpers for the cluster tests (every wait is bounded)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from e2e.pytest_cluster import Cluster

TIMEOUT_S = 120


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cluster.kubectl_cmd(*args), input=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)


def eventually(what: str, probe: Callable[[], bool], timeout_s: float = 60,
               every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s: {what}")


@contextmanager
def namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(cluster, "create", "namespace", name)
    try:
        yield name
    finally:
        kubectl(cluster, "delete", "namespace", name, "--wait=false", check=False)


CONTAINERD_SOCK = "/run/architect-e2e/containerd/containerd.sock"
ARCHITECT_RUNTIME = "io.containerd.architect.v1"


def _ctr(*args: str) -> str:
    proc = subprocess.run(["ctr", "--address", CONTAINERD_SOCK, "-n", "k8s.io", *args],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def architect_tasks() -> set[str]:
    """Running containerd tasks of Architect's shim on the e2e node."""
    ours = {line.split()[0] for line in _ctr("containers", "ls").splitlines()[1:]
            if line.split()[-1:] == [ARCHITECT_RUNTIME]}
    return {line.split()[0] for line in _ctr("tasks", "ls").splitlines()[1:]} & ours


def wait_architect_pods_gone(cluster: Cluster, timeout_s: float = 120) -> None:
    """Wait (bounded) until no pod with an Architect runtime class is left, in the
    API and in containerd.

    Fixtures call this before they remove the handlers and restart containerd: a
    restart while the kubelet stops such a pod fails the stop, and a pod deleted
    with grace period 0 leaves the API before the kubelet has stopped it, so the
    sandbox would outlive it.
    """
    from architect.policy.annotations import RUNTIME_CLASSES

    def gone() -> bool:
        pods = get_json(cluster, "pods", "-A")["items"]
        if any(p["spec"].get("runtimeClassName") in RUNTIME_CLASSES for p in pods):
            return False
        return not architect_tasks()

    eventually("pods with Architect runtime classes are gone", gone, timeout_s=timeout_s,
               every_s=1)
