"""The flow both backends share: scratch dirs, image packing, verified unpacking.

A backend subclass only says how its engine dumps, restores, tells whether a
container exists, and removes one; everything about the image is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from abc import abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

from architect.runtime.checkpoint import image
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
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.checkpoint.proc import Completed, Spawner, run
from architect.runtime.checkpoint.rewrite import check_rewrites

log = logging.getLogger(__name__)


def scratch_beside(path: Path, what: str) -> Path:
    """A fresh hidden directory next to ``path`` (same filesystem: cheap renames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    d = path.parent / f".{path.name}.{what}-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


# How many images' seals a backend keeps (one per hibernated container it runs).
MAX_SEALS = 1024


class EngineBackend(Backend):
    # How engine commands are started and reaped (None: asyncio's subprocess).
    _spawner: Spawner | None = None
    # Whether the engine may restore straight from a directory-layout image when
    # nothing in it is to be edited (it only reads the image: CRIU writes its
    # logs and stats to the work dir). Else it restores from a verified copy.
    restores_in_place: ClassVar[bool] = False

    @property
    def _seals(self) -> OrderedDict[str, image.Seal]:
        """Seals of the images this backend wrote (image path -> seal), newest last."""
        book: OrderedDict[str, image.Seal] | None = self.__dict__.get("_seal_book")
        if book is None:
            book = self.__dict__["_seal_book"] = OrderedDict()
        return book

    def _keep_seal(self, image_dir: Path, manifest: Manifest) -> None:
        sealed = image.seal(image_dir, manifest)
        key = os.path.abspath(image_dir)
        self._seals.pop(key, None)
        if sealed is not None:
            self._seals[key] = sealed
            while len(self._seals) > MAX_SEALS:
                self._seals.popitem(last=False)

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

    def _engine_timings(self, container: Container) -> dict[str, float]:
        """Parts of the last engine restore of ``container`` worth reporting
        (seconds, inside ``engine_restore``); taken once."""
        return {}

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
        self._seals.pop(os.path.abspath(image_dir), None)
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
                manifest = await asyncio.to_thread(
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
        if self.restores_in_place:
            # After the scratch is gone: its unlinks moved the files' ctimes.
            await asyncio.to_thread(self._keep_seal, image_dir, manifest)
        return manifest

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
        # Straight from the image when nothing in it is edited (no address rewrite,
        # no emptyDir to put back): verified where it lies, no copy.
        in_place = (
            self.restores_in_place
            and manifest.payload.compression == image.DIR
            and not options.rewrites
            and not (options.empty_dirs and manifest.empty_dirs)
        )
        key = os.path.abspath(image_dir)
        scratch: Path | None = None
        try:
            if in_place:
                engine_dir = await self._verify_in_place(container, image_dir, key)
                t_verified = time.monotonic()
                scratch = scratch_beside(image_dir, "restore")
                details: dict[str, float] = {}
            else:
                if await self._exists(container):
                    raise RestoreFailed(container.id, f"{self.name}: container already exists")
                scratch = scratch_beside(image_dir, "restore")
                unpacked = scratch / "image"
                # verifies every digest first; in a thread, as pack
                await asyncio.to_thread(image.unpack, image_dir, unpacked)
                t_verified = time.monotonic()
                engine_dir = unpacked / image.ENGINE_DIR
                details = self._prepare(engine_dir, options)
                if options.empty_dirs:
                    await asyncio.to_thread(
                        image.put_back_empty_dirs, unpacked, manifest, targets
                    )
            work_dir = scratch / "work"
            work_dir.mkdir()
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
            details.update(self._engine_timings(container))
            self._seals.pop(key, None)  # the process runs on: the image is history
            return RestoreResult(container.id, pid, manifest, t_done - t0, details)
        finally:
            if scratch is not None:
                safe_rmtree(scratch)

    async def _verify_in_place(self, container: Container, image_dir: Path, key: str) -> Path:
        """Verify the image where it lies (sealed files not hashed again) while the
        runtime is asked whether the container exists; the engine's dir in it."""
        exists = asyncio.ensure_future(self._exists(container))
        try:
            checked = await asyncio.to_thread(
                image.verify_in_place, image_dir, self._seals.get(key)
            )
        except BaseException:
            exists.cancel()
            with contextlib.suppress(BaseException):
                await exists
            raise
        if await exists:
            raise RestoreFailed(container.id, f"{self.name}: container already exists")
        log.debug(
            "%s: image verified in place: %d file(s) hashed (%d bytes), %d sealed",
            image_dir, checked.hashed_files, checked.hashed_bytes, checked.trusted_files,
        )  # fmt: skip
        return checked.engine_dir
