"""CPU and exec sessions of a container from its cgroup: parsing and the window
(pure), the tracker's use of them, and a real cgroup (root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from architect.engine.telemetry import ContainerKey, ContainerState
from architect.runtime.daemon.tracker import Tracker
from architect.runtime.daemon.usage import (
    WINDOW_S,
    CpuWindow,
    UsageSampler,
    cgroups_path,
    exec_sessions,
    expand_slice,
    parse_cpu_stat,
    parse_ppid,
)
from tests.runtime.daemon.fakes import T0

KEY = ContainerKey("shop", "web", "main")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("/kubepods/besteffort/pod1/abc", "kubepods/besteffort/pod1/abc"),
        (
            "kubepods-besteffort-pod1.slice:cri-containerd:abc",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
            "cri-containerd-abc.scope",
        ),
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        (None, None),
        ("", None),
    ],
)
def test_cgroups_path(raw: str | None, want: str | None) -> None:
    config = {"linux": {"cgroupsPath": raw}} if raw is not None else {"linux": {}}
    assert cgroups_path(config) == want


def test_expand_slice() -> None:
    assert expand_slice("-.slice") == []
    assert expand_slice("a-b.slice") == ["a.slice", "a-b.slice"]


def test_parse_cpu_stat_and_ppid() -> None:
    assert parse_cpu_stat("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n") == 1_500_000
    assert parse_cpu_stat("nr_periods 0\n") is None
    assert parse_ppid("42 (my (odd) cmd) S 7 42 42 0 -1") == 7
    assert parse_ppid("garbage") is None


@pytest.mark.parametrize(
    ("parents", "sessions"),
    [
        ({}, 0),  # hibernated: no processes
        ({10: 1}, 0),  # the init alone (its parent: the shim)
        ({10: 1, 11: 10, 12: 11}, 0),  # the init's own children
        ({10: 1, 20: 1}, 1),  # one exec (parent outside the cgroup)
        ({10: 1, 20: 1, 21: 20, 30: 5}, 2),  # two execs, one with a child
    ],
)
def test_exec_sessions(parents: dict[int, int], sessions: int) -> None:
    assert exec_sessions(parents) == sessions


def test_cpu_window_averages_over_ten_seconds() -> None:
    w = CpuWindow()
    assert w.add(T0, 0) is None  # one sample: no rate
    assert w.add(T0 + timedelta(seconds=1), 10**9) is None  # 1 s: too short to tell
    # 1 s of CPU in 2 s: half a core.
    assert w.add(T0 + timedelta(seconds=2), 10**9) == pytest.approx(500.0)
    # Idle afterwards: the burst fades out of the window, not at once.
    for s in range(3, 13):
        rate = w.add(T0 + timedelta(seconds=s), 10**9)
    assert rate is not None and rate < 100
    assert w.add(T0 + timedelta(seconds=30), 10**9) == pytest.approx(0.0)
    assert (T0 + timedelta(seconds=30) - w.samples[0][0]).total_seconds() >= WINDOW_S


def test_cpu_window_restarts_on_a_new_cgroup() -> None:
    w = CpuWindow()
    w.add(T0, 5 * 10**9)
    w.add(T0 + timedelta(seconds=5), 6 * 10**9)
    # Restored: a fresh cgroup counts from zero; no negative rate.
    assert w.add(T0 + timedelta(seconds=6), 10**7) is None
    assert w.add(T0 + timedelta(seconds=9), 10**7 + 3 * 10**6) == pytest.approx(1.0)


def test_tracker_counts_cpu_and_execs_as_activity() -> None:
    tr = Tracker()
    tr.add(KEY, ContainerState.RUNNING, T0)
    t1, t2, t3 = (T0 + timedelta(seconds=s) for s in (10, 20, 30))
    tr.observe_usage(KEY, 10.0, 0, t1)  # idle background work: not activity
    assert tr.items[KEY].last_activity is None
    tr.observe_usage(KEY, 50.0, 0, t2)  # the threshold counts
    assert tr.items[KEY].last_activity == t2
    tr.observe_usage(KEY, None, 1, t3)  # an exec session, CPU unknown yet
    tel = tr.telemetry()[KEY]
    assert (tel.last_activity, tel.exec_sessions, tel.cpu_millicores) == (t3, 1, 0.0)
    tr.observe_usage(ContainerKey("x", "y", "z"), 500.0, 1, t3)  # not tracked: ignored


def test_sampler_without_a_cgroup_samples_nothing(tmp_path: Path) -> None:
    s = UsageSampler(root=str(tmp_path))
    s.add(KEY, None)
    assert KEY not in s and s.sample(KEY, T0) is None
    s.add(KEY, "kubepods/gone")
    assert KEY in s and s.sample(KEY, T0) is None  # hibernated: no cgroup.procs
    s.drop(KEY)
    assert KEY not in s


def test_sampler_warns_once_when_a_running_cgroup_is_not_under_its_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sampling the wrong tree (a pod without the node's cgroupfs) must say so, once,
    not pass silently for "idle"."""
    s = UsageSampler(root=str(tmp_path))
    s.add(KEY, "kubepods/missing")
    with caplog.at_level("WARNING"):
        assert s.sample(KEY, T0) is None and s.sample(KEY, T0) is None
    warned = [r.getMessage() for r in caplog.records if "no cgroup at" in r.getMessage()]
    assert len(warned) == 1 and "--cgroup-root" in warned[0] and "kubepods/missing" in warned[0]


