"""CPU use and open exec sessions of a running managed container, from its cgroup.

A container without ``network-monitor`` has no network activity at all, so
without these a busy batch step or an open ``kubectl exec`` shell would be
hibernated after ``scaledownAfter``. Both come from the container's cgroup, which
runc creates at the OCI spec's ``linux.cgroupsPath`` (the same path again after a
restore):

- CPU: the cgroup's cumulative usage (v2 ``cpu.stat`` ``usage_usec``, v1
  ``cpuacct.usage``), averaged over a window of ``WINDOW_S`` seconds, so one
  short burst (a GC pause) does not count as work but a sustained one does.
- exec sessions: the processes of the cgroup whose parent is outside it. The
  container's init is one (its parent is the shim); every ``runc exec`` process
  is another (runc's child, reparented to the shim); everything the container
  forks has its parent inside. So sessions = such roots - 1.

The cgroup files are read through ``/proc/1/root`` (the host's mount namespace:
the daemon runs with hostPID) when that is readable, so the daemon sees the
node's cgroup tree whether it runs on the host or in its DaemonSet pod.
Parsing is pure; ``UsageSampler`` is the I/O shell.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from architect.engine.telemetry import ContainerKey

WINDOW_S = 10.0
MIN_WINDOW_S = 2.0  # a shorter span says nothing yet (just adopted, just woken)
HOST_CGROUP = "/proc/1/root/sys/fs/cgroup"
LOCAL_CGROUP = "/sys/fs/cgroup"
log = logging.getLogger(__name__)
_V1_CPU = ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")


def cgroups_path(config: Mapping[str, object]) -> str | None:
    """The cgroup of an OCI runtime spec (config.json), relative to the cgroup root.

    ``/kubepods/besteffort/pod<uid>/<id>`` (cgroupfs driver) as is; the systemd
    driver's ``slice:prefix:name`` expanded as runc does
    (``kubepods-besteffort-pod1.slice:cri-containerd:<id>`` ->
    ``kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/
    cri-containerd-<id>.scope``).
    """
    linux = config.get("linux")
    raw = linux.get("cgroupsPath") if isinstance(linux, Mapping) else None
    if not isinstance(raw, str) or not raw:
        return None
    if raw.startswith("/"):
        return raw.strip("/")
    parts = raw.split(":")
    if len(parts) != 3:
        return raw.strip("/") or None
    slice_, prefix, name = parts
    unit = f"{prefix}-{name}.scope" if prefix else name
    return "/".join([*expand_slice(slice_ or "-.slice"), unit])


def sandbox_cgroup(container_cgroup: str) -> str:
    """The cgroup to sample for a gVisor (runsc) pod unit: its pod's, the parent of
    a container's. runsc puts all of the sandbox's host processes (runsc-sandbox,
    the gofers) in the pod sandbox (pause) container's cgroup and leaves the app
    containers' empty (measured on the e2e node: an app container's ``cpuacct.usage``
    stays 0 under a busy loop), so only the pod's, whose counters include its
    children's, sees the sandbox work. No process lives in it directly: exec
    sessions there are always 0 (the shim refuses a hibernate while one runs)."""
    head, _, _ = container_cgroup.rstrip("/").rpartition("/")
    return head or container_cgroup


def expand_slice(slice_: str) -> list[str]:
    """systemd's slice nesting: ``a-b-c.slice`` -> [a.slice, a-b.slice, a-b-c.slice]."""
    if slice_ == "-.slice" or not slice_.endswith(".slice"):
        return []
    words = slice_.removesuffix(".slice").split("-")
    return ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]


def parse_cpu_stat(text: str) -> int | None:
    """Nanoseconds of CPU from a v2 ``cpu.stat`` (its ``usage_usec`` line)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value) * 1000
    return None


def exec_sessions(parents: Mapping[int, int]) -> int:
    """Exec sessions among a cgroup's processes (pid -> parent pid): the processes
    whose parent is outside the cgroup, less the container's init."""
    roots = sum(1 for ppid in parents.values() if ppid not in parents)
    return max(0, roots - 1)


def parse_ppid(stat: str) -> int | None:
    """The parent pid from ``/proc/<pid>/stat`` (the command may hold spaces and ')')."""
    _, sep, rest = stat.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1])


