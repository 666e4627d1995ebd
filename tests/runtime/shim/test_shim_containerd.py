"""The shim under a real containerd 1.6 with real runc and CRIU, driven by ctr."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runtime.shim.conftest import NS, Containerd, wait_for

pytestmark = pytest.mark.root

# Written through a rename so a reader never sees a truncated file.
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; sleep 0.1; done"
)
# Holds ~24 MiB in a shell variable, then counts: memory that hibernation must free.
HOG = (
    "x=$(head -c 25000000 /dev/zero | tr '\\0' a); echo ready > /tmp/ready; " + COUNTER
)


def count(rootfs: Path) -> int:
    """The container's counter; 0 before it first wrote one."""
    for _ in range(100):
        try:
            text = (rootfs / "tmp" / "count").read_text().strip()
        except FileNotFoundError:
            return 0
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("counter file stayed empty for a second")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def cgroup_rss(cid: str) -> int:
    """total_rss of the container's memory cgroup (ctr's cgroupsPath is /<ns>/<id>).

    0 when the cgroup is gone: runc removes it with the checkpointed container.
    """
    try:
        stat = Path(f"/sys/fs/cgroup/memory/{NS}/{cid}/memory.stat").read_text()
    except FileNotFoundError:
        return 0
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "total_rss":
            return int(value)
    raise AssertionError("no total_rss in memory.stat")


def test_lifecycle_run_state_kill_delete(containerd: Containerd, rootfs: Path) -> None:
    pid = containerd.run_container("life", rootfs, COUNTER)
    assert alive(pid)
    bundle = containerd.base / "state" / "io.containerd.runtime.v2.task" / NS / "life"
    address = (bundle / "address").read_text()
    assert Path(address.removeprefix("unix://")).exists()
    wait_for(lambda: count(rootfs) >= 3, 20, "the container counting")
    ps = containerd.ctr("task", "ps", "life")
    assert str(pid) in ps
    containerd.ctr("task", "kill", "-s", "SIGKILL", "life")
    wait_for(lambda: containerd.tasks()["life"][1] == "STOPPED", 20, "STOPPED")
    assert not alive(pid)
    containerd.ctr("task", "rm", "life")
    containerd.ctr("container", "rm", "life")
    assert "life" not in containerd.tasks()
    # The shim of that container exits once containerd is done with it, and cleans up.
    wait_for(lambda: not (containerd.shim_run / NS / "life").exists(), 10, "control link gone")
    wait_for(lambda: not Path(address.removeprefix("unix://")).exists(), 10, "socket removed")


def test_exec_stdio_and_exit_code(containerd: Containerd, rootfs: Path) -> None:
    containerd.run_container("ex", rootfs, COUNTER)
    res = containerd.run_result("task", "exec", "--exec-id", "e1", "ex", "/bin/echo", "hello shim")
    assert res.returncode == 0, res.stderr
    assert "hello shim" in res.stdout
    res = containerd.run_result("task", "exec", "--exec-id", "e2", "ex", "/bin/sh", "-c", "exit 7")
    assert res.returncode == 7, (res.returncode, res.stderr)
    containerd.remove("ex")


def test_hibernate_keeps_running_then_exec_wakes(containerd: Containerd, rootfs: Path) -> None:
    pid = containerd.run_container("hib", rootfs, HOG)
    wait_for(lambda: (rootfs / "tmp" / "ready").exists(), 60, "memory allocated")
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    rss_before = cgroup_rss("hib")
    assert rss_before > 20 << 20, rss_before

    resp = containerd.control("hib", {"op": "hibernate", "id": "hib"})
    assert resp["ok"], resp
    frozen = count(rootfs)
    # containerd still sees a running task, and no exit event reached it.
    assert containerd.tasks()["hib"] == (pid, "RUNNING")
    assert not alive(pid)
    rss_after = cgroup_rss("hib")
    assert rss_after < rss_before // 10, (rss_before, rss_after)
    time.sleep(0.5)
    assert count(rootfs) == frozen  # nothing runs
    status = containerd.control("hib", {"op": "status"})
    (rec,) = [c for c in status["containers"] if c["id"] == "hib"]
    assert rec["status"] == "SCALED_DOWN"

    # kubectl exec's path: an exec restores the container first.
    res = containerd.run_result("task", "exec", "--exec-id", "w", "hib", "/bin/cat", "/tmp/count")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= frozen
    # The shell's variable survived: counting goes on from where it stopped.
    wait_for(lambda: count(rootfs) != frozen, 20, "counting on after wake")
    assert count(rootfs) > frozen
    tasks = containerd.tasks()
    assert tasks["hib"][1] == "RUNNING"
    assert alive(tasks["hib"][0])
    assert cgroup_rss("hib") > 20 << 20
    containerd.remove("hib")


