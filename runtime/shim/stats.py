"""A container's cgroup metrics, as the Task API's Stats answers them."""

from __future__ import annotations

from pathlib import Path

from architect.runtime.shim.pb import cgroups_metrics_pb2


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def read_cgroup_metrics(
    cg: str, root: Path = Path("/sys/fs/cgroup")
) -> cgroups_metrics_pb2.Metrics:
    """cgroup v1 metrics of a container (memory, cpu, pids) as containerd expects."""
    m = cgroups_metrics_pb2.Metrics()
    if not cg or ":" in cg:  # systemd-style paths are not resolved here
        return m
    rel = cg.lstrip("/")
    m.memory.usage.usage = _read_int(root / "memory" / rel / "memory.usage_in_bytes")
    m.memory.usage.limit = _read_int(root / "memory" / rel / "memory.limit_in_bytes")
    m.cpu.usage.total = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
    m.pids.current = _read_int(root / "pids" / rel / "pids.current")
    return m
