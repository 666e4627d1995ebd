"""Run an engine's CLI as an asyncio subprocess, bounded in time.

The engine's stdout/stderr go to files, not pipes: a restored container can
inherit runc's stdio, and a pipe it held would keep us waiting for its EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

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


async def run(argv: Sequence[str], timeout: float = 300.0) -> Completed:
    """Run ``argv``; on timeout kill it and report exit code -9."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err
        )
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            code = -9
            err.write(f"\ntimed out after {timeout:.0f}s\n".encode())
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        out.seek(0)
        err.seek(0)
        return Completed(
            tuple(argv),
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