def test_sampler_rereads_only_new_processes_and_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known parent still in the cgroup stands; a process whose parent left (it
    was reparented outside) is read again and counts as a session."""
    from architect.runtime.daemon import usage

    tree = {10: 1, 11: 10, 12: 11}  # init (parent outside), its child, grandchild
    reads: list[int] = []

    def read_ppid(pid: int) -> int | None:
        reads.append(pid)
        return tree.get(pid)

    monkeypatch.setattr(usage, "_read_ppid", read_ppid)
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    d = tmp_path / "pod" / "c"
    d.mkdir(parents=True)
    procs = d / "cgroup.procs"
    s = UsageSampler(root=str(tmp_path))
    s.add(KEY, "pod/c")
    procs.write_text("10\n11\n12\n")
    assert s.sample(KEY, T0).exec_sessions == 0  # type: ignore[union-attr]
    assert sorted(reads) == [10, 11, 12]
    reads.clear()
    assert s.sample(KEY, T0).exec_sessions == 0  # type: ignore[union-attr]
    assert reads == []  # the root's parent was outside: whoever adopts it is too
    # 11 exits: 12 is reparented to the shim (outside): a second root.
    tree[12] = 1
    procs.write_text("10\n12\n")
    reads.clear()
    assert s.sample(KEY, T0).exec_sessions == 1  # type: ignore[union-attr]
    assert reads == [12]  # only the orphan
    # an exec session (runc's child, parent outside): read once, counted after
    tree[13] = 999
    procs.write_text("10\n12\n13\n")
    reads.clear()
    assert s.sample(KEY, T0).exec_sessions == 2  # type: ignore[union-attr]
    assert s.sample(KEY, T0).exec_sessions == 2  # type: ignore[union-attr]
    assert reads == [13]
    s.drop(KEY)
    assert KEY not in s.ppids


# --- a real cgroup (root) ---------------------------------------------------------


def _v1_cpu_root() -> Path | None:
    for name in ("cpuacct", "cpu,cpuacct"):
        p = Path("/sys/fs/cgroup") / name
        if p.is_dir():
            return p
    return None


@pytest.fixture
def cgroup() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("the cgroup test needs root")
    name = f"architect-usage-test-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if v2 else _v1_cpu_root()
    assert base is not None, "no cgroup v2 and no v1 cpuacct hierarchy"
    d = base / name
    d.mkdir()
    try:
        yield name
    finally:
        for pid in (d / "cgroup.procs").read_text().split():
            subprocess.run(["kill", "-9", pid], check=False, timeout=10)
        deadline = time.monotonic() + 10
        while (d / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        d.rmdir()


def _start_in(cgroup_dir: Path, code: str) -> subprocess.Popen[bytes]:
    """A process of the test (parent outside the cgroup) moved into the cgroup."""
    p = subprocess.Popen([sys.executable, "-c", code])
    (cgroup_dir / "cgroup.procs").write_text(str(p.pid))
    return p


@pytest.mark.root
def test_real_cgroup_cpu_and_exec_sessions(cgroup: str) -> None:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    root = "/sys/fs/cgroup"
    base = Path(root) if v2 else _v1_cpu_root()
    assert base is not None
    d = base / cgroup
    sampler = UsageSampler(root=root)
    sampler.add(KEY, cgroup)
    # The "init": sleeps, with a child of its own (inside: not a session).
    init = _start_in(
        d, "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"
    )
    procs: list[subprocess.Popen[bytes]] = [init]
    try:
        deadline = time.monotonic() + 10
        while len((d / "cgroup.procs").read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        now = T0
        u = sampler.sample(KEY, now)
        assert u is not None and u.exec_sessions == 0 and u.cpu_millicores is None
        for _ in range(3):  # idle over 3 s
            time.sleep(1)
            now += timedelta(seconds=1)
            u = sampler.sample(KEY, now)
        assert u is not None and u.cpu_millicores is not None and u.cpu_millicores < 50
        # An "exec" that spins: a second process whose parent is outside.
        procs.append(_start_in(d, "while True: pass"))
        for _ in range(3):
            time.sleep(1)
            now += timedelta(seconds=1)
            u = sampler.sample(KEY, now)
        assert u is not None and u.exec_sessions == 1
        # 3 s of the last ~5 s spinning: far above 50m (wall time matches the
        # fake clock's steps within the sleeps' slack).
        assert u.cpu_millicores is not None and u.cpu_millicores > 200, u
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
