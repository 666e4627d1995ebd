"""Entering a pod's network namespace.

A pod is reached through a namespace file: ``/proc/<pid>/ns/net`` of any process
of the pod sandbox, or a bind mount such as ``/run/netns/<name>``. Two ways in:

- commands (iptables, conntrack) run under ``nsenter --net=<path>``;
- sockets that must live in the pod's namespace (the NFQUEUE netlink socket) are
  created in a dedicated thread that called ``setns(2)`` first. A socket belongs
  to the namespace it was created in for its whole life, so once created it can be
  used from any thread. The thread is thrown away afterwards: ``setns`` changes
  only the calling thread, and a pooled thread would carry the foreign namespace
  into unrelated work.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_PROC_NS = re.compile(r"^/proc/(\d+)/ns/net$")


class NetNsError(RuntimeError):
    """A namespace could not be entered or a command in it failed."""


@dataclass(frozen=True, slots=True)
class NetNs:
    """A network namespace, named by the path of its namespace file."""

    path: str

    @classmethod
    def of_pid(cls, pid: int) -> NetNs:
        return cls(f"/proc/{pid}/ns/net")

    @classmethod
    def named(cls, name: str) -> NetNs:
        """A namespace made by ``ip netns add NAME``."""
        return cls(f"/run/netns/{name}")

    @property
    def pid(self) -> int | None:
        m = _PROC_NS.match(self.path)
        return int(m.group(1)) if m else None

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def run(
        self, cmd: Sequence[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the namespace; raise NetNsError naming it when it fails."""
        try:
            proc = subprocess.run(
                self.argv(cmd), input=stdin, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetNsError(f"{self.path}: {' '.join(cmd)}: {e}") from e
        if check and proc.returncode != 0:
            raise NetNsError(
                f"{self.path}: {' '.join(cmd)} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def call(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in a fresh thread that has entered this namespace."""
        return call_in_netns(self.path, fn)

    def read_proc_net(self, name: str) -> str:
        """The text of ``/proc/net/<name>`` as this namespace sees it."""
        pid = self.pid
        if pid is not None:
            # /proc/<pid>/net shows the namespace of <pid>: no thread needed.
            with open(f"/proc/{pid}/net/{name}", encoding="ascii") as f:
                return f.read()

        def read() -> str:
            with open(f"/proc/thread-self/net/{name}", encoding="ascii") as f:
                return f.read()

        return self.call(read)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetNsError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread inside the namespace at ``path``; return its value."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _setns(path)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=target, name=f"netns:{path}", daemon=True)
    t.start()
    t.join(timeout=30)
    if t.is_alive():
        raise NetNsError(f"{path}: call did not finish within 30s")
    if error:
        raise error[0]
    return result[0]
