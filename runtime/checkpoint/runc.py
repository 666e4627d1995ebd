"""runc + CRIU backend: checkpoints one container's process tree.

runc drives CRIU (found on PATH, /usr/local/sbin/criu from install). Sockets
bound to the old pod IP are rewritten in CRIU's files.img before restore.
CRIU's network lock is recorded as ``skip`` after the dump and removed by us
after the restore (netlock.py: CRIU's restore would lock the pod again, above
the daemon's packet hold, and a failed restore would leave it locked).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from architect.runtime.checkpoint import netlock, rewrite
from architect.runtime.checkpoint.api import (
    CheckpointOptions,
    Container,
    RestoreOptions,
    Scope,
)
from architect.runtime.checkpoint.base import EngineBackend
from architect.runtime.checkpoint.errors import BackendUnavailable
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.checkpoint.proc import (
    Completed,
    Spawner,
    kill_cgroup,
    remove_cgroup,
    run,
    which,
)

log = logging.getLogger(__name__)

DEFAULT_RUNC_ROOT = Path("/run/runc")
CRIU_MIN = (4, 0)  # 3.x fails on current kernels (vDSO bounds, socket options)


def parse_criu_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def cgroups_path(bundle: Path, container_id: str) -> str:
    """The container's cgroup as runc (cgroupfs driver) derives it from config.json."""
    try:
        config = json.loads((bundle / "config.json").read_text())
        path = config.get("linux", {}).get("cgroupsPath") or ""
    except (OSError, ValueError, AttributeError):
        path = ""
    return str(path) if path else f"/{container_id}"


