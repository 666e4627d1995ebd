"""The node tier really runs pods: exec, in-place resize, the API from inside a pod."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.pytest_cluster import Cluster
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
