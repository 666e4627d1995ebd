"""The per-container migration annotations through the real shim, containerd, runc
and CRIU: emptyDirs (never in a hibernation; in a handover only when
migrate-emptydir-containers lists the container) and
postmigration-autoscaleup-containers (unlisted: the replacement stays hibernated)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from architect.engine.telemetry import ContainerState
from architect.runtime.daemon.checkpointobjects import start_outcome
from architect.runtime.daemon.tracker import adopted_state
from tests.runtime.shim.conftest import NS, RUNTIME, Containerd, wait_for
from tests.runtime.shim.test_shim_containerd import COUNTER, count

pytestmark = pytest.mark.root

HASH = "architect.loopholelabs.io/pod-template-hash"
NAME = "io.kubernetes.cri.container-name"
EMPTYDIR = "architect.loopholelabs.io/migrate-emptydir-containers"
AUTOSCALEUP = "architect.loopholelabs.io/postmigration-autoscaleup-containers"
# The script's own line in the volume, then the counter in the rootfs.
WRITER = "echo v1 > /data/shared; echo mine > /data/mine; " + COUNTER


def empty_dir(containerd: Containerd, pod: str) -> Path:
    """A host dir where kubelet keeps a pod's emptyDir (the shim knows it by the path)."""
    d = containerd.base / "pods" / pod / "volumes" / "kubernetes.io~empty-dir" / "data"
    d.mkdir(parents=True)
    return d


def start(
    containerd: Containerd, cid: str, rootfs: Path, vol: Path, ann: dict[str, str]
) -> None:
    """`ctr run -d` with the volume at /data; RUNNING (a hibernated task has pid 0)."""
    containerd.ctr(
        "run", "-d", "--env", "PATH=/bin", "--runtime", RUNTIME,
        *[f"--annotation={k}={v}" for k, v in ann.items()],
        "--mount", f"type=bind,src={vol},dst=/data,options=rbind:rw",
        "--rootfs", str(rootfs), cid, "/bin/sh", "-c", WRITER,
    )  # fmt: skip
    wait_for(lambda: containerd.tasks().get(cid, (0, ""))[1] == "RUNNING", 60, f"{cid} RUNNING")


def record(containerd: Containerd, cid: str) -> dict[str, Any]:
    (rec,) = [c for c in containerd.control(cid, {"op": "status"})["containers"]
              if c["id"] == cid]
    return dict(rec)


def stop_for_migration(containerd: Containerd, cid: str, thash: str) -> Path:
    """The pod is deleted with migrate-on-stop armed: its handover, ready."""
    resp = containerd.control(cid, {"op": "migrate-on-stop", "id": cid})
    assert resp["ok"] and resp["migrate_on_stop"], resp
    containerd.ctr("task", "kill", "-s", "SIGTERM", cid)
    wait_for(lambda: containerd.tasks()[cid][1] == "STOPPED", 30, f"{cid} STOPPED")
    containerd.ctr("task", "rm", cid)
    containerd.ctr("container", "rm", cid)
    # No pod names in these annotations: the slot is the container's (plan.source_slot).
    handover = containerd.shim_state / "handover" / thash / "app" / f"from__{cid}"
    assert (handover / "ready").exists()
    return handover


