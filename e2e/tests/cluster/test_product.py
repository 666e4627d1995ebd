"""The product as a user gets it: `helm install` of charts/architect on the e2e node,
nothing started by hand.

The daemon runs as the chart's DaemonSet pod; its init container (`architect node
install`) puts the shim's payload on the node, writes containerd's runtime
handlers and restarts containerd; the seed's Deployment (runc-architect,
managed-containers, scaledown-durations, network-monitor packets) then
hibernates by itself, is resized down, and wakes on a request or `kubectl exec`
with its in-memory counter continuing. `daemon.resize=false` keeps requests.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import product
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import namespace, product_release
from e2e.tests.cluster.shimfix import container_id, shim_record

pytestmark = pytest.mark.node

APP = "my-app"
CONTAINER = f"{APP}-container"


@pytest.fixture(scope="module")
def kube(node_cluster: Cluster) -> Iterator[product.Kube]:
    with product_release(node_cluster, "product") as k:
        yield k


def _daemon_pod(kube: product.Kube) -> dict[str, Any]:
    pods = kube.json("pods", "-n", product.NAMESPACE, "-l", "app.kubernetes.io/component=daemon")
    assert len(pods["items"]) == 1, pods["items"]
    return dict(pods["items"][0])


def _daemon_log(kube: product.Kube) -> str:
    return kube.run("logs", "-n", product.NAMESPACE, "-l", "app.kubernetes.io/component=daemon",
                    "--tail=200", check=False).stdout


def _process(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def _requests(kube: product.Kube, ns: str, pod: str) -> dict[str, str]:
    spec = kube.json("pod", "-n", ns, pod)["spec"]["containers"][0]
    return dict(spec.get("resources", {}).get("requests") or {})


def _restarts(kube: product.Kube, ns: str, pod: str) -> int:
    st = kube.json("pod", "-n", ns, pod)["status"]["containerStatuses"][0]
    return int(st["restartCount"])


def _wait_state(kube: product.Kube, ns: str, pod: str, want: str, timeout_s: float = 120) -> float:
    def there() -> bool:
        return product.status_of(kube, ns, pod).get(CONTAINER) == want

    try:
        return product.eventually(f"{pod} {CONTAINER} {want}", there, timeout_s, 0.25)
    except product.ProductError:
        raise AssertionError(f"{pod} never {want}: status {product.status_of(kube, ns, pod)}; "
                             f"daemon log:\n{_daemon_log(kube)[-4000:]}") from None


def test_the_chart_sets_up_the_node(kube: product.Kube) -> None:
    pod = _daemon_pod(kube)
    init = pod["status"]["initContainerStatuses"][0]
    assert init["name"] == "install-node" and init["state"]["terminated"]["exitCode"] == 0
    current = product.NODE_PREFIX / "current"
    assert (current / "usr/local/lib/python3.11/dist-packages/architect").is_dir()
    dropin = tomllib.loads((product.NODE_DROPINS / "architect.toml").read_text())
    runtimes = dropin["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    launcher = str(product.NODE_PREFIX / "bin" / "containerd-shim-architect-v1")
    assert runtimes["runc-architect"]["runtime_path"] == launcher
    # The daemon runs in the pod, with the flags the values ask for.
    args = pod["spec"]["containers"][0]["args"]
    assert "--resize" in args and "--kubelet-root=/var/lib/architect-e2e/kubelet" in args


def test_seed_app_hibernates_resizes_and_wakes_on_a_packet(kube: product.Kube) -> None:
    with namespace(Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl), "product") as ns:
        kube.run("apply", "-n", ns, "-f", "-",
                 stdin=json.dumps(product.counter_deployment(APP, scaledown="4s")))
        t0 = time.monotonic()
        pod = product.ready_pod(kube, ns, APP)
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        product.wait_listening(ip)
        cold = time.monotonic() - t0
        # Admission compiled the annotations into a policy owned by the workload.
        hps = kube.json("hibernationpolicies", "-n", ns)["items"]
        assert len(hps) == 1, hps
        body, _ = product.http_get(ip)
        first = product.count_of(body)
        rec = shim_record(container_id(pod))
        assert not rec["hibernated"] and "python3 -c" in _process(rec["pid"])
        # The shim that runs it (the app's parent: the shim is its subreaper) is
        # the chart's payload, not a host install.
        shim = _process(_parent(rec["pid"]))
        assert f"{product.NODE_PREFIX}/current/usr/bin/python3.11 -I -m architect.runtime.shim" \
            in shim, shim

        _wait_state(kube, ns, name, "SCALED_DOWN")
        rec = shim_record(container_id(pod))
        assert rec["hibernated"], rec
        assert "python3 -c" not in _process(rec["pid"]), "the app's process is still there"
        requests = _requests(kube, ns, name)
        product.eventually("requests given back", lambda: _requests(kube, ns, name)
                           != {"cpu": "250m", "memory": "512Mi"}, 30)
        requests = _requests(kube, ns, name)
        assert requests != {"cpu": "250m", "memory": "512Mi"}, requests

        body, wake = product.http_get(ip)
        assert product.count_of(body) == first + 1, f"state lost: {body!r} after {first}"
        print(f"\nproduct: wake on packet {wake * 1000:.0f} ms; cold start {cold:.2f}s "
              f"({wake / cold:.2f}x)")
        _wait_state(kube, ns, name, "RUNNING", 30)
        product.eventually("requests restored", lambda: _requests(kube, ns, name)
                           == {"cpu": "250m", "memory": "512Mi"}, 30)
        assert _restarts(kube, ns, name) == 0

        # kubectl exec wakes it too, and the app goes on counting.
        _wait_state(kube, ns, name, "SCALED_DOWN")
        out = kube.run("exec", "-n", ns, name, "-c", CONTAINER, "--", "sh", "-c",
                       "echo exec-ok", timeout=90)
        assert out.stdout.strip() == "exec-ok"
        _wait_state(kube, ns, name, "RUNNING", 30)
        body, _ = product.http_get(ip)
        assert product.count_of(body) == first + 2, body
        assert _restarts(kube, ns, name) == 0


def test_bad_annotation_is_refused_at_apply(kube: product.Kube) -> None:
    with namespace(Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl), "product") as ns:
        dep = product.counter_deployment("bad", scaledown="soon")
        proc = kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(dep), check=False)
        assert proc.returncode != 0
        err = proc.stderr
        assert "architect.loopholelabs.io/scaledown-durations" in err and "soon" in err, err


def test_resize_false_keeps_requests(kube: product.Kube) -> None:
    product.install(kube, extra=["--set", "daemon.resize=false"])
    try:
        assert "--no-resize" in _daemon_pod(kube)["spec"]["containers"][0]["args"]
        cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
        with namespace(cluster, "product") as ns:
            kube.run("apply", "-n", ns, "-f", "-",
                     stdin=json.dumps(product.counter_deployment(APP, scaledown="3s")))
            pod = product.ready_pod(kube, ns, APP)
            name = pod["metadata"]["name"]
            _wait_state(kube, ns, name, "SCALED_DOWN")
            time.sleep(3)  # several ticks: a resize would have been issued by now
            assert _requests(kube, ns, name) == {"cpu": "250m", "memory": "512Mi"}
    finally:
        product.install(kube)


# Burns ~200 ms of CPU every second (200 millicores, four times the busy mark) and
# serves nothing: only the cgroup's CPU counter says it works.
BUSY = """
import time
while True:
    t = time.monotonic()
    while time.monotonic() - t < 0.2:
        pass
    time.sleep(0.8)
