"""Resize (on by default) on the e2e node (cgroup v1, Kubernetes 1.33 in-place resize): a
hibernated container's requests go down through pods/resize, and come back on wake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import architect_node, start_daemon
from e2e.tests.cluster.test_daemon_hibernate import (
    _running_pod,
    compile_and_apply,
    http_get,
    states,
    web_pod,
)

pytestmark = pytest.mark.node
__all__ = ["architect_node"]

REQUESTS = {"cpu": "100m", "memory": "64Mi"}


def requests(cluster: Cluster, ns: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec requests, requests the kubelet reports as applied)."""
    pod = get_json(cluster, "pod", "-n", ns, "web")
    spec = pod["spec"]["containers"][0]["resources"].get("requests", {})
    applied = (pod["status"]["containerStatuses"][0].get("resources") or {}).get("requests", {})
    return spec, applied


def test_hibernated_container_gives_its_requests_back(
    architect_node: Cluster, tmp_path: Path
) -> None:
    cluster = architect_node
    pod = copy.deepcopy(web_pod("packets"))
    pod["spec"]["containers"][0]["resources"] = {
        "requests": dict(REQUESTS), "limits": {"memory": "256Mi"}}
    log = tmp_path / "daemon.log"
    with namespace(cluster, "dmnr") as ns:
        compile_and_apply(cluster, ns, pod, tmp_path)
        ip, _ = _running_pod(cluster, ns)
        daemon = start_daemon(cluster, log)
        try:
            eventually("hibernated", lambda: states(cluster, ns) == {"main": "SCALED_DOWN"},
                       timeout_s=90)
            eventually("requests given back in the spec",
                       lambda: requests(cluster, ns)[0] == {"cpu": "1m", "memory": "1Mi"},
                       timeout_s=30)
            eventually("the kubelet applied them",
                       lambda: requests(cluster, ns)[1] == {"cpu": "1m", "memory": "1Mi"},
                       timeout_s=60)
            count, seconds = http_get(ip)
            assert count == 1
            eventually("original requests back after the wake",
                       lambda: requests(cluster, ns)[0] == REQUESTS, timeout_s=30)
            print(f"FIGURE wake with --resize: {seconds:.3f}s")
        finally:
            daemon.kill()
            print(log.read_text()[-3000:])
            kubectl(cluster, "delete", "pod", "-n", ns, "web", "--wait=true", "--timeout=60s",
                    check=False)
