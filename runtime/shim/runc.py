"""runc/runsc CLI calls of the shim's task lifecycle (create, start, exec, kill, ...).

Checkpoint and restore are runtime/checkpoint's backends; every command, theirs and
these, runs through ``architect.runtime.checkpoint.proc.run`` with the shim's reaper
as spawner. Commands whose stdio belongs to the container (create, exec) write
runc's own errors to a JSON log file instead, read back when the command fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint import Backend
from architect.runtime.checkpoint import Container as CkptContainer
from architect.runtime.checkpoint.proc import run
from architect.runtime.shim.reaper import Reaper

# `runsc wait` lasts as long as the container runs; bounded only so no call is endless.
WAIT_BOUND_S = 10 * 365 * 86400.0


class RuncError(Exception):
    def __init__(self, argv: Sequence[str], code: int, output: str) -> None:
        cmd = " ".join(argv[:4])
        super().__init__(f"{cmd} ... exited {code}: {output.strip()[-2000:]}")
        self.code = code
        self.output = output


@dataclass(frozen=True)
class Stdio:
    """File descriptors handed to runc as the container's (or exec's) stdio."""

    stdin: int
    stdout: int
    stderr: int

    def fds(self) -> tuple[int, int, int]:
        return (self.stdin, self.stdout, self.stderr)


def last_log_error(text: str) -> str:
    """The last error message in a runc --log-format json log (pure)."""
    msg = ""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                msg = line.strip()
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msg = str(entry.get("msg", ""))
    return msg


class Runc:
    def __init__(
        self,
        reaper: Reaper,
        root: Path,
        binary: str = "runc",
        flags: tuple[str, ...] = (),
        timeout: float = 300.0,
    ) -> None:
        self.reaper = reaper
        self.timeout = timeout
        self.flags = flags
        self.root = root
        self.binary = shutil.which(binary) or binary
        # runsc speaks runc's CLI except for checkpoint/restore's CRIU flags.
        self.gvisor = Path(binary).name.startswith("runsc")

    @functools.cached_property
    def backend(self) -> Backend:
        """The checkpoint backend, imported on the first checkpoint or restore: a
        shim that never hibernates does not carry its modules (tar, zstd, CRIU's)."""
        if self.gvisor:
            from architect.runtime.checkpoint.runsc import RunscBackend

            return RunscBackend(self.binary, self.flags, self.timeout, spawner=self.reaper.spawner)
        from architect.runtime.checkpoint.runc import RuncCriuBackend

        return RuncCriuBackend(self.binary, timeout=self.timeout, spawner=self.reaper.spawner)

    def container(
        self,
        cid: str,
        bundle: Path,
        template_hash: str = "",
        empty_dirs: tuple[Path, ...] = (),
        addresses: tuple[Any, ...] = (),
    ) -> CkptContainer:
        """The container as the checkpoint backend knows it (same runtime root)."""
        return CkptContainer(cid, bundle, self.root, template_hash, empty_dirs, addresses)

    def _argv(self, *args: str, log: Path | None = None) -> list[str]:
        argv = [self.binary, "--root", str(self.root), *self.flags]
        if log is not None:
            argv += ["--log", str(log), "--log-format", "json"]
        return argv + list(args)

    async def run(self, *args: str, stdin_data: bytes | None = None) -> str:
        """Run a runc command that owns no container stdio; return its stdout."""
        argv = self._argv(*args)
        done = await run(
            argv, self.timeout, spawner=self.reaper.spawner, input=stdin_data or b""
        )
        if not done.ok:
            raise RuncError(argv, done.returncode, done.stderr + done.stdout)
        return done.stdout

    async def run_with_stdio(self, stdio: Stdio | None, log: Path, *args: str) -> None:
        argv = self._argv(*args, log=log)
        log.unlink(missing_ok=True)
        done = await run(
            argv, self.timeout, stdio.fds() if stdio else None, spawner=self.reaper.spawner
        )
        if not done.ok:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuncError(argv, done.returncode, last_log_error(text) or text or done.tail())

    async def create(
        self,
        cid: str,
        bundle: Path,
        pid_file: Path,
        stdio: Stdio | None,
        console_socket: Path | None = None,
    ) -> int:
        args = ["create", "--bundle", str(bundle), "--pid-file", str(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", str(console_socket)]
        await self.run_with_stdio(stdio, bundle / "runc-create.log", *args, cid)
        return read_pid(pid_file)

    async def start(self, cid: str) -> None:
        await self.run("start", cid)

    async def exec(
        self,
        cid: str,
        process_json: Path,
        pid_file: Path,
        stdio: Stdio | None,
        console_socket: Path | None = None,
    ) -> int:
        args = ["exec", "--detach", "--process", str(process_json), "--pid-file", str(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", str(console_socket)]
        await self.run_with_stdio(stdio, process_json.with_suffix(".log"), *args, cid)
        return read_pid(pid_file)

    async def wait(self, cid: str) -> int:
        """runsc only: block until the container's init exits inside the sandbox and
        return its status (128 + signal when killed), as ``runsc wait`` reports it."""
        argv = self._argv("wait", cid)
        done = await run(argv, WAIT_BOUND_S, spawner=self.reaper.spawner)
        if not done.ok:
            raise RuncError(argv, done.returncode, done.stderr + done.stdout)
        try:
            return int(json.loads(done.stdout)["exitStatus"])
        except (ValueError, KeyError, TypeError) as e:
            raise RuncError(argv, 0, f"unreadable wait result {done.stdout[:200]!r}") from e

    async def kill(self, cid: str, sig: int, all_procs: bool = False) -> None:
        await self.run("kill", *(["--all"] if all_procs else []), cid, str(sig))

    async def delete(self, cid: str, force: bool = False) -> None:
        await self.run("delete", *(["--force"] if force else []), cid)

    async def state(self, cid: str) -> dict[str, Any]:
        data = json.loads(await self.run("state", cid))
        if not isinstance(data, dict):
            raise RuncError(["runc", "state", cid], 0, "state is not a JSON object")
        return data

    async def ps(self, cid: str) -> list[int]:
        data = json.loads(await self.run("ps", "--format", "json", cid) or "[]")
        return [int(p) for p in data or []]

    async def pause(self, cid: str) -> None:
        await self.run("pause", cid)

    async def resume(self, cid: str) -> None:
        await self.run("resume", cid)

    async def update(self, cid: str, resources_json: bytes) -> None:
        await self.run("update", "--resources", "-", cid, stdin_data=resources_json)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
