"""The node's shim (every pod shares it), exec-wake notices, migration on stop and restore on create."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.runtime.shim.conftest import NS, Containerd, wait_for
from tests.runtime.shim.test_shim_containerd import COUNTER, alive, count

pytestmark = pytest.mark.root

GROUP = "io.containerd.runc.v2.group"
HASH = "architect.loopholelabs.io/pod-template-hash"
NAME = "io.kubernetes.cri.container-name"


def test_containers_of_a_pod_share_one_shim(containerd: Containerd, rootfs: Path) -> None:
    other = rootfs.parent / (rootfs.name + "-b")
    from tests.runtime.shim.conftest import build_busybox_rootfs

    build_busybox_rootfs(other)
    containerd.run_container("pa", rootfs, COUNTER, {GROUP: "pod-a"})
    containerd.run_container("pb", other, COUNTER, {GROUP: "pod-a"})
    sa = containerd.control("pa", {"op": "status"})
    sb = containerd.control("pb", {"op": "status"})
    assert sa["shim_pid"] == sb["shim_pid"]
    assert {c["id"] for c in sa["containers"]} == {"pa", "pb"}
    containerd.remove("pa")
    # The pod's shim goes on serving the other container.
    assert alive(sa["shim_pid"])
    assert containerd.tasks()["pb"][1] == "RUNNING"
    containerd.remove("pb")
    wait_for(lambda: not alive(sa["shim_pid"]), 20, "the pod's shim to exit")


def test_pods_share_the_node_shim_and_a_start_never_meets_it_exiting(
    containerd: Containerd, rootfs: Path
) -> None:
    """One shim for every pod of the namespace (containerd's shim grouping: `start`
    returns the running shim's address); it exits only when unused, and a `start`
    racing its exit gets a shim that serves (the old one or a new one)."""
    from tests.runtime.shim.conftest import build_busybox_rootfs

    roots = [rootfs] + [build_busybox_rootfs(rootfs.parent / f"{rootfs.name}-{i}") for i in (1, 2)]
    containerd.run_container("na", roots[0], COUNTER, {GROUP: "pod-a"})
    containerd.run_container("nb", roots[1], COUNTER, {GROUP: "pod-b"})
    sa = containerd.control("na", {"op": "status"})
    assert containerd.control("nb", {"op": "status"})["shim_pid"] == sa["shim_pid"]
    assert {c["id"] for c in sa["containers"]} == {"na", "nb"}
    containerd.remove("na")
    assert alive(sa["shim_pid"])
    assert containerd.tasks()["nb"][1] == "RUNNING"
    # Remove the last container and start another at once, several times: each
    # start lands on a shim that answers, never on one that is going away.
    pids = {sa["shim_pid"]}
    last = "nb"
    for i in range(3):
        cid = f"nr{i}"
        containerd.remove(last)
        containerd.run_container(cid, roots[2 if i % 2 == 0 else 1], COUNTER, {GROUP: f"pod-r{i}"})
        pids.add(containerd.control(cid, {"op": "status"})["shim_pid"])
        last = cid
    containerd.remove(last)
    wait_for(lambda: not any(alive(p) for p in pids), 20, "the node's shim to exit")


def test_watch_reports_exec_wake(containerd: Containerd, rootfs: Path) -> None:
    containerd.run_container("ww", rootfs, COUNTER)
    wait_for(lambda: count(rootfs) >= 3, 20, "counting")
    assert containerd.control("ww", {"op": "hibernate", "id": "ww"})["ok"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(containerd.shim_run / NS / "ww"))
        f = s.makefile("rwb")
        f.write(b'{"op": "watch"}\n')
        f.flush()
        assert json.loads(f.readline()) == {"ok": True}
        res = containerd.run_result("task", "exec", "--exec-id", "x", "ww", "/bin/true")
        assert res.returncode == 0, res.stderr
        event = json.loads(f.readline())
    assert event == {"event": "woken", "id": "ww", "reason": "exec"}
    containerd.remove("ww")


@pytest.mark.parametrize("hibernated", [False, True], ids=["running", "hibernated"])
def test_stop_checkpoints_for_migration_and_replacement_restores(
    containerd: Containerd, rootfs: Path, hibernated: bool
) -> None:
    # Listed: the replacement runs right after its restore (else it stays hibernated).
    ann = {HASH: "5d9c7b7f6", NAME: "app",
           "architect.loopholelabs.io/postmigration-autoscaleup-containers": '["app"]'}
    containerd.run_container("src", rootfs, COUNTER, ann)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    if hibernated:  # its hibernation image (node-local layout) becomes the handover
        assert containerd.control("src", {"op": "hibernate", "id": "src"})["ok"]
    resp = containerd.control("src", {"op": "migrate-on-stop", "id": "src"})
    assert resp["ok"] and resp["migrate_on_stop"]
    # The pod is being deleted: kubelet stops the container with SIGTERM.
    containerd.ctr("task", "kill", "-s", "SIGTERM", "src")
    wait_for(lambda: containerd.tasks()["src"][1] == "STOPPED", 30, "src STOPPED")
    frozen = count(rootfs)
    # No pod names in these annotations: the slot is the container's (plan.source_slot).
    handover = containerd.shim_state / "handover" / "5d9c7b7f6" / "app" / "from__src"
    assert (handover / "ready").exists()
    layout = json.loads((handover / "manifest.json").read_text())["payload"]["compression"]
    assert (layout == "dir") == hibernated, layout
    containerd.ctr("task", "rm", "src")
    containerd.ctr("container", "rm", "src")
    assert (handover / "ready").exists(), "deleting the source lost the handover image"

    # The replacement (same template hash and container name) restores.
    containerd.run_container("dst", rootfs, COUNTER, ann)
    wait_for(lambda: count(rootfs) != frozen, 20, "counting in the replacement")
    assert count(rootfs) > frozen, "the replacement started fresh"
    assert not handover.exists(), "a consumed handover image must not be restored twice"
    rec = containerd.control("dst", {"op": "status"})["containers"][0]
    assert rec["start_path"] == "restore"
    containerd.remove("dst")


def test_pending_checkpoint_waits_scaleup_timeout_then_starts_fresh(
    containerd: Containerd, rootfs: Path
) -> None:
    ann = {
        HASH: "pending1", NAME: "app",
        "architect.loopholelabs.io/scaleup-timeout-containers": '{"app": "1500ms"}',
    }
    pending = containerd.shim_state / "handover" / "pending1" / "app" / "from__old"
    pending.mkdir(parents=True)
    (pending / "pending").touch()
    t0 = time.monotonic()
    containerd.run_container("pend", rootfs, COUNTER, ann)
    assert time.monotonic() - t0 >= 1.5
    rec = containerd.control("pend", {"op": "status"})["containers"][0]
    assert rec["start_path"] == "fresh"
    wait_for(lambda: count(rootfs) >= 1, 20, "counting from scratch")
    containerd.remove("pend")


def test_withdrawn_pending_handover_starts_fresh_at_once(
    containerd: Containerd, rootfs: Path
) -> None:
    """The old pod's checkpoint failed and its shim removed the pending handover:
    the replacement stops waiting instead of sitting out its scaleup-timeout."""
    import threading

    ann = {
        HASH: "withdrawn1", NAME: "app",
        "architect.loopholelabs.io/scaleup-timeout-containers": '{"app": "60s"}',
    }
    pending = containerd.shim_state / "handover" / "withdrawn1" / "app" / "from__old"
    pending.mkdir(parents=True)
    (pending / "pending").touch()
    timer = threading.Timer(1.0, lambda: (pending / "pending").unlink())
    timer.start()
    t0 = time.monotonic()
    try:
        containerd.run_container("wdr", rootfs, COUNTER, ann)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 20, "waited on a withdrawn handover"
    rec = containerd.control("wdr", {"op": "status"})["containers"][0]
    assert rec["start_path"] == "fresh" and "withdrawn" in rec["start_reason"], rec
    containerd.remove("wdr")


@pytest.mark.parametrize("autoscaleup", [False, True], ids=["stays-hibernated", "restores"])
def test_broken_handover_image_falls_back_to_fresh(
    containerd: Containerd, rootfs: Path, autoscaleup: bool
) -> None:
    """Whether the replacement would restore or stay hibernated, a bad image starts
    it fresh (the hibernated path verifies the image at create)."""
    thash = f"broken-{int(autoscaleup)}"
    ann = {HASH: thash, NAME: "app"}
    if autoscaleup:
        ann["architect.loopholelabs.io/postmigration-autoscaleup-containers"] = '["app"]'
    bad = containerd.shim_state / "handover" / thash / "app" / "from__old"
    bad.mkdir(parents=True)
    (bad / "inventory.img").write_bytes(b"not a CRIU image")
    (bad / "namespace").write_text("")  # left by a pod of the same (unnamed) namespace
    (bad / "ready").touch()
    cid = f"brk{int(autoscaleup)}"
    containerd.run_container(cid, rootfs, COUNTER, ann)
    rec = containerd.control(cid, {"op": "status"})["containers"][0]
    assert rec["start_path"] == "fresh" and not rec["hibernated"], rec
    wait_for(lambda: count(rootfs) >= 1, 20, "counting from scratch")
    assert count(rootfs) < 50
    logs = "".join(p.read_text() for p in (containerd.shim_run / "logs" / NS).glob("*.log"))
    assert f"{cid}: restore from" in logs and "failed, starting fresh" in logs
    assert not bad.exists(), "a broken handover must not fail the next pod too"
    containerd.remove(cid)
