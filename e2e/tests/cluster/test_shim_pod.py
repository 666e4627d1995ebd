"""A runc-architect pod on the e2e node runs through Architect's shim, and hibernates
under kubelet's eyes: the pod stays Running with no restart, its process is gone, and
`kubectl exec` wakes it with its state intact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import architect_node, shim_control  # noqa: F401

pytestmark = pytest.mark.node

# Write then rename: `echo > /tmp/count` truncates first, so a reader could see "".
COUNTER = ("i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; "
           "mv /tmp/count.new /tmp/count; sleep 1; done")


def test_runc_architect_pod_hibernates_and_exec_wakes_it(architect_node: Cluster) -> None:  # noqa: F811
    cluster = architect_node
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "counter"},
        "spec": {
            "runtimeClassName": "runc-architect",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "architect.local/busybox:1.35",
                            "imagePullPolicy": "Never", "command": ["sh", "-c", COUNTER]}],
        },
    }
    with namespace(cluster, "shim") as ns:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
        kubectl(cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/counter", "--timeout=90s")
        status = get_json(cluster, "pod", "-n", ns, "counter")["status"]["containerStatuses"][0]
        container_id = status["containerID"].removeprefix("containerd://")

        # The container runs through Architect's shim, not containerd's runc shim.
        shim = shim_control(container_id, {"op": "status"})
        (entry,) = [c for c in shim["containers"] if c["id"] == container_id]
        pid = entry["pid"]
        assert Path(f"/proc/{pid}").exists()
        eventually("the counter reaches 3", lambda: int(kubectl(
            cluster, "exec", "-n", ns, "counter", "--", "cat", "/tmp/count").stdout) >= 3)
        before = int(kubectl(cluster, "exec", "-n", ns, "counter", "--", "cat", "/tmp/count").stdout)

        reply = shim_control(container_id, {"op": "hibernate", "id": container_id})
        assert reply["ok"] and reply["hibernated"], reply
        assert not Path(f"/proc/{pid}").exists(), "the hibernated process must be gone"
        # Kubelet keeps seeing a running, ready container; nothing restarts it.
        subprocess.run(["sleep", "6"], check=True)
        seen = get_json(cluster, "pod", "-n", ns, "counter")["status"]
        assert seen["phase"] == "Running"
        assert seen["containerStatuses"][0]["ready"] is True
        assert seen["containerStatuses"][0]["restartCount"] == 0

        # kubectl exec wakes it; the counter carries on from where it stopped
        # (a fresh start would count from 1, a process that ran on would be >= before+6).
        after = int(kubectl(cluster, "exec", "-n", ns, "counter", "--", "cat", "/tmp/count").stdout)
        assert before <= after < before + 6, (before, after)
        eventually("the woken counter runs on", lambda: int(kubectl(
            cluster, "exec", "-n", ns, "counter", "--", "cat", "/tmp/count").stdout) > after)
        final = get_json(cluster, "pod", "-n", ns, "counter")["status"]["containerStatuses"][0]
        assert final["restartCount"] == 0
