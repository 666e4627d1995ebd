"""A runsc-architect pod hibernates in place: its whole gVisor sandbox is
checkpointed (`runsc checkpoint`, the sandbox process ends) while containerd and
the kubelet still see the pause and app tasks running (no restart), and a wake
restores the sandbox and its container (`runsc restore` of each) with the pod's
state, in memory, continuing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import (
    RUNSC_COUNTER,
    _ctr,
    apply_ready,
    architect_tasks,
    eventually,
    get_json,
    kubectl,
    namespace,
    runsc_count,
    runsc_pod,
)
from e2e.tests.cluster.shimfix import (  # noqa: F401
    SHIM_STATE,
    architect_node,
    shim_control,
    shim_record,
)

pytestmark = pytest.mark.node

# The count lives in the shell's memory; httpd serves it.
SCRIPT = RUNSC_COUNTER


def _pod(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(get_json(cluster, "pod", "-n", ns, "gv"))


def _task_status() -> dict[str, str]:
    """containerd's word: task id -> status (`ctr tasks ls`)."""
    rows = [line.split() for line in _ctr("tasks", "ls").splitlines()[1:]]
    return {r[0]: r[-1] for r in rows if len(r) >= 3}


def _hibernate(cid: str) -> list[str]:
    """Hibernate the pod of ``cid``; the ids of its tasks (sandbox first)."""
    reply = shim_control(cid, {"op": "hibernate", "id": cid})
    assert reply["ok"], reply
    ids: list[str] = reply["containers"]
    recs = {r["id"]: r for r in shim_control(cid, {"op": "status"})["containers"]}
    assert len(ids) == 2 and all(recs[i]["status"] == "SCALED_DOWN" for i in ids), recs
    # No process, yet containerd sees the pause and the app task running.
    tasks = _task_status()
    assert all(tasks.get(i) == "RUNNING" for i in ids), (ids, tasks)
    return ids


def test_runsc_pod_hibernates_in_place_and_wakes(architect_node: Cluster) -> None:  # noqa: F811
    cluster = architect_node
    with namespace(cluster, "gvhib") as ns:
        pod = runsc_pod(SCRIPT, ports=[{"containerPort": 8080}])
        status = apply_ready(cluster, ns, pod)["status"]
        ip = status["podIP"]
        cid = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        eventually("the counter counts past 5", lambda: (runsc_count(ip) or 0) >= 5, timeout_s=60)
        sandbox_pid = shim_record(cid)["pid"]  # an app container's pid is its sandbox's

        ids = _hibernate(cid)
        assert runsc_count(ip) is None  # nothing answers now: the sandbox is gone
        assert not Path(f"/proc/{sandbox_pid}").exists(), "the sandbox process is still there"
        time.sleep(5)  # the kubelet's pod sync has seen it meanwhile
        st = _pod(cluster, ns)["status"]
        assert st["containerStatuses"][0]["restartCount"] == 0, st
        assert "running" in st["containerStatuses"][0]["state"], st

        woke = shim_control(cid, {"op": "wake", "id": cid})
        assert woke["ok"], woke
        assert shim_record(cid)["status"] == "RUNNING"
        counts: list[int] = []

        def answers() -> bool:
            n = runsc_count(ip)
            if n is not None:
                counts.append(n)
            return n is not None

        eventually("the woken pod answers on its pod IP", answers, timeout_s=30)
        # Continued in memory: not a fresh shell counting from 1.
        assert counts[0] >= 5, counts
        time.sleep(2.5)
        later = runsc_count(ip)
        assert later is not None and later > counts[0], (counts, later)
        assert shim_record(cid)["pid"] != sandbox_pid  # a new sandbox, the same task ids

        # kubectl exec wakes it too: the exec waits for the restore, then runs.
        _hibernate(cid)
        out = kubectl(cluster, "exec", "-n", ns, "gv", "--", "cat", "/www/index.html").stdout
        # Not a fresh shell (1): the count it stopped at, or on; hibernated within a
        # second of `later`, the loop has not ticked again when cat reads it.
        assert int(out.strip()) >= later, (out, later)
        st = _pod(cluster, ns)["status"]
        assert st["containerStatuses"][0]["restartCount"] == 0, st

        # Deleted while hibernated: the tasks go and so does the image.
        ids = _hibernate(cid)
        image = SHIM_STATE / "containers" / "k8s.io" / ids[0] / "image"
        assert image.is_dir()
        kubectl(cluster, "delete", "-n", ns, "pod/gv", "--wait=true", "--timeout=60s")
        eventually("containerd has no task left of the pod",
                   lambda: not (set(ids) & architect_tasks()), timeout_s=60)
        assert not image.exists()
