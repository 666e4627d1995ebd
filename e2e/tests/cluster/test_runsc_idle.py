"""A runsc-architect pod hibernates by itself when idle, through the product as a
user installs it (`helm install` of charts/architect: operator, webhooks, the
daemon as its DaemonSet pod, the node's shim).

The seed's annotations `managed-pod: "true"` and `scaledown-durations` compile
to a HibernationPolicy with `spec.pod`; the daemon drives the pod as one unit
(through its first app container's id, exec wake only) and, once the sandbox's
cgroup shows no work for the duration, asks the shim to checkpoint the whole
gVisor sandbox in place. The kubelet still sees the pod Running (no restart);
`kubectl exec` wakes it and its in-memory counter continues.
`disable-autoscaledown-containers` listing its container keeps it up.

A restarted daemon (its DaemonSet pod deleted) adopts a hibernated pod unit as
SCALED_DOWN from the shim's word: the sandbox stays checkpointed, the app pod is
not restarted, and a later `kubectl exec` wakes it with its count kept.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from architect.policy.annotations import (
    DISABLE_AUTOSCALEDOWN,
    MANAGED_POD,
    SCALEDOWN_DURATIONS,
)
from e2e import product
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import (
    RUNSC_COUNTER,
    _ctr,
    namespace,
    product_release,
    runsc_count,
    runsc_pod,
)
from e2e.tests.cluster.shimfix import container_id, shim_record

pytestmark = pytest.mark.node

SCALEDOWN = "5s"
# The count lives in the shell's memory (a fresh start counts from 1); httpd serves it.
SCRIPT = RUNSC_COUNTER
# The daemon writes the pod unit's state under this key of its status annotation
# (runtime/daemon/targets.py POD_STATE_KEY).
POD_KEY = "pod"


@pytest.fixture(scope="module")
def kube(node_cluster: Cluster) -> Iterator[product.Kube]:
    with product_release(node_cluster, "runsc idle") as k:
        yield k


def _daemon_log(kube: product.Kube) -> str:
    return kube.run("logs", "-n", product.NAMESPACE, "-l", "app.kubernetes.io/component=daemon",
                    "--tail=300", check=False).stdout


def _managed(name: str, **annotations: Any) -> dict[str, Any]:
    pod = runsc_pod(SCRIPT, ports=[{"containerPort": 8080}])
    pod["metadata"] = {"name": name, "annotations": {
        MANAGED_POD: "true", **{k: json.dumps(v) for k, v in annotations.items()}}}
    return pod


def _ready(kube: product.Kube, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    name = pod["metadata"]["name"]
    kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
    done = kube.run("wait", "-n", ns, "--for=condition=Ready", f"pod/{name}", "--timeout=120s",
                    check=False, timeout=150)
    if done.returncode != 0:
        events = kube.run("get", "events", "-n", ns, check=False).stdout
        raise AssertionError(f"runsc pod {name} not Ready:\n{events[-3000:]}")
    return dict(kube.json("pod", "-n", ns, name))


def _state(kube: product.Kube, ns: str, name: str) -> str | None:
    return product.status_of(kube, ns, name).get(POD_KEY)


def _wait_state(kube: product.Kube, ns: str, name: str, want: str, timeout_s: float) -> float:
    try:
        return product.eventually(f"{name} {want}", lambda: _state(kube, ns, name) == want,
                                  timeout_s, 0.25)
    except product.ProductError:
        raise AssertionError(f"{name} never {want}: status {product.status_of(kube, ns, name)}; "
                             f"daemon log:\n{_daemon_log(kube)[-5000:]}") from None


def _container(kube: product.Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.json("pod", "-n", ns, name)["status"]["containerStatuses"][0])


def _task_status(cid: str) -> str:
    """containerd's word on one task (`ctr tasks ls`)."""
    for line in _ctr("tasks", "ls").splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == cid:
            return cols[-1]
    return ""


