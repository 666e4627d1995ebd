"""runsc (gVisor) backend: checkpoints the whole sandbox (every container of the pod).

runsc writes one state file (already compressed by runsc). Network addresses
live inside gVisor's own netstack state and are not rewritten here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from architect.runtime.checkpoint.api import (
    CheckpointOptions,
    Container,
    RestoreOptions,
    Scope,
)
from architect.runtime.checkpoint.base import EngineBackend
from architect.runtime.checkpoint.errors import BackendUnavailable, RestoreFailed
from architect.runtime.checkpoint.proc import Completed, Spawner, which


class RunscBackend(EngineBackend):
    name: ClassVar[str] = "runsc"
    scope: ClassVar[Scope] = Scope.SANDBOX

    def __init__(
        self,
        runsc: str = "runsc",
        flags: Sequence[str] = (),
        timeout: float = 300.0,
        spawner: Spawner | None = None,
    ) -> None:
        """``flags`` are runsc's global flags (e.g. --network=none), the same for
        every command so a restore boots the sandbox the way it was created."""
        self._spawner = spawner
        self._runsc = runsc
        self._flags = tuple(flags)
        self._timeout = timeout
        self._version: str | None = None
        self._spec_flag: list[str] | None = None

    def _base(self, container: Container) -> list[str]:
        argv = [which(self._runsc)]
        if container.state_root is not None:
            argv += ["--root", str(container.state_root)]
        return argv + list(self._flags)

    async def version(self) -> str:
        if self._version is None:
            done = await self._run([which(self._runsc), "--version"], 30)
            if not done.ok or not done.stdout.strip():
                raise BackendUnavailable(self.name, "runsc does not report a version")
            self._version = done.stdout.splitlines()[0].strip()
        return self._version

    async def _dump(
        self, container: Container, engine_dir: Path, work_dir: Path, options: CheckpointOptions
    ) -> Completed:
        argv = [*self._base(container), "checkpoint", "--image-path", str(engine_dir)]
        if options.leave_running:
            argv.append("--leave-running")
        done = await self._run([*argv, container.id], self._timeout)
        if done.ok and not options.leave_running:
            # runsc leaves a stopped record behind; delete it so the sandbox's
            # processes and memory are gone and the id can be restored.
            await self._remove(container)
        return done

    async def _restore(
        self,
        container: Container,
        bundle: Path,
        engine_dir: Path,
        work_dir: Path,
        pid_file: Path,
        options: RestoreOptions,
    ) -> Completed:
        if options.rewrites:
            raise RestoreFailed(
                container.id, "runsc images keep addresses in gVisor's state; cannot rewrite"
            )
        argv = [
            *self._base(container),
            "--log", str(work_dir / "runsc.log"),
            *await self._lenient_spec(),
            "restore", "-detach",
            "--image-path", str(engine_dir),
            "--bundle", str(bundle),
            "--pid-file", str(pid_file),
            container.id,
        ]  # fmt: skip
        return await self._run(argv, self._timeout, options.stdio)

    async def _lenient_spec(self) -> list[str]:
        """A new pod restoring a PersistentCheckpoint has its own mounts (its
        serviceaccount token, /etc/hosts of its uid); gVisor's default "enforce"
        refuses a spec that differs, so log the differences instead. Container
        names still have to match. Older runsc (Debian's 2022) has no such flag."""
        if self._spec_flag is None:
            flag = ["--restore-spec-validation", "warning"]
            done = await self._run([which(self._runsc), *flag, "--version"], 30)
            self._spec_flag = flag if done.ok else []
        return self._spec_flag

    async def _remove(self, container: Container, bundle: Path | None = None) -> None:
        await self._run([*self._base(container), "delete", "-force", container.id], 60)

    def _memory_bytes(self, engine_dir: Path) -> int:
        return sum(p.stat().st_size for p in engine_dir.iterdir() if p.is_file())

    def _failure_log(self, work_dir: Path, engine_dir: Path, done: Completed) -> str:
        lines = [done.tail(6)]
        log = work_dir / "runsc.log"
        if log.exists():
            text = log.read_text(errors="replace").splitlines()
            lines += [ln for ln in text if "error" in ln.lower()][-10:]
        return "\n".join(ln for ln in lines if ln)
