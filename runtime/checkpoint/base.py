"""The flow both backends share: scratch dirs, image packing, verified unpacking.

A backend subclass only says how its engine dumps, restores, tells whether a
container exists, and removes one; everything about the image is here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from abc import abstractmethod
from pathlib import Path

from architect.runtime.checkpoint import image
from architect.runtime.checkpoint._fs import safe_rmtree
from architect.runtime.checkpoint._proc import Completed, Spawner, run
from architect.runtime.checkpoint.api import (
    DEFAULT_CHECKPOINT,
    DEFAULT_RESTORE,
    Backend,
    CheckpointOptions,
    Container,
    Manifest,
    RestoreOptions,
    RestoreResult,
)
from architect.runtime.checkpoint.errors import (
    CheckpointError,
    CheckpointFailed,
    ContainerNotFound,
    ImageMismatch,
    RestoreFailed,
)
from architect.runtime.checkpoint.rewrite import check_rewrites


def scratch_beside(path: Path, what: str) -> Path:
    """A fresh hidden directory next to ``path`` (same filesystem: cheap renames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    d = path.parent / f".{path.name}.{what}-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


class EngineBackend(Backend):
    # How engine commands are started and reaped (None: asyncio's subprocess).
    _spawner: Spawner | None = None

    async def _run(
        self, argv: list[str], timeout: float, stdio: tuple[int, int, int] | None = None
    ) -> Completed:
        """Every engine command goes through here (one spawner, one timeout policy)."""
        return await run(argv, timeout, stdio, spawner=self._spawner)

    @abstractmethod
    def _base(self, container: Container) -> list[str]:
        """The runtime's argv up to the subcommand (binary, --root, global flags)."""

    async def _exists(self, container: Container) -> bool:
        """Whether the runtime has a record of ``container``."""
        return (await self._run([*self._base(container), "state", container.id], 30)).ok

    @abstractmethod
    async def _dump(
        self, container: Container, engine_dir: Path, work_dir: Path, options: CheckpointOptions
    ) -> Completed:
        """Have the engine write its image of ``container`` into ``engine_dir``."""

    @abstractmethod
    async def _restore(
        self,
        container: Container,
        bundle: Path,
        engine_dir: Path,
        work_dir: Path,
        pid_file: Path,
        options: RestoreOptions,
    ) -> Completed:
        """Have the engine restore ``container`` from ``engine_dir``, detached."""

    @abstractmethod
    async def _remove(self, container: Container, bundle: Path | None = None) -> None:
        """Kill and delete whatever the runtime has of ``container``; never raises.

        ``bundle`` is the one a failed restore used (its config names the cgroup)."""

    def _prepare(self, engine_dir: Path, options: RestoreOptions) -> dict[str, float]:
        """Engine-specific edits of the unpacked image (e.g. address rewriting)."""
        return {}

    def _memory_bytes(self, engine_dir: Path) -> int:
        return 0

    def _failure_log(self, work_dir: Path, engine_dir: Path, done: Completed) -> str:
        return done.tail()

    # ------------------------------------------------------------ checkpoint

    async def checkpoint(
        self,
        container: Container,
        image_dir: Path,
        options: CheckpointOptions = DEFAULT_CHECKPOINT,
    ) -> Manifest:
        if image_dir.exists() and any(image_dir.iterdir()):
            raise CheckpointError(image_dir, "image directory exists and is not empty")
        for d in container.empty_dirs:
            if not d.is_dir():
                raise CheckpointError(d, "emptyDir path is not a directory")
        version = await self.version()
        if not await self._exists(container):
            raise ContainerNotFound(container.id, f"{self.name}: no such container")
        scratch = scratch_beside(image_dir, "dump")
        try:
            engine_dir, work_dir = scratch / "engine", scratch / "work"
            engine_dir.mkdir()
            work_dir.mkdir()
            done = await self._dump(container, engine_dir, work_dir, options)
            if not done.ok:
                raise CheckpointFailed(
                    container.id,
                    f"{self.name} checkpoint failed (exit {done.returncode})",
                    self._failure_log(work_dir, engine_dir, done),
                )
            try:
                # In a thread: hashing and copying a large image must not stall the
                # caller's event loop (the shim answers containerd meanwhile).
                return await asyncio.to_thread(
                    image.pack,
                    image_dir,
                    engine_dir,
                    container.empty_dirs,
                    backend=self.name,
                    backend_version=version,
                    scope=self.scope,
                    container=container.id,
                    pod_template_hash=container.pod_template_hash,
                    memory_bytes=self._memory_bytes(engine_dir),
                    compression=options.compression,
                    addresses=tuple(str(a) for a in container.addresses),
                )
            except BaseException:
                # A half-written image must not look like one.
                safe_rmtree(image_dir)
                raise
        finally:
            safe_rmtree(scratch)

    # ------------------------------------------------------------ restore

    async def restore(
        self,
        container: Container,
        image_dir: Path,
        options: RestoreOptions = DEFAULT_RESTORE,
    ) -> RestoreResult:
        t0 = time.monotonic()
        check_rewrites(options.rewrites)
        manifest = image.read_manifest(image_dir)
        if manifest.backend != self.name:
            raise ImageMismatch(image_dir, f"image was made by {manifest.backend}, not {self.name}")
        bundle = options.bundle or container.bundle
        if not (bundle / "config.json").is_file():
            raise RestoreFailed(container.id, f"bundle {bundle} has no config.json")
        await self.version()
        targets = container.empty_dirs or None
        if options.empty_dirs and targets is not None and len(targets) != len(
            manifest.empty_dirs
        ):
            raise ImageMismatch(
                image_dir,
                f"image holds {len(manifest.empty_dirs)} emptyDir(s), "
                f"container {container.id} has {len(targets)}",
            )
        if await self._exists(container):
            raise RestoreFailed(container.id, f"{self.name}: container already exists")
        scratch = scratch_beside(image_dir, "restore")
        try:
            unpacked = scratch / "image"
            # verifies every digest first; in a thread, as pack
            await asyncio.to_thread(image.unpack, image_dir, unpacked)
            t_verified = time.monotonic()
            engine_dir, work_dir = unpacked / image.ENGINE_DIR, scratch / "work"
            work_dir.mkdir()
            details = self._prepare(engine_dir, options)
            if options.empty_dirs:
                await asyncio.to_thread(image.put_back_empty_dirs, unpacked, manifest, targets)
            pid_file = scratch / "pid"
            t_engine = time.monotonic()
            done = await self._restore(container, bundle, engine_dir, work_dir, pid_file, options)
            if not done.ok:
                log = self._failure_log(work_dir, engine_dir, done)
                await self._remove(container, bundle)
                raise RestoreFailed(
                    container.id, f"{self.name} restore failed (exit {done.returncode})", log
                )
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                await self._remove(container, bundle)
                raise RestoreFailed(container.id, f"{self.name} restore wrote no pid") from None
            t_done = time.monotonic()
            details.update(verify_unpack=t_verified - t0, engine_restore=t_done - t_engine)
            return RestoreResult(container.id, pid, manifest, t_done - t0, details)
        finally:
            safe_rmtree(scratch)