def _events(kube: product.Kube, ns: str, name: str) -> list[str]:
    items = kube.json("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    return [f"{e['reason']}: {e['message']}" for e in items["items"]]


def test_idle_runsc_pod_hibernates_and_kubectl_exec_wakes_it(kube: product.Kube) -> None:
    cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
    with namespace(cluster, "gvidle") as ns:
        pod = _ready(kube, ns, _managed("gv", **{SCALEDOWN_DURATIONS: {"main": SCALEDOWN}}))
        t_ready = time.monotonic()
        ip, cid = pod["status"]["podIP"], container_id(pod)
        # Admission compiled the annotations into a policy with the pod's idle rule.
        hps = kube.json("hibernationpolicies", "-n", ns)["items"]
        assert [h["spec"].get("pod") for h in hps] == [
            {"scaledownAfter": SCALEDOWN, "autoScaledown": True}], hps
        sandbox_pid = shim_record(cid)["pid"]  # an app container's pid is its sandbox's

        # The daemon's own decision: nobody asks the shim here.
        idle_s = _wait_state(kube, ns, "gv", "SCALED_DOWN", 90)
        print(f"\nrunsc idle: Ready -> SCALED_DOWN {time.monotonic() - t_ready:.1f}s "
              f"(scaledown {SCALEDOWN}; waited {idle_s:.1f}s)")
        rec = shim_record(cid)
        assert rec["status"] == "SCALED_DOWN", rec
        assert not Path(f"/proc/{sandbox_pid}").exists(), "the sandbox process is still there"
        assert runsc_count(ip) is None  # nothing answers: the sandbox is gone
        assert _task_status(cid) == "RUNNING"  # containerd still sees the task
        time.sleep(5)  # the kubelet's pod sync has seen it meanwhile
        st = _container(kube, ns, "gv")
        assert st["restartCount"] == 0 and "running" in st["state"], st
        reasons = _events(kube, ns, "gv")
        assert any(r.startswith("Hibernated") for r in reasons), reasons

        # kubectl exec wakes it: the exec waits for the restore, then runs.
        t0 = time.monotonic()
        out = kube.run("exec", "-n", ns, "gv", "--", "cat", "/www/index.html", timeout=90).stdout
        wake = time.monotonic() - t0
        stopped_at = int(out.strip())
        # Not a fresh shell (1): the count it had reached when it was checkpointed.
        assert stopped_at >= 3, out
        print(f"runsc idle: kubectl exec woke it in {wake:.2f}s; count {stopped_at}")
        _wait_state(kube, ns, "gv", "RUNNING", 30)
        later: list[int] = []

        def counts_on() -> bool:
            n = runsc_count(ip)
            if n is not None and n > stopped_at:
                later.append(n)
            return bool(later)

        product.eventually("the woken pod counts on", counts_on, 30, 0.5)
        assert later[0] > stopped_at, (later, stopped_at)
        assert shim_record(cid)["pid"] != sandbox_pid  # a new sandbox, the same task
        assert _container(kube, ns, "gv")["restartCount"] == 0
        reasons = _events(kube, ns, "gv")
        assert any(r.startswith("Woken") for r in reasons), reasons

        # Idle again, it hibernates again by itself.
        _wait_state(kube, ns, "gv", "SCALED_DOWN", 60)
        assert _container(kube, ns, "gv")["restartCount"] == 0


def test_disable_autoscaledown_keeps_the_runsc_pod_up(kube: product.Kube) -> None:
    cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
    with namespace(cluster, "gvkeep") as ns:
        pod = _ready(kube, ns, _managed("gv", **{SCALEDOWN_DURATIONS: {"main": "3s"},
                                                 DISABLE_AUTOSCALEDOWN: ["main"]}))
        ip, cid = pod["status"]["podIP"], container_id(pod)
        hps = kube.json("hibernationpolicies", "-n", ns)["items"]
        assert [h["spec"].get("pod") for h in hps] == [
            {"scaledownAfter": "3s", "autoScaledown": False}], hps
        sandbox_pid = shim_record(cid)["pid"]
        # The daemon drives it (it writes its state), it just never hibernates it.
        _wait_state(kube, ns, "gv", "RUNNING", 60)
        seen: list[str | None] = []
        for _ in range(15):  # 15 s: five times its duration
            seen.append(_state(kube, ns, "gv"))
            time.sleep(1)
        assert set(seen) == {"RUNNING"}, (seen, _daemon_log(kube)[-3000:])
        assert Path(f"/proc/{sandbox_pid}").exists(), "the sandbox went away"
        assert shim_record(cid)["status"] == "RUNNING"
        assert (runsc_count(ip) or 0) >= 15
        assert _container(kube, ns, "gv")["restartCount"] == 0


def test_busy_runsc_pod_stays_up(kube: product.Kube) -> None:
    """The sandbox's work is seen: runsc leaves an app container's cgroup empty, so
    the daemon samples the pod's (runtime/daemon/usage.py sandbox_cgroup); a busy
    loop keeps the pod up while an idle one beside it hibernates."""
    cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
    with namespace(cluster, "gvbusy") as ns:
        busy = _managed("busy", **{SCALEDOWN_DURATIONS: {"main": "3s"}})
        busy["spec"]["containers"][0]["command"] = ["sh", "-c", "while true; do :; done"]
        idle = _managed("idle", **{SCALEDOWN_DURATIONS: {"main": "3s"}})
        cid = container_id(_ready(kube, ns, busy))
        _ready(kube, ns, idle)
        t0 = time.monotonic()
        _wait_state(kube, ns, "idle", "SCALED_DOWN", 60)
        # Past the CPU window (10 s) and several of its 3 s scale-downs.
        seen: list[str | None] = []
        while time.monotonic() - t0 < 15:
            seen.append(_state(kube, ns, "busy"))
            time.sleep(1)
        assert set(seen) == {"RUNNING"}, (seen, _daemon_log(kube)[-3000:])
        assert shim_record(cid)["status"] == "RUNNING"
        assert _container(kube, ns, "busy")["restartCount"] == 0


def test_open_exec_session_keeps_the_runsc_pod_up(kube: product.Kube) -> None:
    """An open `kubectl exec` is work: gVisor runs it inside the sandbox (no host
    cgroup shows it), so the daemon reads the shim's count of running execs and
    does not even ask for a checkpoint (no HibernateFailed) until it ends."""
    cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
    with namespace(cluster, "gvexec") as ns:
        _ready(kube, ns, _managed("gv", **{SCALEDOWN_DURATIONS: {"main": "3s"}}))
        session = subprocess.Popen(
            [str(kube.kubectl), "--kubeconfig", str(kube.kubeconfig), "--context", kube.context,
             "exec", "-n", ns, "gv", "--", "sleep", "14"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)  # the exec has started (a hibernated pod: woken by it)
            seen: list[str | None] = []
            for _ in range(16):  # 8 s: more than twice the scale-down
                seen.append(_state(kube, ns, "gv"))
                time.sleep(0.5)
            assert set(seen) == {"RUNNING"}, (seen, _daemon_log(kube)[-3000:])
            assert session.wait(timeout=60) == 0, session.stderr.read() if session.stderr else ""
        finally:
            session.kill()
        reasons = _events(kube, ns, "gv")
        assert not any(r.startswith("HibernateFailed") for r in reasons), reasons
        _wait_state(kube, ns, "gv", "SCALED_DOWN", 30)
        assert _container(kube, ns, "gv")["restartCount"] == 0


def _node_daemon(kube: product.Kube, node: str) -> dict[str, Any] | None:
    """The DaemonSet's live pod on ``node`` (None: none yet)."""
    pods = kube.json("pods", "-n", product.NAMESPACE, "-l", "app.kubernetes.io/component=daemon")
    live = [d for d in pods["items"]
            if d["spec"].get("nodeName") == node and not d["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 else None


def _is_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return conds.get("Ready") == "True"


def test_restarted_daemon_readopts_the_hibernated_runsc_pod(kube: product.Kube) -> None:
    """The daemon's pod deleted while the pod unit is hibernated: its successor
    finds the unit SCALED_DOWN in the shim and keeps it so (no wake, no
    HibernateFailed); the exec that wakes it later is the new daemon's to see."""
    cluster = Cluster(kube.kubeconfig, kube.context, "node", kube.kubectl)
    with namespace(cluster, "gvadopt") as ns:
        pod = _ready(kube, ns, _managed("gv", **{SCALEDOWN_DURATIONS: {"main": SCALEDOWN}}))
        t_ready = time.monotonic()
        ip, cid, uid = pod["status"]["podIP"], container_id(pod), pod["metadata"]["uid"]
        node = pod["spec"]["nodeName"]
        sandbox_pid = shim_record(cid)["pid"]
        _wait_state(kube, ns, "gv", "SCALED_DOWN", 90)
        print(f"\nrunsc adopt: Ready -> SCALED_DOWN {time.monotonic() - t_ready:.1f}s "
              f"(scaledown {SCALEDOWN})")
        assert not Path(f"/proc/{sandbox_pid}").exists(), "the sandbox process is still there"

        old = _node_daemon(kube, node)
        assert old is not None and _is_ready(old), old
        t_del = time.monotonic()
        kube.run("delete", "pod", "-n", product.NAMESPACE, old["metadata"]["name"],
                 "--wait=true", "--timeout=90s", timeout=120)
        new: list[dict[str, Any]] = []

        def successor_ready() -> bool:
            d = _node_daemon(kube, node)
            if d is None or d["metadata"]["uid"] == old["metadata"]["uid"] or not _is_ready(d):
                return False
            new[:] = [d]
            return True

        product.eventually(f"{node}'s new daemon Ready", successor_ready, 120, 0.5)
        back = time.monotonic() - t_del
        name = new[0]["metadata"]["name"]
        line = f"pod {ns}/gv (gVisor sandbox): adopted as SCALED_DOWN"
        logs: list[str] = []

        def adopted() -> bool:
            logs[:] = [kube.run("logs", "-n", product.NAMESPACE, name, "-c", "daemon",
                                check=False).stdout]
            return line in logs[0]

        try:
            product.eventually("the new daemon adopted the pod unit", adopted, 60, 0.5)
        except product.ProductError:
            raise AssertionError(f"no {line!r} in {name}'s log:\n{logs[0][-5000:]}") from None
        took = time.monotonic() - t_del
        print(f"runsc adopt: daemon pod deleted -> successor Ready {back:.1f}s, "
              f"-> adopted as SCALED_DOWN {took:.1f}s")
        assert f"pod {ns}/gv (gVisor sandbox): adopted as RUNNING" not in logs[0]

        # Kept checkpointed: several of the new daemon's ticks, past the duration.
        time.sleep(6)
        assert _state(kube, ns, "gv") == "SCALED_DOWN", product.status_of(kube, ns, "gv")
        assert shim_record(cid)["status"] == "SCALED_DOWN"
        assert not Path(f"/proc/{sandbox_pid}").exists()
        assert runsc_count(ip) is None  # nothing answers: still no sandbox
        now = kube.json("pod", "-n", ns, "gv")
        assert now["metadata"]["uid"] == uid
        st = _container(kube, ns, "gv")
        assert st["restartCount"] == 0 and "running" in st["state"], st
        reasons = _events(kube, ns, "gv")
        assert not any(r.startswith(("HibernateFailed", "WakeFailed")) for r in reasons), reasons

        t0 = time.monotonic()
        out = kube.run("exec", "-n", ns, "gv", "--", "cat", "/www/index.html", timeout=90).stdout
        wake = time.monotonic() - t0
        stopped_at = int(out.strip())
        assert stopped_at >= 3, out  # the checkpointed count, not a fresh shell's 1
        print(f"runsc adopt: kubectl exec woke it in {wake:.2f}s; count {stopped_at}")
        _wait_state(kube, ns, "gv", "RUNNING", 30)
        later: list[int] = []

        def counts_on() -> bool:
            n = runsc_count(ip)
            if n is not None and n > stopped_at:
                later.append(n)
            return bool(later)

        product.eventually("the woken pod counts on", counts_on, 30, 0.5)
        assert shim_record(cid)["pid"] != sandbox_pid  # a new sandbox, the same task
        assert kube.json("pod", "-n", ns, "gv")["metadata"]["uid"] == uid
        assert _container(kube, ns, "gv")["restartCount"] == 0
        reasons = _events(kube, ns, "gv")
        assert any(r.startswith("Woken") for r in reasons), reasons
        assert not any(r.startswith(("HibernateFailed", "WakeFailed")) for r in reasons), reasons
        # The new daemon drives it: idle again, it hibernates it again.
        _wait_state(kube, ns, "gv", "SCALED_DOWN", 60)
