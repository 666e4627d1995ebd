"""runsc-architect: the same shim driving gVisor's runsc, chosen by a runtime config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from architect.runtime.shim import plan
from tests.runtime.shim.conftest import Containerd, wait_for
from tests.runtime.shim.test_shim_containerd import COUNTER, alive

pytestmark = pytest.mark.root


def exec_count(containerd: Containerd, cid: str, exec_id: str) -> int:
    # gVisor keeps the rootfs writes in its own file cache: read them from inside.
    res = containerd.run_result("task", "exec", "--exec-id", exec_id, cid, "/bin/cat", "/tmp/count")
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


def test_runsc_hibernate_and_exec_wake(containerd: Containerd, rootfs: Path) -> None:
    cfg = containerd.base / "runsc-test.toml"
    # The test gives the sandbox no network (no CNI here); pods get theirs from CRI.
    cfg.write_text('binary_name = "runsc"\n[runsc_config]\nnetwork = "none"\n')
    pid = containerd.run_container(
        "gv", rootfs, COUNTER, extra=("--runtime-config-path", str(cfg))
    )
    wait_for(lambda: exec_count(containerd, "gv", "c0") >= 10, 30, "counting in gVisor", 0.5)
    resp = containerd.control("gv", {"op": "hibernate", "id": "gv"})
    assert resp["ok"], resp
    assert containerd.tasks()["gv"] == (pid, "RUNNING")
    assert not alive(pid)
    frozen_status = containerd.control("gv", {"op": "status"})["containers"][0]
    assert frozen_status["status"] == "SCALED_DOWN" and frozen_status["runtime"] == "runsc"
    first = exec_count(containerd, "gv", "c1")  # wakes it
    assert first >= 10, "gVisor started fresh instead of restoring"
    wait_for(lambda: exec_count(containerd, "gv", "c2") > first, 20, "counting on", 0.5)
    containerd.remove("gv")


def test_runsc_create_restores_persistent_checkpoint(containerd: Containerd, rootfs: Path) -> None:
    cfg = containerd.base / "runsc-test.toml"
    cfg.write_text('binary_name = "runsc"\n[runsc_config]\nnetwork = "none"\n')
    extra = ("--runtime-config-path", str(cfg))
    containerd.run_container("pcsrc", rootfs, COUNTER, extra=extra)
    wait_for(lambda: exec_count(containerd, "pcsrc", "c0") >= 20, 30, "counting", 0.5)
    assert containerd.control("pcsrc", {"op": "hibernate", "id": "pcsrc"})["ok"]
    # Stand in for the daemon: put the image where a downloaded PersistentCheckpoint goes.
    image = containerd.shim_state / "containers" / "shimtest" / "pcsrc" / "image"
    dest = containerd.shim_state / "persistent" / "team-a" / "warm"
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.rename(dest)
    plan.write_grant(dest, "team-a", [], plan.manifest_digest(dest))  # as the daemon does
    containerd.remove("pcsrc")
    ann = {
        "architect.loopholelabs.io/start-from-persistent-checkpoint": "warm",
        "io.kubernetes.cri.sandbox-namespace": "team-a",
    }
    containerd.run_container("pcdst", rootfs, COUNTER, ann, extra=extra)
    rec = containerd.control("pcdst", {"op": "status"})["containers"][0]
    assert rec["start_path"] == "restore"
    assert exec_count(containerd, "pcdst", "c1") >= 20, "started fresh"
    assert (dest / "ready").exists(), "a PersistentCheckpoint is not consumed by one pod"
    containerd.remove("pcdst")
