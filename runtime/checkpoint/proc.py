"""Run an engine's CLI (runc, runsc, criu) bounded in time: the one code path for it.

The engine's stdout/stderr go to files, not pipes: a restored container can
inherit runc's stdio, and a pipe it held would keep us waiting for its EOF.

How the process is started and reaped is a ``Spawner``: by default asyncio's
subprocess machinery; a child subreaper (the containerd shim) passes its own, so
one ``waitpid`` owns every child and no exit is stolen by asyncio's watcher.
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
from typing import Protocol

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


class Spawner(Protocol):
    """Start ``argv`` in a new session (pgid == pid) on the given descriptors;
    return its pid and a future of its exit code (128 + signal if killed)."""

    async def __call__(
        self, argv: Sequence[str], stdin: int, stdout: int, stderr: int
    ) -> tuple[int, asyncio.Future[int]]: ...


async def asyncio_spawner(
    argv: Sequence[str], stdin: int, stdout: int, stderr: int
) -> tuple[int, asyncio.Future[int]]:
    """The default: asyncio's subprocess (its child watcher reaps)."""
    # Own process group: on timeout the engine's helpers (runc's `criu swrk`)
    # die with it instead of spinning on as orphans.
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
    )

    async def code() -> int:
        rc = await proc.wait()
        return 128 - rc if rc < 0 else rc  # asyncio says -signal

    return proc.pid, asyncio.ensure_future(code())


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
    argv: Sequence[str],
    timeout: float = 300.0,
    stdio: tuple[int, int, int] | None = None,
    *,
    spawner: Spawner | None = None,
    input: bytes | None = None,
) -> Completed:
    """Run ``argv``; on timeout kill its process group and report exit code -9.

    With ``stdio`` the command runs on those descriptors (what it prints is
    then not captured: pass the engine a --log file for diagnostics); else
    ``input`` (if any) is its stdin and its output is captured."""
    spawn = spawner or asyncio_spawner
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as inp,
    ):
        if stdio is not None:
            stdin, stdout, stderr = stdio
        else:
            stdout, stderr = out.fileno(), err.fileno()
            stdin = asyncio.subprocess.DEVNULL
            if input is not None:
                inp.write(input)
                inp.seek(0)
                stdin = inp.fileno()
        pid, done = await spawn(argv, stdin, stdout, stderr)
        try:
            # shield: on timeout the future must stay, to collect the killed group's exit.
            code = await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            _kill_group(pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, 10)
            code = -9
            err.write(f"\ntimed out after {timeout:.0f}s\n".encode())
        except asyncio.CancelledError:
            _kill_group(pid)
            raise
        out.seek(0)
        err.seek(0)
        return Completed(
            tuple(argv),
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
