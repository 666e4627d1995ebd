"""Run an engine's CLI as an asyncio subprocess, bounded in time.

The engine's stdout/stderr go to files, not pipes: a restored container can
inherit runc's stdio, and a pipe it held would keep us waiting for its EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from architect.runtime.checkpoint.errors import BackendUnavailable


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 12) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


def which(binary: str) -> str:
    path = shutil.which(binary, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise BackendUnavailable(binary, "not installed (run runtime/checkpoint/install)")
    return path


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_cgroup(cgroups_path: str) -> int:
    """SIGKILL every process of a container's cgroup (v1 or v2); how many were found.

    The last resort when the runtime lost track of a container (a restore that
    died half-way): its processes are still in the cgroup it was restored into.
    """
    rel = cgroups_path.strip("/")
    if not rel or ":" in rel:  # empty, or a systemd slice spec: not a path
        return 0
    pids: set[int] = set()
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        procs = Path(base) / rel / "cgroup.procs"
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(x) for x in procs.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def remove_cgroup(cgroups_path: str) -> None:
    """rmdir the container's cgroup in every hierarchy (only empty ones go: safe)."""
    rel = cgroups_path.strip("/")
    if not rel or ":" in rel:
        return
    for base in Path("/sys/fs/cgroup").iterdir():
        for d in (base / rel, Path("/sys/fs/cgroup") / rel):
            with contextlib.suppress(OSError):
                d.rmdir()


async def run(
    argv: Sequence[str], timeout: float = 300.0, stdio: tuple[int, int, int] | None = None
) -> Completed:
    """Run ``argv``; on timeout kill it and report exit code -9.

    With ``stdio`` the command runs on those descriptors (what it prints is
    then not captured: pass the engine a --log file for diagnostics)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin: int = asyncio.subprocess.DEVNULL
        stdout: int | IO[bytes] = out
        stderr: int | IO[bytes] = err
        if stdio is not None:
            stdin, stdout, stderr = stdio
        # Own process group: on timeout the engine's helpers (runc's `criu swrk`)
        # die with it instead of spinning on as orphans.
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            code = -9
            err.write(f"\ntimed out after {timeout:.0f}s\n".encode())
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        out.seek(0)
        err.seek(0)
        return Completed(
            tuple(argv),
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
