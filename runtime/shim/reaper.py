"""One reaper for every child of the shim.

The shim is a child subreaper: container processes whose runc parent exited are
re-parented to it. Any ``waitpid`` elsewhere (subprocess, asyncio's child
watchers) would race with this one, so all children are spawned through
``spawn`` and all exits arrive through ``reap``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import IO, Any

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_UNCLAIMED_MAX = 1024

ExitListener = Callable[[int, int], None]


def exit_code(status: int) -> int:
    """A wait status as containerd reports it: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


def set_child_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Reaper:
    def __init__(self) -> None:
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        # Exits of pids nobody asked about yet (a container init can exit before
        # the shim has read its pid file); bounded so it cannot grow forever.
        self._unclaimed: OrderedDict[int, int] = OrderedDict()
        self._listeners: list[ExitListener] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def subscribe(self, listener: ExitListener) -> None:
        """Call ``listener(pid, exit_code)`` for every reaped child."""
        self._listeners.append(listener)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.deliver(pid, exit_code(status))

    def deliver(self, pid: int, code: int) -> None:
        waiters = self._waiters.pop(pid, [])
        for fut in waiters:
            if not fut.done():
                fut.set_result(code)
        if not waiters:
            self._unclaimed[pid] = code
            while len(self._unclaimed) > _UNCLAIMED_MAX:
                self._unclaimed.popitem(last=False)
        for listener in list(self._listeners):
            try:
                listener(pid, code)
            except Exception:
                log.exception("exit listener failed for pid %d", pid)

    def exited(self, pid: int) -> int | None:
        """The exit code of ``pid`` if it was reaped before anyone waited for it."""
        return self._unclaimed.get(pid)

    def wait(self, pid: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if pid in self._unclaimed:
            fut.set_result(self._unclaimed.pop(pid))
        else:
            self._waiters.setdefault(pid, []).append(fut)
        return fut

    async def spawner(
        self, argv: Sequence[str], stdin: int, stdout: int, stderr: int
    ) -> tuple[int, asyncio.Future[int]]:
        """``spawn`` as runtime/checkpoint's Spawner: engine commands run through
        this reaper, in their own session (a timeout kills the group)."""
        return self.spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, new_session=True)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> tuple[int, asyncio.Future[int]]:
        """Start ``argv``; return its pid and a future of its exit code."""
        proc = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=new_session,
        )
        # Registered before the loop can run the SIGCHLD handler: no exit is missed.
        fut = self.wait(proc.pid)
        # Keep subprocess from polling a pid this reaper owns.
        proc.returncode = 0
        return proc.pid, fut