def test_wake_leaves_the_empty_dir_as_another_writer_left_it(
    containerd: Containerd, rootfs: Path
) -> None:
    """Hibernate, another process of the pod changes the emptyDir, wake: its changes
    stay (a wake that put back the hibernation-time copy would lose them)."""
    vol = empty_dir(containerd, "u-local")
    start(containerd, "lw", rootfs, vol, {HASH: "local1", NAME: "app", EMPTYDIR: '["app"]'})
    wait_for(lambda: count(rootfs) >= 10, 20, "counting")
    assert (vol / "shared").read_text() == "v1\n"
    assert containerd.control("lw", {"op": "hibernate", "id": "lw"})["ok"]
    image = containerd.shim_state / "containers" / NS / "lw" / "image"
    # Not even an opted-in container's volume goes into a hibernation image.
    assert json.loads((image / "manifest.json").read_text())["empty_dirs"] == []
    frozen = count(rootfs)
    # Another container of the pod, meanwhile: rewrites, adds, deletes.
    (vol / "shared").write_text("v2 from the sidecar\n")
    (vol / "sidecar").write_text("new\n")
    (vol / "mine").unlink()
    res = containerd.run_result("task", "exec", "--exec-id", "e1", "lw", "/bin/cat",
                                "/data/shared")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "v2 from the sidecar\n"
    assert record(containerd, "lw")["status"] == "RUNNING"
    wait_for(lambda: count(rootfs) > frozen, 20, "counting on after the wake")
    assert (vol / "shared").read_text() == "v2 from the sidecar\n"
    assert (vol / "sidecar").read_text() == "new\n"
    assert not (vol / "mine").exists(), "the wake brought back a deleted file"
    containerd.remove("lw")


@pytest.mark.parametrize("opted_in", [False, True], ids=["default", "migrate-emptydir"])
def test_handover_carries_empty_dirs_only_when_opted_in(
    containerd: Containerd, rootfs: Path, opted_in: bool
) -> None:
    """A listed (postmigration-autoscaleup) replacement restores and runs; its new
    emptyDir gets the old one's content only under migrate-emptydir-containers."""
    thash = f"ed-{int(opted_in)}"
    ann = {HASH: thash, NAME: "app", AUTOSCALEUP: '["app"]'}
    if opted_in:
        ann[EMPTYDIR] = '["app"]'
    old, new = empty_dir(containerd, f"u-old-{opted_in}"), empty_dir(containerd, f"u-new-{opted_in}")
    start(containerd, "eds", rootfs, old, ann)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    handover = stop_for_migration(containerd, "eds", thash)
    frozen = count(rootfs)
    manifest = json.loads((handover / "manifest.json").read_text())
    assert manifest["empty_dirs"] == ([str(old)] if opted_in else [])
    (new / "from-init").write_text("an init container's\n")  # the new pod's, before

    # The replacement writes nothing to /data before its restore: a restored
    # process goes on in its loop, so /data/shared can only come from the image.
    start(containerd, "edd", rootfs, new, ann)
    rec = record(containerd, "edd")
    assert (rec["start_path"], rec["status"]) == ("restore", "RUNNING"), rec
    wait_for(lambda: count(rootfs) > frozen, 20, "the replacement counting on")
    assert (new / "from-init").read_text() == "an init container's\n"
    if opted_in:
        assert (new / "shared").read_text() == "v1\n" and (new / "mine").read_text() == "mine\n"
    else:
        assert sorted(p.name for p in new.iterdir()) == ["from-init"]
    containerd.remove("edd")


def test_unlisted_replacement_stays_hibernated_until_exec(
    containerd: Containerd, rootfs: Path
) -> None:
    thash = "hib-create"
    ann = {HASH: thash, NAME: "app", EMPTYDIR: '["app"]'}
    old, new = empty_dir(containerd, "u-h-old"), empty_dir(containerd, "u-h-new")
    start(containerd, "hs", rootfs, old, ann)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    stop_for_migration(containerd, "hs", thash)
    frozen = count(rootfs)

    start(containerd, "hd", rootfs, new, ann)
    rec = record(containerd, "hd")
    assert rec["status"] == "SCALED_DOWN" and rec["hibernated"], rec
    assert rec["start_path"] == "restore" and "hibernated until woken" in rec["start_reason"]
    # What the node daemon makes of it when it adopts the container.
    assert adopted_state(rec["status"], None) is ContainerState.SCALED_DOWN
    assert start_outcome(rec["start_path"], rec["start_reason"], thash, "app") == "restored"
    state = json.loads((containerd.shim_state / "containers" / NS / "hd" / "state.json")
                       .read_text())
    assert state["hibernated"] is True
    # No process: containerd sees it RUNNING with pid 0, nothing counts.
    assert containerd.tasks()["hd"] == (0, "RUNNING")
    assert len(containerd.ctr("task", "ps", "hd").strip().splitlines()) == 1  # header only
    time.sleep(0.5)
    assert count(rootfs) == frozen
    assert not (containerd.shim_state / "handover" / thash).exists(), "not consumed"
    # The opted-in emptyDir arrived at create, as for a replacement that restores.
    assert (new / "shared").read_text() == "v1\n"
    (new / "shared").write_text("v2 while hibernated\n")  # another container of the pod

    res = containerd.run_result("task", "exec", "--exec-id", "w", "hd", "/bin/cat",
                                "/tmp/count", "/data/shared")
    assert res.returncode == 0, res.stderr
    got_count, shared = res.stdout.split("\n", 1)
    assert int(got_count) >= frozen, "the wake started fresh"
    assert shared == "v2 while hibernated\n", "the wake reverted the emptyDir"
    wait_for(lambda: count(rootfs) > frozen, 20, "counting on after the wake")
    rec = record(containerd, "hd")
    assert rec["status"] == "RUNNING" and not rec["hibernated"]
    pid = containerd.tasks()["hd"][0]
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    containerd.remove("hd")


