"""A small async client for the runc CLI, spawning through the shim's reaper.

Commands whose stdio belongs to the container (create, exec, restore) write runc's
own errors to a JSON log file instead, read back when the command fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from architect.runtime.shim.reaper import Reaper


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

    def _argv(self, *args: str, log: Path | None = None) -> list[str]:
        argv = [self.binary, "--root", str(self.root), *self.flags]
        if log is not None:
            argv += ["--log", str(log), "--log-format", "json"]
        return argv + list(args)

    async def run(self, *args: str, stdin_data: bytes | None = None) -> str:
        """Run a runc command that owns no container stdio; return its stdout."""
        argv = self._argv(*args)
        with (
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            tempfile.TemporaryFile() as stdin_f,
        ):
            stdin_f.write(stdin_data or b"")
            stdin_f.seek(0)
            pid, done = self.reaper.spawn(
                argv, stdin=stdin_f, stdout=out, stderr=err, new_session=True
            )
            code = await self._bounded(argv, pid, done)
            out.seek(0)
            err.seek(0)
            text = out.read().decode(errors="replace")
            if code != 0:
                raise RuncError(argv, code, err.read().decode(errors="replace") + text)
            return text

    async def _bounded(self, argv: list[str], pid: int, done: asyncio.Future[int]) -> int:
        """Wait for a runtime command; past the timeout kill its process group (criu too)."""
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, 10)
            raise RuncError(argv, -9, f"timed out after {self.timeout:.0f}s") from None

    async def run_with_stdio(self, stdio: Stdio | None, log: Path, *args: str) -> None:
        argv = self._argv(*args, log=log)
        log.unlink(missing_ok=True)
        if stdio is None:
            pid, done = self.reaper.spawn(argv, new_session=True)
        else:
            pid, done = self.reaper.spawn(
                argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr,
                new_session=True,
            )
        code = await self._bounded(argv, pid, done)
        if code != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuncError(argv, code, last_log_error(text) or text)

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

    async def checkpoint(
        self, cid: str, image: Path, work: Path, leave_running: bool = False
    ) -> None:
        image.mkdir(parents=True, exist_ok=True)
        args = ["checkpoint", "--image-path", str(image)]
        if not self.gvisor:
            work.mkdir(parents=True, exist_ok=True)
            args += ["--work-path", str(work), "--tcp-established", "--file-locks"]
        if leave_running:
            args.append("--leave-running")
        await self.run(*args, cid)
        if self.gvisor and not leave_running:
            # runsc keeps a stopped record; the id must be free for the restore.
            with contextlib.suppress(RuncError):
                await self.delete(cid, force=True)

    async def restore(
        self, cid: str, bundle: Path, image: Path, work: Path, pid_file: Path, stdio: Stdio | None
    ) -> int:
        args = ["restore", "--detach", "--bundle", str(bundle), "--image-path", str(image)]
        args += ["--pid-file", str(pid_file)]
        if not self.gvisor:
            work.mkdir(parents=True, exist_ok=True)
            args += ["--work-path", str(work), "--tcp-established", "--file-locks"]
        await self.run_with_stdio(stdio, bundle / "runc-restore.log", *args, cid)
        return read_pid(pid_file)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
