"""The node daemon makes a runc-architect pod hibernate by itself and wakes it on traffic.

A real pod on the e2e node (shim + CRIU), its annotations compiled by `architect
compile` and applied as policies, the daemon as a host process: idle -> SCALED_DOWN
with the process gone and the pod still Ready; a TCP request from the host is held,
wakes it and is answered with the in-memory counter continuing; connections mode
keeps it up while a connection is open; a daemon killed while the container is
hibernated is replaced and the next request still wakes it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.product import COUNTER, count_of
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import (
    KUBELET_ROOT,
    architect_node,
    shim_control,
    start_daemon,
)

pytestmark = pytest.mark.node
__all__ = ["architect_node"]  # the fixture, imported for pytest

STATUS = "architect.loopholelabs.io/status"


def web_pod(mode: str) -> dict[str, Any]:
    """The seed's counter app (e2e.product.COUNTER), its count kept only in memory:
    a restart would count from 1 again, so a continuing count proves the state
    came back."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "labels": {"app": "web"},
            "annotations": {
                "architect.loopholelabs.io/managed-containers": '["main"]',
                "architect.loopholelabs.io/scaledown-durations": '{"main":"3s"}',
                "architect.loopholelabs.io/network-monitor": json.dumps({"main": mode}),
            },
        },
        "spec": {
            "runtimeClassName": "runc-architect",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": "architect.local/python:3.11",
                "imagePullPolicy": "Never", "command": ["python3", "-c", COUNTER],
                "ports": [{"containerPort": 8080}],
                # In a full install the health-proxy sidecar mounts it; the
                # kubelet sets up only volumes some container mounts.
                "volumeMounts": [{"name": "architect-run", "mountPath": "/run/architect",
                                  "readOnly": True}],
            }],
            # The volume admission adds for the health-check proxy: the daemon
            # writes the status file into it.
            "volumes": [{"name": "architect-run", "emptyDir": {"medium": "Memory"}}],
        },
    }


def compile_and_apply(cluster: Cluster, ns: str, obj: dict[str, Any], tmp: Path,
                      source: dict[str, Any] | None = None) -> None:
    """`architect compile` the annotations (of ``source``, default ``obj``), apply
    the policies, then the object."""
    src = tmp / "workload.json"
    src.write_text(json.dumps(source or obj))
    compiled = subprocess.run(["architect", "compile", "-f", str(src)], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=compiled)
    kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(obj))


def states(cluster: Cluster, ns: str, pod: str = "web") -> dict[str, str]:
    obj = get_json(cluster, "pod", "-n", ns, pod)
    raw = (obj["metadata"].get("annotations") or {}).get(STATUS)
    out: dict[str, str] = json.loads(raw) if raw else {}
    return out


def wait_serving(ip: str, port: int = 8080) -> None:
    """Ready means started, not listening (no readiness probe: a probe would be
    traffic). Wait for the listener with bare connects, which count nothing."""
    def accepts() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=2):
                return True
        except OSError:
            return False

    eventually(f"{ip}:{port} accepts connections", accepts, timeout_s=60)


def http_get(ip: str, timeout: float = 60) -> tuple[int, float]:
    """The counter, and the seconds from the first SYN to the answer."""
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=timeout) as r:
        body = r.read()
    return count_of(body.decode()), time.monotonic() - t0