def test_wake_through_control_api(containerd: Containerd, rootfs: Path) -> None:
    containerd.run_container("wk", rootfs, COUNTER)
    wait_for(lambda: count(rootfs) >= 3, 20, "counting")
    log = containerd.base / "containerd.log"
    ooms = log.read_text(errors="replace").count("topic=/tasks/oom")
    assert containerd.control("wk", {"op": "hibernate", "id": "wk"})["ok"]
    frozen = count(rootfs)
    resp = containerd.control("wk", {"op": "wake", "id": "wk"})
    assert resp["ok"] and resp["pid"] > 0, resp
    wait_for(lambda: count(rootfs) > frozen + 3, 20, "counting after wake")
    assert containerd.tasks()["wk"] == (resp["pid"], "RUNNING")
    # Removing the cgroup at checkpoint fires the OOM eventfd: no OOM may be reported.
    assert log.read_text(errors="replace").count("topic=/tasks/oom") == ooms
    bad = containerd.control("wk", {"op": "hibernate", "id": "nope"})
    assert not bad["ok"] and "nope" in bad["error"]
    containerd.remove("wk")


def test_delete_after_hibernation_cleans_up(containerd: Containerd, rootfs: Path) -> None:
    containerd.run_container("del", rootfs, COUNTER)
    wait_for(lambda: count(rootfs) >= 2, 20, "counting")
    assert containerd.control("del", {"op": "hibernate", "id": "del"})["ok"]
    state_dir = containerd.shim_state / "containers" / NS / "del"
    assert (state_dir / "image" / "ready").exists()
    containerd.ctr("task", "kill", "-s", "SIGKILL", "del")
    wait_for(lambda: containerd.tasks()["del"][1] == "STOPPED", 20, "STOPPED")
    res = containerd.run_result("task", "rm", "del")
    assert res.returncode == 0, res.stderr
    containerd.ctr("container", "rm", "del")
    assert not state_dir.exists()
    runc_state = containerd.shim_run / "runtime" / NS / "runc" / "del"
    assert not runc_state.exists()


def test_killed_shim_keeps_checkpoint_and_create_restores(
    containerd: Containerd, rootfs: Path
) -> None:
    containerd.run_container("sk", rootfs, COUNTER)
    wait_for(lambda: count(rootfs) >= 20, 20, "counting")
    assert containerd.control("sk", {"op": "hibernate", "id": "sk"})["ok"]
    frozen = count(rootfs)
    shim_pid = containerd.control("sk", {"op": "status"})["shim_pid"]
    bundle = containerd.base / "state" / "io.containerd.runtime.v2.task" / NS / "sk"
    sock = Path((bundle / "address").read_text().removeprefix("unix://"))
    os.kill(shim_pid, signal.SIGKILL)
    # containerd notices the dead shim, runs `shim delete`, drops the task.
    wait_for(lambda: "sk" not in containerd.tasks(), 30, "task dropped after shim death")
    image = containerd.shim_state / "containers" / NS / "sk" / "image"
    assert (image / "ready").exists(), "the hibernation image was lost"
    wait_for(lambda: not sock.exists(), 10, "`shim delete` removing the dead shim's socket")
    # A new task for the container restores from it instead of starting fresh
    # (once containerd's clean-up of the dead shim, `shim delete`, is through).
    def started() -> bool:
        res = containerd.run_result("task", "start", "-d", "sk")
        assert res.returncode == 0 or "already exists" in res.stderr, res.stderr
        return res.returncode == 0

    wait_for(started, 30, "a new task for sk", interval=0.5)
    wait_for(lambda: containerd.tasks().get("sk", (0, ""))[1] == "RUNNING", 30, "RUNNING again")
    wait_for(lambda: count(rootfs) != frozen, 20, "counting after restore")
    assert count(rootfs) > frozen, "started fresh instead of restoring"
    assert not image.exists()
    containerd.remove("sk")


