"""Small kubectl helpers for the cluster tests (every wait is bounded)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from e2e import product
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


def runsc_pod(script: str, **container: Any) -> dict[str, Any]:
    """Pod "gv" under runsc-architect: busybox running ``script``; ``container``
    adds fields to its one container (ports, say)."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gv"},
        "spec": {
            "runtimeClassName": "runsc-architect", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "architect.local/busybox:1.35",
                            "imagePullPolicy": "Never", "command": ["sh", "-c", script],
                            **container}],
        },
    }


def apply_ready(cluster: Cluster, ns: str, pod: dict[str, Any],
                timeout_s: int = 120) -> dict[str, Any]:
    """Apply ``pod`` in ``ns`` and wait (bounded) until it is Ready; the pod then.
    Not Ready in time: an AssertionError with the namespace's last Events."""
    name = pod["metadata"]["name"]
    kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
    done = kubectl(cluster, "wait", "-n", ns, "--for=condition=Ready", f"pod/{name}",
                   f"--timeout={timeout_s}s", check=False)
    if done.returncode != 0:
        events = kubectl(cluster, "get", "events", "-n", ns, check=False).stdout
        kind = pod["spec"].get("runtimeClassName", "")
        raise AssertionError(f"{kind} pod {name} not Ready:\n{events[-3000:]}")
    return dict(get_json(cluster, "pod", "-n", ns, name))


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


# A gVisor pod's state in memory: a shell counts, busybox httpd serves the count.
RUNSC_COUNTER = ("mkdir -p /www && httpd -p 8080 -h /www && "
                 "i=0; while true; do i=$((i+1)); echo $i > /www/index.html; sleep 1; done")


def runsc_count(ip: str) -> int | None:
    """RUNSC_COUNTER's count on ``ip`` (None: nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=3) as r:
            return int(r.read().decode().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def product_release(cluster: Cluster, what: str,
                    extra: list[str] | None = None) -> Iterator[product.Kube]:
    """The chart installed (the daemon at DEBUG) for a module's tests, and
    uninstalled whatever happens: a release left behind answers the later tests'
    pods (its webhooks, its daemon), so a pods-gone timeout must not skip it."""
    k = product.Kube(cluster.kubeconfig, cluster.context, cluster.kubectl)
    try:
        took = product.install(k, extra=["--set", "daemon.logLevel=DEBUG", *(extra or [])])
        print(f"\n{what}: helm install to daemon Ready {took:.1f}s")
        yield k
    finally:
        try:
            wait_architect_pods_gone(cluster)
        finally:
            product.uninstall(k)
