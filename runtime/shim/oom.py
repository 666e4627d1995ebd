"""OOM notices for cgroup v1: an eventfd registered on the memory cgroup's oom_control.

The eventfd fires when the cgroup hits OOM (before the kernel counts the kill in
``oom_kill``) and also when the cgroup is removed, as a checkpoint does: a notice
while the cgroup still exists is an OOM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


def oom_kills(oom_control: str) -> int:
    """The ``oom_kill`` counter of a memory.oom_control text (pure; 0 if absent)."""
    for line in oom_control.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class OomWatcher:
    def __init__(self, on_oom: Callable[[str], None], root: Path = MEMORY_ROOT) -> None:
        self._on_oom = on_oom
        self._root = root
        self._watches: dict[str, tuple[int, int, Path, int]] = {}  # cid -> efd, cfd, dir, kills

    def watch(self, cid: str, cgroups_path: str) -> bool:
        self.unwatch(cid)
        rel = cgroups_path.strip("/")
        if not rel or ":" in rel:  # systemd slice specs are not paths
            return False
        d = self._root / rel
        try:
            cfd = os.open(d / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            (d / "cgroup.event_control").write_text(f"{efd} {cfd}")
            kills = oom_kills((d / "memory.oom_control").read_text())
        except OSError as e:
            log.warning("%s: no OOM notices: %s", cid, e)
            os.close(efd)
            os.close(cfd)
            return False
        self._watches[cid] = (efd, cfd, d, kills)
        log.debug("%s: watching %s for OOM kills (%d so far)", cid, d, kills)
        asyncio.get_running_loop().add_reader(efd, self._fired, cid)
        return True

    def _fired(self, cid: str) -> None:
        w = self._watches.get(cid)
        if w is None:
            return
        efd, cfd, d, kills = w
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(efd)
        try:
            now = oom_kills((d / "memory.oom_control").read_text())
        except OSError:  # the cgroup is gone
            self.unwatch(cid)
            return
        log.info("%s: OOM (oom_kill %d -> %d)", cid, kills, now)
        self._watches[cid] = (efd, cfd, d, now)
        self._on_oom(cid)

    def unwatch(self, cid: str) -> None:
        w = self._watches.pop(cid, None)
        if w is None:
            return
        efd, cfd, _, _ = w
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(efd)
        for fd in (efd, cfd):
            with contextlib.suppress(OSError):
                os.close(fd)