@dataclass(slots=True)
class CpuWindow:
    """Cumulative CPU samples -> average millicores over the last ``WINDOW_S``."""

    samples: deque[tuple[datetime, int]] = field(default_factory=deque)

    def add(self, now: datetime, cpu_ns: int) -> float | None:
        """Record a sample; the average since the window's oldest one (None: too
        short a span to tell)."""
        if self.samples and (cpu_ns < self.samples[-1][1] or now <= self.samples[-1][0]):
            # A smaller counter is a new cgroup (the container was restored);
            # a clock that did not move gives no rate.
            if cpu_ns < self.samples[-1][1]:
                self.samples.clear()
            else:
                return None
        self.samples.append((now, cpu_ns))
        # Keep one sample at least WINDOW_S old, so the window is full once it can be.
        while len(self.samples) > 2 and (now - self.samples[1][0]).total_seconds() >= WINDOW_S:
            self.samples.popleft()
        start, first = self.samples[0]
        span = (now - start).total_seconds()
        if span < MIN_WINDOW_S:
            return None
        return (cpu_ns - first) / span / 1e6  # ns per s -> millicores


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_millicores: float | None  # None: not known yet
    exec_sessions: int


class UsageSampler:
    """Reads the cgroup of each registered container (blocking: a worker thread)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else _cgroup_root()
        self.paths: dict[ContainerKey, str] = {}
        self.windows: dict[ContainerKey, CpuWindow] = {}
        self.missing: set[ContainerKey] = set()  # warned once: cgroup not under root
        self.ppids: dict[ContainerKey, dict[int, int]] = {}  # last sample's pid -> parent
        # (subdirectory, CPU file) of the root's hierarchy, found on first use:
        # the node's cgroup layout does not change under a running daemon.
        self._layout: tuple[str, str | None] | None = None

    def add(self, key: ContainerKey, path: str | None) -> None:
        if path:
            self.paths[key] = path
            self.windows[key] = CpuWindow()

    def drop(self, key: ContainerKey) -> None:
        self.paths.pop(key, None)
        self.windows.pop(key, None)
        self.ppids.pop(key, None)
        self.missing.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self.paths

    def _find_layout(self) -> tuple[str, str | None]:
        if os.path.exists(os.path.join(self.root, "cgroup.controllers")):  # v2
            return "", "cpu.stat"
        for name in _V1_CPU:
            if os.path.isdir(os.path.join(self.root, name)):
                return name, "cpuacct.usage"
        return "pids", None

    def _dirs(self, path: str) -> tuple[str, str | None]:
        """(the directory with cgroup.procs, the CPU counter file) of ``path``."""
        if self._layout is None:
            self._layout = self._find_layout()
        sub, cpu = self._layout
        d = os.path.join(self.root, sub, path) if sub else os.path.join(self.root, path)
        return d, os.path.join(d, cpu) if cpu is not None else None

    def sample(self, key: ContainerKey, now: datetime) -> Usage | None:
        """None when the container has no cgroup (hibernated, gone) or none is known."""
        path = self.paths.get(key)
        if path is None:
            return None
        procs_dir, cpu_file = self._dirs(path)
        try:
            with open(os.path.join(procs_dir, "cgroup.procs"), encoding="ascii") as f:
                pids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            # Only asked for running containers: a cgroup that is not there means
            # the daemon looks at the wrong tree (in a pod without the host's
            # cgroupfs mounted, it sees only its own), and idle would be a guess.
            if key not in self.missing:
                self.missing.add(key)
                log.warning("%s: no cgroup at %s (is --cgroup-root the node's cgroupfs?);"
                            " its CPU and exec sessions are not sampled", key, procs_dir)
            return None
        self.missing.discard(key)
        # A process's parent changes only when the parent exits, and then to an
        # ancestor that lives on (a subreaper or init). So a parent known from the
        # last sample stands without reading /proc/<pid>/stat again unless it was
        # in the cgroup and is gone now; a root's parent was outside, and so is
        # whatever adopts it. Only new processes and orphans are read.
        known, members = self.ppids.get(key, {}), set(pids)
        parents: dict[int, int] = {}
        for pid in pids:
            ppid = known.get(pid)
            if ppid is None or (ppid in known and ppid not in members):
                ppid = _read_ppid(pid)
            if ppid is not None:
                parents[pid] = ppid
        self.ppids[key] = parents
        cpu: float | None = None
        if cpu_file is not None:
            try:
                with open(cpu_file, encoding="ascii") as f:
                    text = f.read()
                ns = parse_cpu_stat(text) if cpu_file.endswith("cpu.stat") else int(text.strip())
            except (OSError, ValueError):
                ns = None
            if ns is not None:
                cpu = self.windows.setdefault(key, CpuWindow()).add(now, ns)
        return Usage(cpu, exec_sessions(parents))


def _read_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_ppid(f.read())
    except OSError:  # exited meanwhile
        return None


def _cgroup_root() -> str:
    try:
        if os.path.isdir(HOST_CGROUP) and os.listdir(HOST_CGROUP):
            return HOST_CGROUP
    except OSError:  # no access to the host's mount namespace
        pass
    return LOCAL_CGROUP
