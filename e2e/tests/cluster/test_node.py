"""The node tier really runs pods: exec, in-place resize, the API from inside a pod."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.pytest_cluster import UP, Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace

pytestmark = pytest.mark.node

BUSYBOX = "architect.local/busybox:1.35"
PYTHON = "architect.local/python:3.11"


def _pod(name: str, image: str, command: list[str], resources: dict[str, Any] | None = None,
         restart: str = "Never") -> str:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": command}
    if resources:
        container["resources"] = resources
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 0, "restartPolicy": restart,
                 "containers": [container]},
    })


def test_pod_runs_and_exec_reaches_it(node_cluster: Cluster) -> None:
    with namespace(node_cluster, "run") as ns:
        kubectl(node_cluster, "apply", "-n", ns, "-f", "-",
                stdin=_pod("bb", BUSYBOX, ["sh", "-c", "echo started; sleep 3600"]))
        kubectl(node_cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/bb",
                "--timeout=90s")
        out = kubectl(node_cluster, "exec", "-n", ns, "bb", "--", "sh", "-c",
                      "echo $((6*7)) $(hostname)").stdout.split()
        assert out == ["42", "bb"]
        assert kubectl(node_cluster, "logs", "-n", ns, "bb").stdout.strip() == "started"
        pod = get_json(node_cluster, "pod", "-n", ns, "bb")
        assert pod["status"]["podIP"].startswith("10.244.0.")


def test_pod_reaches_the_api_server_through_the_kubernetes_service(node_cluster: Cluster) -> None:
    script = (
        "import os, ssl, urllib.request\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "ca = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'\n"
        "ctx = ssl.create_default_context(cafile=ca)\n"
        "print(urllib.request.urlopen(f'https://{host}/version', context=ctx, timeout=10).read()"
        ".decode())\n"
    )
    with namespace(node_cluster, "api") as ns:
        kubectl(node_cluster, "apply", "-n", ns, "-f", "-",
                stdin=_pod("py", PYTHON, ["python3", "-c", script]))

        def done() -> bool:
            phase = get_json(node_cluster, "pod", "-n", ns, "py")["status"].get("phase")
            return phase in ("Succeeded", "Failed")

        eventually("the python pod to finish", done, timeout_s=90)
        logs = kubectl(node_cluster, "logs", "-n", ns, "py").stdout
        pod = get_json(node_cluster, "pod", "-n", ns, "py")
        assert pod["status"]["phase"] == "Succeeded", logs
        assert json.loads(logs)["major"] == "1"


def test_in_place_resize_changes_the_containers_cgroup(node_cluster: Cluster) -> None:
    quota = "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    with namespace(node_cluster, "resize") as ns:
        kubectl(node_cluster, "apply", "-n", ns, "-f", "-", stdin=_pod(
            "r", BUSYBOX, ["sleep", "3600"], restart="Always",
            resources={"requests": {"cpu": "100m", "memory": "32Mi"},
                       "limits": {"cpu": "100m", "memory": "32Mi"}}))
        kubectl(node_cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/r",
                "--timeout=90s")
        assert kubectl(node_cluster, "exec", "-n", ns, "r", "--", "sh", "-c",
                       quota).stdout.strip() == "10000"
        patch = {"spec": {"containers": [{"name": "main", "resources": {
            "requests": {"cpu": "300m"}, "limits": {"cpu": "300m"}}}]}}
        kubectl(node_cluster, "patch", "-n", ns, "pod/r", "--subresource", "resize",
                "--patch", json.dumps(patch))

        def resized() -> bool:
            status = get_json(node_cluster, "pod", "-n", ns, "r")["status"]
            limits = (status["containerStatuses"][0].get("resources") or {}).get("limits", {})
            return bool(limits.get("cpu") == "300m")

        eventually("the kubelet to report the resized limit", resized, timeout_s=60)
        # The same process keeps running, with the new CFS quota.
        status = get_json(node_cluster, "pod", "-n", ns, "r")["status"]
        assert status["containerStatuses"][0]["restartCount"] == 0
        assert kubectl(node_cluster, "exec", "-n", ns, "r", "--", "sh", "-c",
                       quota).stdout.strip() == "30000"


def test_runtime_handler_drop_in_reaches_containerd(node_cluster: Cluster) -> None:
    """The extension point other parts use for runc-architect: a TOML drop-in."""
    dropin = Path("/etc/architect-e2e/containerd-runtimes.d/zz-e2e-check.toml")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.e2e-check]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.e2e-check.options]\n'
        '  BinaryName = "/usr/sbin/runc"\n'
        '  Root = "/run/architect-e2e/runc-e2e-check"\n')
    try:
        subprocess.run([str(UP)], check=True, capture_output=True, timeout=600)
        assert "runtimes.e2e-check" in Path(
            "/var/lib/architect-e2e/containerd/config.toml").read_text()
        kubectl(node_cluster, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "e2e-check"}, "handler": "e2e-check"}))
        with namespace(node_cluster, "rtc") as ns:
            pod = json.loads(_pod("h", BUSYBOX, ["sleep", "3600"]))
            pod["spec"]["runtimeClassName"] = "e2e-check"
            kubectl(node_cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
            kubectl(node_cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/h",
                    "--timeout=90s")
            # The container's runc state lives under the handler's own root.
            assert any(Path("/run/architect-e2e/runc-e2e-check/k8s.io").iterdir())
    finally:
        dropin.unlink(missing_ok=True)
        kubectl(node_cluster, "delete", "runtimeclass", "e2e-check", "--ignore-not-found",
                check=False)
        subprocess.run([str(UP)], check=False, capture_output=True, timeout=600)