"""


def _without_network_monitor(name: str, command: str) -> dict[str, Any]:
    dep = product.counter_deployment(name, scaledown="3s")
    tpl = dep["spec"]["template"]
    del tpl["metadata"]["annotations"]["architect.loopholelabs.io/network-monitor"]
    c = tpl["spec"]["containers"][0]
    c["command"] = ["python3", "-c", command]
    c["resources"] = {"requests": {"memory": "64Mi", "cpu": "250m"}}
    return dep


def test_busy_container_without_network_monitor_stays_up(kube: product.Kube) -> None:
    """Without network-monitor only the container's cgroup tells work from idle: the
    DaemonSet pod reads the node's cgroupfs (daemon.cgroupRoot), so a busy one is
    kept running and an idle one beside it hibernates."""
    with namespace(Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl), "product") as ns:
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "List", "items": [
                _without_network_monitor("busy", BUSY),
                _without_network_monitor("idle", "import time; time.sleep(86400)"),
            ]}))
        busy = product.ready_pod(kube, ns, "busy")["metadata"]["name"]
        idle = product.ready_pod(kube, ns, "idle")["metadata"]["name"]
        t0 = time.monotonic()
        product.eventually(f"{idle} SCALED_DOWN", lambda: product.status_of(
            kube, ns, idle).get("idle-container") == "SCALED_DOWN", 90, 0.5)
        # Past the CPU window (10 s) and several of its 3 s scale-downs.
        time.sleep(max(0.0, 15 - (time.monotonic() - t0)))
        assert product.status_of(kube, ns, busy).get("busy-container") == "RUNNING", (
            product.status_of(kube, ns, busy), _daemon_log(kube)[-3000:])
        assert _restarts(kube, ns, busy) == 0
        assert "no cgroup at" not in _daemon_log(kube)


def test_open_exec_session_keeps_it_up(kube: product.Kube) -> None:
    """An open `kubectl exec` session is work: the container stays up while it lasts
    (well past its 3 s scale-down), no hibernation is even tried, and it hibernates
    once the session ends."""
    with namespace(Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl), "product") as ns:
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(
            _without_network_monitor("shell", "import time; time.sleep(86400)")))
        name = product.ready_pod(kube, ns, "shell")["metadata"]["name"]
        state = lambda: product.status_of(kube, ns, name).get("shell-container")  # noqa: E731
        session = subprocess.Popen(
            [str(kube.kubectl), "--kubeconfig", str(kube.kubeconfig), "--context", kube.context,
             "exec", "-n", ns, name, "-c", "shell-container", "--", "sleep", "14"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            product.eventually("the exec's container RUNNING", lambda: state() == "RUNNING", 60, 0.5)
            time.sleep(2)  # the session is seen by the next tick's sample
            seen = []
            for _ in range(16):  # 8 s: more than twice the scale-down
                seen.append(state())
                time.sleep(0.5)
            assert set(seen) == {"RUNNING"}, (seen, _daemon_log(kube)[-3000:])
            assert session.wait(timeout=60) == 0, session.stderr.read() if session.stderr else ""
        finally:
            session.kill()
        # The daemon counted the session (its cgroup), so it never asked: the shim's
        # own refusal (a running exec) is the second line, not the one relied on.
        events = kube.json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name},reason=HibernateFailed")["items"]
        assert not events, [e["message"] for e in events]
        product.eventually("SCALED_DOWN once the session ended",
                           lambda: state() == "SCALED_DOWN", 60, 0.5)
        assert _restarts(kube, ns, name) == 0


def test_the_daemon_outlived_every_namespace_deleted_under_it(kube: product.Kube) -> None:
    """Each test above deleted its namespace with pods still hibernated or waking in
    it: the daemon pod must have carried on (a crash restarts the container)."""
    status = _daemon_pod(kube)["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0, _daemon_log(kube)[-3000:]
