"""A runsc-architect pod with networking on the e2e node: gVisor's sandbox takes the
CNI-made pod network namespace (runsc built from gVisor's Go module; Debian's refuses
on this kernel) and serves HTTP on the pod IP. (Such a pod hibernates as one sandbox:
test_runsc_hibernate.py.)"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import (
    apply_ready,
    architect_tasks,
    eventually,
    kubectl,
    namespace,
    runsc_pod,
)
from e2e.tests.cluster.shimfix import SHIM_RUN, architect_node, shim_control  # noqa: F401

pytestmark = pytest.mark.node

SCRIPT = ("mkdir -p /www && echo gvisor > /www/index.html && httpd -p 8080 -h /www && "
          "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done")


def _http(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
        return str(r.read().decode())


def _answers(ip: str) -> bool:
    try:
        return _http(ip) == "gvisor\n"
    except OSError:
        return False


def test_runsc_architect_pod_serves_on_its_pod_ip(architect_node: Cluster) -> None:  # noqa: F811
    cluster = architect_node
    with namespace(cluster, "gvisor") as ns:
        status = apply_ready(cluster, ns, runsc_pod(SCRIPT))["status"]
        ip = status["podIP"]
        cid = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        (rec,) = [c for c in shim_control(cid, {"op": "status"})["containers"] if c["id"] == cid]
        assert rec["runtime"] == "runsc", rec
        # The sandbox's own netstack answers on the pod IP that CNI gave the netns.
        eventually("httpd in gVisor answers on the pod IP", lambda: _answers(ip), timeout_s=30)
        kernel_log = kubectl(cluster, "exec", "-n", ns, "gv", "--", "dmesg").stdout
        assert "gVisor" in kernel_log, kernel_log[:200]  # gVisor's kernel log, not the host's


        # Deleting the pod stops it: the app container's exit inside the sandbox
        # reaches containerd (runsc wait), then the sandbox's own.
        shim_pid = shim_control(cid, {"op": "status"})["shim_pid"]
        kubectl(cluster, "delete", "-n", ns, "pod/gv", "--wait=true", "--timeout=60s")
        eventually("containerd has no task left of the pod",
                   lambda: not ({cid} & architect_tasks()), timeout_s=60)
        # One shim serves every pod of the node: the pod's control link goes with
        # the pod, and the shim exits once no container is left in it.
        eventually("the pod's control link is gone",
                   lambda: not (SHIM_RUN / "k8s.io" / cid).exists(), timeout_s=60)
        if not architect_tasks():
            eventually("the node's shim exits", lambda: not Path(f"/proc/{shim_pid}").exists(),
                       timeout_s=60)