def test_stdin_metrics_update_pause(containerd: Containerd, rootfs: Path) -> None:
    containerd.run_container("misc", rootfs, COUNTER)
    # stdin reaches the exec, and its end (CloseIO) ends cat.
    res = subprocess.run(
        ["ctr", "--address", str(containerd.sock), "-n", NS, "task", "exec", "--exec-id", "in",
         "misc", "/bin/cat"],
        input="through stdin\n", capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "through stdin" in res.stdout
    metrics = containerd.ctr("task", "metrics", "misc")
    assert "memory.usage_in_bytes" in metrics
    usage = [ln for ln in metrics.splitlines() if ln.startswith("memory.usage_in_bytes")]
    assert int(usage[0].split()[-1]) > 0
    # ctr 1.6 has no `task update`: call the shim's Update as containerd would.
    update_memory_limit(containerd, "misc", 64 << 20)
    limit = Path(f"/sys/fs/cgroup/memory/{NS}/misc/memory.limit_in_bytes").read_text()
    assert int(limit) == 64 << 20
    containerd.ctr("task", "pause", "misc")
    assert containerd.tasks()["misc"][1] == "PAUSED"
    frozen = count(rootfs)
    time.sleep(0.5)
    assert count(rootfs) == frozen
    containerd.ctr("task", "resume", "misc")
    wait_for(lambda: count(rootfs) > frozen, 10, "counting after resume")
    containerd.remove("misc")


def update_memory_limit(containerd: Containerd, cid: str, limit: int) -> None:
    import asyncio
    import json

    from google.protobuf import any_pb2

    from architect.runtime.shim import ttrpc
    from architect.runtime.shim.pb import shim_pb2

    bundle = containerd.base / "state" / "io.containerd.runtime.v2.task" / NS / cid
    address = (bundle / "address").read_text()
    resources = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps({"memory": {"limit": limit}}).encode(),
    )

    async def call() -> None:
        client = await ttrpc.Client.connect(address)
        try:
            req = shim_pb2.UpdateTaskRequest(id=cid, resources=resources)
            await client.call("containerd.task.v2.Task", "Update", req.SerializeToString())
        finally:
            await client.close()

    asyncio.run(call())


def test_tty_through_console_socket(containerd: Containerd, rootfs: Path) -> None:
    # ctr -t needs a terminal of its own: util-linux `script` gives it one.
    base = f"ctr --address {containerd.sock} -n {NS}"
    cmd = (
        f"{base} run -t --rm --env PATH=/bin --runtime io.containerd.architect.v1 "
        f"--rootfs {rootfs} tty1 /bin/sh -c 'tty; echo done-$((6*7)); exit 5'"
    )
    res = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert "/dev/pts/" in res.stdout, res.stdout + res.stderr
    assert "done-42" in res.stdout
    assert res.returncode == 5, res.returncode
    containerd.run_container("ttyx", rootfs, COUNTER)
    cmd = f"{base} task exec -t --exec-id t1 ttyx /bin/sh -c 'tty; echo exec-$((6*7))'"
    res = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert "/dev/pts/" in res.stdout and "exec-42" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 0
    containerd.remove("ttyx")


def test_oom_kill_is_published(containerd: Containerd, rootfs: Path) -> None:
    log = containerd.base / "containerd.log"
    before = log.read_text(errors="replace").count("topic=/tasks/oom")
    containerd.run_container(
        "oom", rootfs, "sleep 1; x=$(head -c 80000000 /dev/zero | tr '\\0' a); sleep 100",
        extra=("--memory-limit", str(16 << 20)),
    )
    wait_for(lambda: containerd.tasks()["oom"][1] == "STOPPED", 60, "the OOM kill")
    wait_for(
        lambda: log.read_text(errors="replace").count("topic=/tasks/oom") > before,
        10, "a /tasks/oom event in containerd's log",
    )
    containerd.remove("oom")