def test_hibernated_replacement_migrates_again_with_its_volume_as_it_is(
    containerd: Containerd, rootfs: Path
) -> None:
    """Migrated while still hibernated (a second drain): the handover takes the
    hibernation image with the emptyDir as it is now, not the first pod's copy."""
    thash = "hib-twice"
    ann = {HASH: thash, NAME: "app", EMPTYDIR: '["app"]'}
    vols = [empty_dir(containerd, f"u-t-{i}") for i in range(3)]
    start(containerd, "t0", rootfs, vols[0], ann)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    stop_for_migration(containerd, "t0", thash)
    frozen = count(rootfs)
    start(containerd, "t1", rootfs, vols[1], ann)
    assert record(containerd, "t1")["status"] == "SCALED_DOWN"
    (vols[1] / "shared").write_text("v2 in the second pod\n")
    handover = stop_for_migration(containerd, "t1", thash)
    assert json.loads((handover / "manifest.json").read_text())["empty_dirs"] == [str(vols[1])]
    start(containerd, "t2", rootfs, vols[2], {**ann, AUTOSCALEUP: '["app"]'})
    assert record(containerd, "t2")["status"] == "RUNNING"
    wait_for(lambda: count(rootfs) > frozen, 20, "the third pod counting on")
    assert (vols[2] / "shared").read_text() == "v2 in the second pod\n"
    assert (vols[2] / "mine").read_text() == "mine\n"
    containerd.remove("t2")



def test_hibernated_replacement_whose_restore_fails_at_wake_starts_fresh(
    containerd: Containerd, rootfs: Path
) -> None:
    """The first wake of a replacement is its start: when the restore fails there
    (here: an image file changed on disk after create), it starts fresh from its
    bundle, as a failed restore at create does, instead of staying hibernated."""
    thash = "hib-fail"
    ann = {HASH: thash, NAME: "app"}
    old, new = empty_dir(containerd, "u-f-old"), empty_dir(containerd, "u-f-new")
    start(containerd, "fs", rootfs, old, ann)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    stop_for_migration(containerd, "fs", thash)
    start(containerd, "fd", rootfs, new, ann)
    rec = record(containerd, "fd")
    assert rec["hibernated"] and rec["deferred_restore"], rec
    image = Path(rec["image"])
    victim = max((f for f in image.rglob("*")
                  if f.is_file() and f.name not in ("manifest.json", "ready")),
                 key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x5A
    victim.write_bytes(bytes(data))

    res = containerd.run_result("task", "exec", "--exec-id", "w", "fd", "/bin/true")
    assert res.returncode == 0, res.stderr
    rec = record(containerd, "fd")
    assert rec["status"] == "RUNNING" and not rec["hibernated"], rec
    assert rec["start_path"] == "fresh" and "restore at the first wake failed" in \
        rec["start_reason"], rec
    pid = containerd.tasks()["fd"][0]
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    assert not image.exists(), "the unusable image must go"
    containerd.remove("fd")