class RuncCriuBackend(EngineBackend):
    name: ClassVar[str] = "runc-criu"
    scope: ClassVar[Scope] = Scope.CONTAINER
    restores_in_place: ClassVar[bool] = True

    def __init__(
        self,
        runc: str = "runc",
        criu: str = "criu",
        timeout: float = 300.0,
        spawner: Spawner | None = None,
    ) -> None:
        self._spawner = spawner
        self._runc = runc
        self._criu = criu
        self._timeout = timeout
        self._version: str | None = None
        self._unlocks: dict[str, float] = {}  # container id -> seconds of the last unlock

    def _base(self, container: Container) -> list[str]:
        # --criu: runc would look for criu on its PATH, which may lack /usr/local/sbin.
        argv = [which(self._runc), "--criu", which(self._criu)]
        if container.state_root is not None:
            argv += ["--root", str(container.state_root)]
        return argv

    async def _exists(self, container: Container) -> bool:
        """Whether runc has a record of ``container``: its ``<root>/<id>/state.json``,
        which is what ``runc state`` loads (a stat instead of a process: it was the
        one runc call of a wake besides the restore itself)."""
        root = container.state_root or DEFAULT_RUNC_ROOT
        return (root / container.id / "state.json").is_file()

    async def version(self) -> str:
        if self._version is None:
            runc_v = await self._run([which(self._runc), "--version"], 30)
            criu_path = which(self._criu)
            criu_v = await self._run([criu_path, "--version"], 30)
            parsed = parse_criu_version(criu_v.stdout)
            if not runc_v.ok or not criu_v.ok or parsed is None:
                raise BackendUnavailable(self.name, "runc or criu does not report a version")
            if parsed[:2] < CRIU_MIN:
                raise BackendUnavailable(
                    criu_path,
                    f"criu {'.'.join(map(str, parsed))} is too old (need 4.x from install)",
                )
            runc_line = runc_v.stdout.splitlines()[0].replace("runc version ", "")
            self._version = f"runc {runc_line}; criu {'.'.join(map(str, parsed))}"
        return self._version

    async def _dump(
        self, container: Container, engine_dir: Path, work_dir: Path, options: CheckpointOptions
    ) -> Completed:
        argv = [
            *self._base(container),
            "checkpoint",
            "--image-path", str(engine_dir),
            "--work-path", str(work_dir),
            "--file-locks",
        ]  # fmt: skip
        if options.tcp_established:
            argv.append("--tcp-established")
        if options.leave_running:
            argv.append("--leave-running")
        done = await self._run([*argv, container.id], self._timeout)
        if done.ok and netlock.bundle_netns(container.bundle) is not None:
            # Before the image is packed: its digests cover the edited inventory.
            try:
                netlock.skip_lock_in_image(engine_dir)
            except Exception as e:  # the image as CRIU wrote it still restores
                log.warning("%s: network lock kept in the image: %s", container.id, e)
        return done

    def _prepare(self, engine_dir: Path, options: RestoreOptions) -> dict[str, float]:
        t = time.monotonic()
        rewrite.rewrite_image_dir(engine_dir, options.rewrites)
        # A restore from a copy may go into a namespace no dump lock covers (a
        # migration): CRIU locks and unlocks it itself, as it would have.
        netlock.restore_lock_in_image(engine_dir)
        return {"rewrite": time.monotonic() - t}

    async def _restore(
        self,
        container: Container,
        bundle: Path,
        engine_dir: Path,
        work_dir: Path,
        pid_file: Path,
        options: RestoreOptions,
    ) -> Completed:
        argv = [
            *self._base(container),
            "--log", str(work_dir / "runc.log"),
            "restore", "--detach",
            "--image-path", str(engine_dir),
            "--work-path", str(work_dir),
            "--bundle", str(bundle),
            "--pid-file", str(pid_file),
            "--file-locks",
        ]  # fmt: skip
        if options.tcp_established:
            argv.append("--tcp-established")
        try:
            return await self._run([*argv, container.id], self._timeout, options.stdio)
        finally:
            # Succeeded or not: the dump's lock (or one a failed CRIU left) goes,
            # before the daemon lets the held packets through.
            netns = netlock.bundle_netns(bundle)
            if netns is not None:
                t = time.monotonic()
                await self._unlock(netns)
                self._unlocks[container.id] = time.monotonic() - t

    def _engine_timings(self, container: Container) -> dict[str, float]:
        unlock = self._unlocks.pop(container.id, None)
        return {} if unlock is None else {"unlock": unlock}

    async def _unlock(self, netns: str) -> int:
        """Remove CRIU's lock from ``netns``; the rules removed. Never raises (it
        runs in a ``finally``: the restore's own outcome must come through)."""

        async def runner(argv: Sequence[str], data: bytes | None) -> Completed:
            return await run(argv, 30, spawner=self._spawner, input=data)

        tools = {}
        for name in ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"):
            with contextlib.suppress(BackendUnavailable):
                tools[name] = which(name)
        try:
            return await netlock.remove_lock(netns, runner, which("nsenter"), tools)
        except Exception as e:
            log.warning("%s: CRIU's network lock not removed: %s", netns, e)
            return 0

    async def _remove(self, container: Container, bundle: Path | None = None) -> None:
        state_dir = (container.state_root or DEFAULT_RUNC_ROOT) / container.id
        if state_dir.is_dir() and not (state_dir / "state.json").exists():
            # A restore that died half-way: runc's state dir has no state.json
            # but still the rootfs bind-mounted at criu-root. `runc delete`
            # would RemoveAll through that mount and empty the rootfs: detach
            # first, then remove the dir ourselves.
            safe_rmtree(state_dir)
        else:
            await self._run([*self._base(container), "delete", "--force", container.id], 60)
        # Whatever CRIU had already restored is in the container's cgroup.
        cgroup = cgroups_path(bundle or container.bundle, container.id)
        for _ in range(50):
            if kill_cgroup(cgroup) == 0:
                break
            await asyncio.sleep(0.1)
        remove_cgroup(cgroup)

    def _memory_bytes(self, engine_dir: Path) -> int:
        return sum(p.stat().st_size for p in engine_dir.glob("pages-*.img"))

    def _failure_log(self, work_dir: Path, engine_dir: Path, done: Completed) -> str:
        """runc's own message plus CRIU's error lines (dump.log / restore.log)."""
        lines = [done.tail(6)]
        for log in sorted(work_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            errors = [ln for ln in text if "error" in ln.lower() and "RLIMIT_NOFILE" not in ln]
            # No error line (CRIU stopped on a failed check): its last words say why.
            shown = errors[-10:] if errors else text[-6:]
            if shown:
                lines.append(f"{log.name}: " + "\n".join(shown))
        return "\n".join(lines)