def shim_entry(container_id: str) -> dict[str, Any]:
    reply = shim_control(container_id, {"op": "status"})
    entries: list[dict[str, Any]] = [c for c in reply["containers"] if c["id"] == container_id]
    assert len(entries) == 1, reply
    return entries[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def events(cluster: Cluster, ns: str) -> list[str]:
    items = get_json(cluster, "events", "-n", ns)["items"]
    return [e["reason"] for e in items if e.get("source", {}).get("component") == "architect"]


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "daemon.log"
    yield log
    if log.exists():  # shown by pytest when the test failed
        print(log.read_text(errors="replace")[-6000:])


def _running_pod(cluster: Cluster, ns: str) -> tuple[str, str]:
    kubectl(cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/web", "--timeout=90s")
    st = get_json(cluster, "pod", "-n", ns, "web")["status"]
    wait_serving(st["podIP"])
    return st["podIP"], st["containerStatuses"][0]["containerID"].removeprefix("containerd://")


def test_idle_hibernates_request_wakes_daemon_restart_adopts(
    architect_node: Cluster, tmp_path: Path, daemon_log: Path
) -> None:
    cluster = architect_node
    with namespace(cluster, "dmn") as ns:
        compile_and_apply(cluster, ns, web_pod("packets"), tmp_path)
        ip, cid = _running_pod(cluster, ns)
        first, _ = http_get(ip)
        pid = shim_entry(cid)["pid"]
        port = free_port()
        daemon = start_daemon(cluster, daemon_log, "--metrics-port", str(port),
                              "--metrics-host", "127.0.0.1")
        try:
            # (a) idle for 3s -> hibernated; kubelet still sees a healthy pod.
            eventually("the daemon hibernates the idle container",
                       lambda: states(cluster, ns) == {"main": "SCALED_DOWN"}, timeout_s=90)
            uid = get_json(cluster, "pod", "-n", ns, "web")["metadata"]["uid"]
            status_file = Path(KUBELET_ROOT, "pods", uid,
                               "volumes/kubernetes.io~empty-dir/architect-run/status.json")
            assert json.loads(status_file.read_text()) == {"main": "SCALED_DOWN"}
            assert shim_entry(cid)["hibernated"] is True
            assert not Path(f"/proc/{pid}").exists(), "the hibernated process must be gone"
            st = get_json(cluster, "pod", "-n", ns, "web")["status"]
            assert st["phase"] == "Running"
            assert st["containerStatuses"][0]["ready"] is True
            assert st["containerStatuses"][0]["restartCount"] == 0

            # (b) a request is held, wakes the container, gets the next count.
            count, seconds = http_get(ip)
            assert count == first + 1, (first, count)
            print(f"FIGURE first SYN to answer through daemon+shim+CRIU: {seconds:.3f}s")
            print(f"FIGURE daemon RSS: {rss_kib(daemon.proc.pid) / 1024:.1f} MiB")
            assert shim_entry(cid)["hibernated"] is False
            eventually("status back to RUNNING",
                       lambda: states(cluster, ns) == {"main": "RUNNING"}, timeout_s=30)
            eventually("transition events posted",
                       lambda: {"Hibernated", "Woken"} <= set(events(cluster, ns)))
            assert json.loads(status_file.read_text()) == {"main": "RUNNING"}
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                scraped = r.read().decode()
            assert 'architect_wake_total{reason="packet"} 1.0' in scraped
            assert 'architect_containers{state="RUNNING"} 1.0' in scraped
            assert "architect_restore_duration_seconds_count" in scraped

            # (d) hibernated again, the daemon dies, a new one adopts the container.
            eventually("hibernated again",
                       lambda: states(cluster, ns) == {"main": "SCALED_DOWN"}, timeout_s=90)
            daemon.kill(signal.SIGKILL)
            daemon = start_daemon(cluster, daemon_log)
            eventually("the new daemon adopted the hibernated container",
                       lambda: "adopted as SCALED_DOWN" in daemon.text(), timeout_s=30)
            count2, seconds2 = http_get(ip)
            assert count2 == count + 1, (count, count2)
            print(f"FIGURE wake after daemon restart: {seconds2:.3f}s")
            final = get_json(cluster, "pod", "-n", ns, "web")["status"]["containerStatuses"][0]
            assert final["restartCount"] == 0
            assert "Traceback" not in daemon.text()
        finally:
            kubectl(cluster, "delete", "pod", "-n", ns, "web", "--wait=true", "--timeout=60s",
                    check=False)
            daemon.kill()


def test_connections_mode_open_connection_keeps_it_awake(
    architect_node: Cluster, tmp_path: Path, daemon_log: Path
) -> None:
    cluster = architect_node
    with namespace(cluster, "dmnc") as ns:
        compile_and_apply(cluster, ns, web_pod("connections"), tmp_path)
        ip, _ = _running_pod(cluster, ns)
        daemon = start_daemon(cluster, daemon_log)
        try:
            eventually("tracked", lambda: states(cluster, ns) == {"main": "RUNNING"}, timeout_s=30)
            # An open (idle) connection: three scaledown periods pass, still awake.
            with socket.create_connection((ip, 8080), timeout=10):
                time.sleep(10)
                assert states(cluster, ns) == {"main": "RUNNING"}
            eventually("closing the connection lets it hibernate",
                       lambda: states(cluster, ns) == {"main": "SCALED_DOWN"}, timeout_s=60)
            # A new connection wakes it (the SYN is held meanwhile).
            count, seconds = http_get(ip)
            assert count >= 1
            print(f"FIGURE connections-mode wake: {seconds:.3f}s")
            eventually("awake", lambda: states(cluster, ns) == {"main": "RUNNING"}, timeout_s=30)
        finally:
            kubectl(cluster, "delete", "pod", "-n", ns, "web", "--wait=true", "--timeout=60s",
                    check=False)
            daemon.kill()


def test_exec_wake_reported_by_the_shim_is_followed(
    architect_node: Cluster, tmp_path: Path, daemon_log: Path
) -> None:
    """kubectl exec wakes the container inside the shim; the daemon hears it on the
    watch stream, marks it RUNNING and drops the hold, so traffic flows at once."""
    cluster = architect_node
    with namespace(cluster, "dmne") as ns:
        compile_and_apply(cluster, ns, web_pod("packets"), tmp_path)
        ip, cid = _running_pod(cluster, ns)
        first, _ = http_get(ip)
        daemon = start_daemon(cluster, daemon_log)
        try:
            eventually("hibernated", lambda: states(cluster, ns) == {"main": "SCALED_DOWN"},
                       timeout_s=90)
            out = kubectl(cluster, "exec", "-n", ns, "web", "--", "python3", "-c", "print(42)")
            assert out.stdout.strip() == "42"
            assert shim_entry(cid)["hibernated"] is False
            eventually("the daemon followed the exec wake",
                       lambda: "woken by exec" in daemon.text(), timeout_s=30)
            count, _ = http_get(ip, timeout=10)
            assert count == first + 1
        finally:
            kubectl(cluster, "delete", "pod", "-n", ns, "web", "--wait=true", "--timeout=60s",
                    check=False)
            daemon.kill()
