"""A container's hibernate/wake state machine: hibernate, wake, the start a Create
takes (fresh, restored, or hibernated from a handover), the checkpoint for a
migration when the pod stops, and the bounded wait for the daemon's decision.

The Task API (``service.py``) calls in here and owns everything shim-wide (the
containers, events, exits); what it lends this module comes in as callables, so
this module never imports the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint import (
    AddressRewrite,
    CheckpointError,
    CheckpointOptions,
    ImageError,
    ImageMismatch,
    RestoreOptions,
)
from architect.runtime.checkpoint import Container as CkptContainer
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.shim import plan, podinfo, sandbox, stopwindow
from architect.runtime.shim.bundle import cgroup_path
from architect.runtime.shim.oom import OomWatcher
from architect.runtime.shim.process import RUNNING, Container, Proc
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runc import RuncError
from architect.runtime.shim.stdio import ConsoleIO, PipeIO
from architect.runtime.shim.ttrpc import Code, TtrpcError

log = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], None]
Exited = Callable[[Container, Proc, int], Awaitable[None]]


class Lifecycle:
    def __init__(
        self,
        reaper: Reaper,
        state_root: Path,
        oom: OomWatcher,
        notify: Notify,
        exited: Exited,
        watch_exit: Callable[[Container], None],
        stop_window: float = stopwindow.DEFAULT_WINDOW,
    ) -> None:
        self.reaper = reaper
        self.state_root = state_root
        self.oom = oom
        self.notify = notify  # to the control socket's watchers
        self.exited = exited  # reports a process's exit (TaskExit)
        self.watch_exit = watch_exit  # watches an init's exit the reaper cannot see
        self.stop_window = stop_window
        # The containers of a runsc pod's sandbox, sandbox first (the service's).
        self.members: Callable[[Container], list[Container]] = lambda c: []
        self._pod_locks: dict[str, asyncio.Lock] = {}

    # -- create ------------------------------------------------------------------

    async def create(self, c: Container, decision: plan.StartPlan, terminal: bool) -> None:
        """Start ``c`` as ``decision`` says: restored (its processes run), hibernated
        from the image (none run), or fresh from its bundle when neither took."""
        init = c.init
        c.start_reason = decision.reason
        if decision.path == "restore" and not terminal:
            if not decision.wake:
                if await self.hibernate_on_create(c, decision):
                    # No process: RUNNING in containerd's eyes, as any
                    # hibernated container; the first packet or exec wakes it.
                    init.status = RUNNING
                    c.start_path = "restore"
            else:
                pid = await self.restore_on_create(c, decision)
                if pid:
                    init.pid = pid
                    init.status = RUNNING  # restored processes run at once
                    c.start_path = "restore"
        if not init.pid and not c.hibernated:
            log.info("%s: starting fresh (%s)", c.id, c.start_reason)
            pid_file = c.bundle / "init.pid"
            assert init.io is not None
            if isinstance(init.io, ConsoleIO):
                got = asyncio.create_task(init.io.receive())
                init.pid = await c.runc.create(c.id, c.bundle, pid_file, None, init.io.sock_path)
                await got
            else:
                init.pid = await c.runc.create(c.id, c.bundle, pid_file, init.io.stdio())

    # -- hibernation -------------------------------------------------------------

    async def hibernate(self, c: Container) -> dict[str, Any]:
        if sandbox.pod_scoped(c):
            return await self.hibernate_pod(c)
        async with c.lock:
            if c.hibernated:
                return {"id": c.id, "hibernated": True, "seconds": 0.0}
            if c.init.status != RUNNING:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"container {c.id!r} is not running")
            if c.init.terminal:
                raise TtrpcError(
                    Code.FAILED_PRECONDITION, f"container {c.id!r} has a TTY: not hibernated"
                )
            running = [e.exec_id for e in c.execs.values() if e.status == RUNNING]
            if running:
                raise TtrpcError(
                    Code.FAILED_PRECONDITION, f"container {c.id!r} has running execs {running}"
                )
            t0 = time.monotonic()
            try:
                await self.checkpoint(c)
            except CheckpointError as e:
                raise TtrpcError(Code.UNKNOWN, f"hibernate {c.id}: {e}") from e
            c.timings["hibernate"] = time.monotonic() - t0
            c.persist()
        log.info("%s: hibernated in %.3fs", c.id, c.timings["hibernate"])
        self.notify({"event": "hibernated", "id": c.id})
        return {"id": c.id, "hibernated": True, "seconds": c.timings["hibernate"]}

    async def checkpoint(
        self, c: Container, compression: str = "dir", empty_dirs: tuple[Path, ...] = ()
    ) -> None:
        """Checkpoint ``c`` into its own image (processes gone, memory released).

        The image records the pod IPs, so it can also serve as a handover. It
        carries ``empty_dirs`` only: a hibernation carries none (the volumes stay
        on the node, and a wake must leave them as they are then). A hibernation
        image stays on the node: it keeps the directory layout (no tar stream, one
        hashing pass each way; zstd would cost more time than it saves disk here,
        runtime/checkpoint/README.md)."""
        safe_rmtree(c.image)
        addresses = await self.pod_addresses(c)
        c.checkpointing = True  # the init's exit during the dump is no exit
        try:
            await c.runc.backend.checkpoint(
                self.ckpt(c, addresses, empty_dirs), c.image,
                CheckpointOptions(compression=compression),
            )
        except BaseException:
            c.checkpointing = False
            safe_rmtree(c.image)
            raise
        (c.image / plan.READY_MARK).touch()
        c.hibernated = True
        c.checkpointing = False

    # -- wake --------------------------------------------------------------------

    async def wake(self, c: Container, reason: str = "request") -> dict[str, Any]:
        async with c.lock:
            if not c.hibernated:
                return {"id": c.id, "hibernated": False, "seconds": 0.0}
            await self.wake_locked(c, reason)
        return {"id": c.id, "hibernated": False, "seconds": c.timings["wake"], "pid": c.init.pid}

    async def wake_locked(self, c: Container, reason: str) -> None:
        """Restore hibernated ``c`` (the caller holds ``c.lock``)."""
        if sandbox.pod_scoped(c):
            await self.wake_pod(c, reason)
            return
        assert isinstance(c.init.io, PipeIO)
        t0 = time.monotonic()
        try:
            # A wake never touches the emptyDirs: they stayed on the node, and another
            # container of the pod may have written to them meanwhile.
            result = await c.runc.backend.restore(
                self.ckpt(c), c.image,
                RestoreOptions(rewrites=await self.rewrites(c, c.image),
                               stdio=c.init.io.stdio().fds(), empty_dirs=False),
            )
        except CheckpointError as e:
            if c.deferred_restore:
                # Its first run: as for a restore at create, start it fresh.
                await self._start_fresh_at_wake(c, f"restore at the first wake failed: {e}")
                return
            if not isinstance(e, ImageError):  # the engine failed; the image stays
                raise TtrpcError(Code.UNKNOWN, f"wake {c.id}: {e}") from e
            # The state is lost for good: report the exit, so kubelet's restart
            # policy decides, rather than a container that never wakes.
            log.error("%s: hibernation image unusable, reporting an exit: %s", c.id, e)
            c.hibernated = False
            c.persist()
            self.notify({"event": "wake-failed", "id": c.id, "error": str(e)})
            await self.exited(c, c.init, 255)
            raise TtrpcError(Code.UNKNOWN, f"wake {c.id}: {e}") from e
        c.init.pid = result.pid
        c.hibernated = False
        c.deferred_restore = False
        self.watch_exit(c)
        c.timings["wake"] = time.monotonic() - t0
        c.timings.update({f"wake_{k}": v for k, v in result.details.items()})
        self.oom.watch(c.id, cgroup_path(c.bundle))  # the restore made a new cgroup
        safe_rmtree(c.image)
        c.persist()
        log.info("%s: woken (%s) in %.3fs, pid %d", c.id, reason, c.timings["wake"], result.pid)
        self.notify({"event": "woken", "id": c.id, "reason": reason})

    async def _start_fresh_at_wake(self, c: Container, why: str) -> None:
        """Run a deferred replacement from its bundle, as create would have."""
        assert isinstance(c.init.io, PipeIO)
        log.warning("%s: %s; starting fresh", c.id, why)
        safe_rmtree(c.image)
        r = c.runc
        try:
            c.init.pid = await r.create(c.id, c.bundle, c.bundle / "init.pid",
                                        c.init.io.stdio())
            await r.start(c.id)
        except (RuncError, OSError, TimeoutError) as e:
            c.hibernated = False
            c.persist()
            await self.exited(c, c.init, 255)
            raise TtrpcError(Code.UNKNOWN, f"wake {c.id}: {why}; fresh start: {e}") from e
        c.hibernated = c.deferred_restore = False
        c.start_path, c.start_reason = "fresh", why
        self.watch_exit(c)
        self.oom.watch(c.id, cgroup_path(c.bundle))
        c.persist()
        self.notify({"event": "woken", "id": c.id, "reason": "fresh start", "error": why})

    # -- a runsc pod: its sandbox hibernates as one ------------------------------

    def _pod_lock(self, root: Container) -> asyncio.Lock:
        return self._pod_locks.setdefault(root.id, asyncio.Lock())

    def forget(self, cid: str) -> None:
        """``cid`` is deleted: its pod's lock goes (if it was a sandbox)."""
        self._pod_locks.pop(cid, None)

    def _group(self, c: Container) -> list[Container]:
        group = self.members(c)
        if not group:
            raise TtrpcError(Code.FAILED_PRECONDITION,
                             f"container {c.id!r}: its sandbox is not in this shim")
        return group

    async def hibernate_pod(self, c: Container) -> dict[str, Any]:
        """Hibernate the whole sandbox of runsc container ``c``: one ``runsc
        checkpoint`` of the sandbox (its processes end, memory is released) into
        the sandbox container's image. Every container of the pod stays RUNNING in
        containerd's eyes (no TaskExit, Wait waits), as a hibernated runc one."""
        group = self._group(c)
        root = group[0]
        async with contextlib.AsyncExitStack() as held:
            # Every member's lock (exec and kill take them), by id so two
            # hibernations never wait on each other, then the pod's (wakes take it).
            for m in sorted(group, key=lambda m: m.id):
                await held.enter_async_context(m.lock)
            await held.enter_async_context(self._pod_lock(root))
            if root.hibernated:
                return {"id": c.id, "hibernated": True, "seconds": 0.0}
            for m in group:
                if m.init.status != RUNNING:
                    raise TtrpcError(Code.FAILED_PRECONDITION,
                                     f"container {m.id!r} of the pod is not running")
                if m.init.terminal:
                    raise TtrpcError(Code.FAILED_PRECONDITION,
                                     f"container {m.id!r} of the pod has a TTY: not hibernated")
                running = [e.exec_id for e in m.execs.values() if e.status == RUNNING]
                if running:
                    raise TtrpcError(Code.FAILED_PRECONDITION,
                                     f"container {m.id!r} of the pod has running execs {running}")
            t0 = time.monotonic()
            safe_rmtree(root.image)
            for m in group:
                m.checkpointing = True  # the sandbox's end is no container's exit
            try:
                await root.runc.backend.checkpoint(
                    self.ckpt(root), root.image, CheckpointOptions(compression="dir"))
            except CheckpointError as e:
                for m in group:
                    m.checkpointing = False
                safe_rmtree(root.image)
                raise TtrpcError(Code.UNKNOWN, f"hibernate sandbox {root.id}: {e}") from e
            # The sandbox is gone; its app containers' records go too, so that
            # the wake's `runsc restore` of each may recreate them.
            for m in group[1:]:
                with contextlib.suppress(RuncError):
                    await m.runc.delete(m.id, force=True)
            (root.image / plan.READY_MARK).touch()
            for m in group:
                m.hibernated = True
                m.checkpointing = False
            errors = await sandbox.put_back(root.state_dir, self.reaper.spawner)
            if errors:  # the wake's restore would find no pod address
                log.warning("%s: netns not put back after the checkpoint: %s",
                            root.id, "; ".join(errors))
            took = time.monotonic() - t0
            for m in group:
                m.timings["hibernate"] = took
                m.persist()
        log.info("sandbox %s (%d container(s)): hibernated in %.3fs", root.id, len(group), took)
        for m in group:
            self.notify({"event": "hibernated", "id": m.id})
        return {"id": c.id, "hibernated": True, "seconds": took,
                "containers": [m.id for m in group]}

    async def wake_pod(self, c: Container, reason: str) -> None:
        """Restore the sandbox of hibernated runsc container ``c``: `runsc restore`
        of the sandbox container, then of each app container by its id (gVisor's
        kernel restores when the last one arrives). The tasks keep their ids; their
        pids are the new sandbox's. The caller holds ``c.lock``."""
        group = self._group(c)
        root = group[0]
        async with self._pod_lock(root):
            if not root.hibernated:
                return
            t0 = time.monotonic()
            image = root.image
            done: list[Container] = []
            try:
                for m in [root, *(m for m in group[1:] if m.hibernated)]:
                    assert isinstance(m.init.io, PipeIO)
                    result = await m.runc.backend.restore(
                        self.ckpt(m), image,
                        RestoreOptions(stdio=m.init.io.stdio().fds(), empty_dirs=False),
                    )
                    m.init.pid = result.pid
                    m.timings.update({f"wake_{k}": v for k, v in result.details.items()})
                    done.append(m)
            except CheckpointError as e:
                if not done and not isinstance(e, ImageError):
                    # Nothing restored and the image stays: a later wake retries.
                    raise TtrpcError(Code.UNKNOWN, f"wake sandbox {root.id}: {e}") from e
                # A half-restored sandbox cannot go on (its kernel waits for the
                # container that failed), or the image is unusable: report every
                # container's exit, so the kubelet recreates the pod.
                log.error("sandbox %s: wake failed after %d restore(s), reporting the "
                          "pod's exits: %s", root.id, len(done), e)
                with contextlib.suppress(RuncError):
                    await root.runc.delete(root.id, force=True)
                for m in group:
                    was = m.hibernated
                    m.hibernated = False
                    m.persist()
                    self.notify({"event": "wake-failed", "id": m.id, "error": str(e)})
                    if was:
                        await self.exited(m, m.init, 255)
                safe_rmtree(image)
                raise TtrpcError(Code.UNKNOWN, f"wake sandbox {root.id}: {e}") from e
            took = time.monotonic() - t0
            for m in done:
                m.hibernated = False
                self.watch_exit(m)
                self.oom.watch(m.id, cgroup_path(m.bundle))
                m.timings["wake"] = took
                m.persist()
            safe_rmtree(image)
        log.info("sandbox %s: woken (%s) in %.3fs, pid %d", root.id, reason, took, root.init.pid)
        for m in done:
            self.notify({"event": "woken", "id": m.id, "reason": reason})

    # -- migration on stop -------------------------------------------------------

    async def await_stop_decision(self, c: Container, sig: int) -> None:
        """The daemon may not have decided yet whether this stop migrates (it and the
        kubelet see the pod's deletion at the same time): wait for it, bounded. Outside
        ``c.lock``, so a wake or the control request is never held up by the wait."""
        if not c.stop.expected or c.stop.enabled is not None:
            return
        name = signal.Signals(sig).name
        self.notify({"event": "stop-waiting", "id": c.id, "signal": name,
                     "window": self.stop_window})
        outcome, waited = await c.stop.wait(self.stop_window)
        c.timings["stop_window"] = waited
        if outcome is stopwindow.Outcome.TIMEOUT:
            log.warning("%s: %s: no migrate-on-stop decision after waiting %.3fs "
                        "(window %.1fs): delivering", c.id, name, waited, self.stop_window)
        else:
            log.info("%s: %s: migrate-on-stop %s after waiting %.3fs",
                     c.id, name, outcome.value, waited)
        self.notify({"event": "stop-decision", "id": c.id, "outcome": outcome.value,
                     "waited": round(waited, 3)})

    async def checkpoint_for_migration(self, c: Container) -> None:
        """Pod deletion of a managed container: leave its state for the replacement.

        ``pending`` marks the handover while the checkpoint runs (a replacement
        created meanwhile waits up to its scaleup-timeout); the image's files move
        in with the manifest last, then ``ready``."""
        # tar and zstd: imported by the shims that migrate, not by every idle one
        from architect.runtime.checkpoint import image as ckpt_image
        from architect.runtime.checkpoint.image import MANIFEST

        thash = c.annotations.get(plan.ANN_TEMPLATE_HASH, "")
        name = c.annotations.get(plan.CRI_CONTAINER_NAME, c.id)
        dest = plan.handover_dir(self.state_root, thash or "unknown", name, plan.source_slot(
            c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, ""),
            c.annotations.get(plan.CRI_SANDBOX_NAME, c.id)))
        # The daemon may have marked it pending already, a replacement here may
        # have claimed it: keep those marks (a waiting replacement must never see
        # the dir without one), clear the rest.
        dest.mkdir(parents=True, exist_ok=True)
        (dest / plan.PENDING_MARK).touch()
        for stale in dest.iterdir():
            if stale.name in (plan.PENDING_MARK, plan.CLAIMED_MARK):
                continue
            if stale.is_dir() and not stale.is_symlink():
                safe_rmtree(stale)
            else:
                stale.unlink()
        t0 = time.monotonic()
        travelling = self.travelling_dirs(c)  # migrate-emptydir-containers
        try:
            if not c.hibernated:
                await self.checkpoint(c, compression="auto", empty_dirs=travelling)
            elif travelling or c.runc.backend.describe(c.image).empty_dirs:
                # A hibernation image holds no emptyDir (or, taken over from a
                # handover, the old pod's): the handover takes the volumes as they
                # are now, or none when they do not travel.
                await asyncio.to_thread(ckpt_image.repack, c.image, dest, travelling)
                safe_rmtree(c.image)
        except (CheckpointError, OSError) as e:
            safe_rmtree(dest)  # withdrawn: a waiting replacement starts fresh
            plan.prune_handover_parents(dest)
            log.error("%s: checkpoint for migration failed, stopping: %s", c.id, e)
            self.notify({"event": "migrate-failed", "id": c.id, "error": str(e)})
            return
        if c.image.exists():  # the image moves in as it is, the manifest last
            files = [f for f in c.image.iterdir() if f.name not in (plan.READY_MARK, MANIFEST)]
            for f in [*files, c.image / MANIFEST]:
                os.replace(f, dest / f.name)
            safe_rmtree(c.image)
        (dest / plan.NAMESPACE_MARK).write_text(
            c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, ""), encoding="utf-8")
        (dest / plan.READY_MARK).touch()
        (dest / plan.PENDING_MARK).unlink(missing_ok=True)
        c.timings["migrate"] = time.monotonic() - t0
        log.info("%s: checkpointed for migration into %s in %.3fs",
                 c.id, dest, c.timings["migrate"])
        self.notify({"event": "migrated", "id": c.id, "image": str(dest)})

    # -- restore at create -------------------------------------------------------

    async def image_ready(self, c: Container, decision: plan.StartPlan) -> plan.StartPlan | None:
        """Wait (bounded by the plan's scaleup-timeout) for ``decision.image``: the plan
        to restore from (this one, or a local handover taken instead when the daemon
        says none comes to this pod's slot); None when the caller must start fresh
        (``c.start_reason`` then says why)."""
        assert decision.image is not None
        deadline = time.monotonic() + decision.wait_seconds
        claim = time.monotonic() + decision.claim_seconds
        mark = time.monotonic() + decision.mark_seconds
        ready, pending = decision.image / plan.READY_MARK, decision.image / plan.PENDING_MARK
        nothing = decision.image / plan.NOTHING_MARK
        ref = c.annotations.get(plan.ANN_PERSISTENT, "")
        while not ready.exists():
            if decision.mark_seconds and not (pending.exists() or nothing.exists()):
                # No word from the daemon on this slot yet: wait for it, briefly.
                if time.monotonic() >= mark:
                    c.start_reason = (f"no checkpoint for {decision.image.parent.parent.name}/"
                                      f"{decision.image.parent.name}: the daemon marked "
                                      f"nothing within {decision.mark_seconds:g}s")
                    log.info("%s: %s: starting fresh", c.id, c.start_reason)
                    return None
                await asyncio.sleep(0.1)
                continue
            # `ready` lands before `pending` goes: neither means the handover was
            # withdrawn (the old pod's checkpoint failed), so waiting on is pointless.
            if decision.claim_seconds and not pending.exists() and not ready.exists():
                why = plan.unavailable(decision.image)
                if why or time.monotonic() >= claim:
                    c.start_reason = why or f"PersistentCheckpoint {ref} not available on this node"
                    log.info("%s: %s: starting fresh", c.id, c.start_reason)
                    return None
            elif (decision.wait_seconds and not pending.exists()
                  and (decision.image / plan.NOTHING_MARK).exists()):
                # Nothing from another node: a pod of this template deleted on
                # this node may have left one meanwhile (its slot is marked on
                # the daemon's same pass): plan again, once.
                again = (plan.plan_start("runc", c.annotations,
                                         plan.handover_root(decision.image), None)
                         if decision.consume and not decision.claim_seconds else None)
                if (again is not None and again.path == "restore"
                        and again.image not in (None, decision.image)):
                    log.info("%s: nothing comes to %s; takes %s", c.id, decision.image,
                             again.image)
                    c.start_reason = again.reason
                    return await self.image_ready(c, dataclasses.replace(
                        again, mark_seconds=0.0,
                        wait_seconds=max(0.0, deadline - time.monotonic())))
                c.start_reason = f"no handover on its way to {decision.image}"
                log.info("%s: %s: starting fresh", c.id, c.start_reason)
                return None
            elif decision.wait_seconds and not pending.exists() and not ready.exists():
                c.start_reason = f"handover {decision.image} withdrawn"
                log.info("%s: %s: starting fresh", c.id, c.start_reason)
                return None
            if time.monotonic() >= deadline:
                c.start_reason = f"scaleup-timeout passed waiting for {decision.image}"
                log.info("%s: %s: starting fresh", c.id, c.start_reason)
                return None
            await asyncio.sleep(0.2)
        if decision.handover and decision.consume:  # another pod's: of this namespace only
            refused = plan.foreign_handover(
                decision.image, c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, ""))
            if refused:
                c.start_reason = refused
                log.warning("%s: %s: starting fresh", c.id, refused)
                return None
        if decision.claim_seconds:  # pulled meanwhile: the daemon's grant decides
            refused = plan.persistent_refusal(
                decision.image, c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, "default"), ref)
            if refused:
                c.start_reason = refused
                log.warning("%s: %s: starting fresh", c.id, refused)
                return None
        return decision

    async def restore_on_create(self, c: Container, decision: plan.StartPlan) -> int:
        """Restore from ``decision.image``; 0 when the caller must start fresh
        (``c.start_reason`` then says why)."""
        assert isinstance(c.init.io, PipeIO)
        ready = await self.image_ready(c, decision)
        if ready is None:
            return 0
        decision = ready
        assert decision.image is not None
        t0 = time.monotonic()
        backend = c.runc.backend
        try:
            rewrites = await self.rewrites(c, decision.image)
            arriving = self.arriving_dirs(c, decision)
            if arriving is not None and not backend.describe(decision.image).empty_dirs:
                arriving = None  # the old pod sent none: nothing to put back
            result = await backend.restore(
                self.ckpt(c, empty_dirs=arriving or ()), decision.image,
                RestoreOptions(rewrites=rewrites, stdio=c.init.io.stdio().fds(),
                               empty_dirs=arriving is not None),
            )
        except (CheckpointError, OSError, ValueError) as e:
            # The backend left nothing running: a fresh start is safe.
            c.start_reason = f"restore from {decision.image} failed: {e}"
            log.warning("%s: restore from %s failed, starting fresh: %s", c.id, decision.image, e)
            if decision.consume:  # a broken handover must not fail the next pod too
                self.drop_taken(decision)
            return 0
        c.timings["restore"] = time.monotonic() - t0
        c.timings.update({f"restore_{k}": v for k, v in result.details.items()})
        log.info("%s: restored from %s (%s) in %.3fs, rewrites %s",
                 c.id, decision.image, decision.reason, c.timings["restore"],
                 [f"{r.old}->{r.new}" for r in rewrites] or "none")
        if decision.consume:  # no second container may restore the same state
            self.drop_taken(decision)
        return result.pid

    @staticmethod
    def drop_taken(decision: plan.StartPlan) -> None:
        """Remove an image taken (or broken): no second container may restore it."""
        assert decision.image is not None
        safe_rmtree(decision.image)
        if decision.handover:
            plan.prune_handover_parents(decision.image)

    async def hibernate_on_create(self, c: Container, decision: plan.StartPlan) -> bool:
        """A replacement that postmigration-autoscaleup-containers does not list: the
        handover image becomes its hibernation image, verified now (a bad one starts
        fresh, as a failed restore does), its emptyDirs (when they travel) put in
        place now, so a later wake touches no volume. False: start fresh."""
        from architect.runtime.checkpoint import image as ckpt_image

        ready = await self.image_ready(c, decision)
        if ready is None:
            return False
        decision = ready
        assert decision.image is not None
        t0 = time.monotonic()
        backend = c.runc.backend
        try:
            m = backend.describe(decision.image)
            if m.backend != backend.name:
                raise ImageMismatch(
                    decision.image, f"image was made by {m.backend}, not {backend.name}"
                )
            arriving = self.arriving_dirs(c, decision)
            if arriving is not None and m.empty_dirs:
                # unpacking verifies every digest first
                await asyncio.to_thread(ckpt_image.place_empty_dirs, decision.image, arriving)
            else:
                await asyncio.to_thread(backend.describe, decision.image, True)
            safe_rmtree(c.image)
            c.image.mkdir(parents=True)
            for f in decision.image.iterdir():
                if f.name not in (plan.READY_MARK, plan.PENDING_MARK, plan.NAMESPACE_MARK):
                    shutil.move(f, c.image / f.name)  # same filesystem: a rename
        except (CheckpointError, OSError, ValueError) as e:
            safe_rmtree(c.image)
            c.start_reason = f"restore from {decision.image} failed: {e}"
            log.warning("%s: restore from %s failed, starting fresh: %s", c.id, decision.image, e)
            if decision.consume:
                self.drop_taken(decision)
            return False
        (c.image / plan.READY_MARK).touch()
        if decision.consume:
            self.drop_taken(decision)
        c.hibernated = True
        c.deferred_restore = True
        c.timings["restore"] = time.monotonic() - t0
        c.start_reason = (f"{decision.reason}; hibernated until woken "
                          f"(not in {plan.ANN_AUTOSCALEUP})")
        log.info("%s: %s in %.3fs", c.id, c.start_reason, c.timings["restore"])
        return True

    # -- what the annotations and the pod say ------------------------------------

    def ckpt(
        self,
        c: Container,
        addresses: tuple[str, ...] = (),
        empty_dirs: tuple[Path, ...] = (),
    ) -> CkptContainer:
        """``c`` as the checkpoint backend sees it. ``empty_dirs``: the volumes whose
        content travels in (checkpoint) or comes out of (restore) the image; none
        unless migrate-emptydir-containers lists the container."""
        return c.runc.container(
            c.id,
            c.bundle,
            c.annotations.get(plan.ANN_TEMPLATE_HASH, ""),
            empty_dirs,
            tuple(ipaddress.ip_address(a) for a in addresses),
        )

    def choices(self, c: Container) -> plan.MigrationChoices:
        name = c.annotations.get(plan.CRI_CONTAINER_NAME, "")
        choices = plan.migration_choices(c.annotations, name)
        for problem in choices.problems:  # admission rejects these; never fail the pod
            log.warning("%s: %s: read as the default (not listed)", c.id, problem)
        return choices

    def travelling_dirs(self, c: Container) -> tuple[Path, ...]:
        """The emptyDirs that move with a migration of ``c`` (opted in only)."""
        if not self.choices(c).empty_dirs:
            return ()
        return podinfo.empty_dirs(podinfo.read_spec(c.bundle))

    def arriving_dirs(self, c: Container, decision: plan.StartPlan) -> tuple[Path, ...] | None:
        """Where a start from ``decision`` puts the image's emptyDir content: the
        container's emptyDirs for another pod's image when migrate-emptydir lists the
        container; None: the volumes are left exactly as they are (its own
        hibernation image: the volumes never left the node)."""
        if not decision.handover or not self.choices(c).empty_dirs:
            return None
        return podinfo.empty_dirs(podinfo.read_spec(c.bundle))

    async def rewrites(self, c: Container, image: Path) -> tuple[AddressRewrite, ...]:
        """The socket rewrites a restore of ``image`` as ``c`` applies: only those
        the rewrite-*-addresses-containers annotations ask for, from the pod IPs the
        image recorded to the pod's IPs now (from its /etc/hosts, as the seed says;
        the netns's addresses if that names none). Same IPs (a local wake): none."""
        from architect.runtime.checkpoint.rewrite import rewrites_between

        if c.runtime != "runc":  # runsc keeps its addresses inside gVisor's state
            return ()
        choices = self.choices(c)
        if not (choices.rewrite_listeners or choices.rewrite_established):
            return ()
        old = c.runc.backend.describe(image).addresses
        new = podinfo.hosts_addresses(podinfo.read_spec(c.bundle))
        if not new:
            new = await self.pod_addresses(c)
            log.info("%s: /etc/hosts names no pod IP; the netns has %s", c.id, list(new))
        try:
            return rewrites_between(
                old, new,
                listeners=choices.rewrite_listeners, established=choices.rewrite_established,
            )  # fmt: skip
        except ValueError as e:  # an address that does not parse: restore unrewritten
            log.warning("%s: no socket rewrite: %s", c.id, e)
            return ()

    async def pod_addresses(self, c: Container) -> tuple[str, ...]:
        ns = podinfo.netns_path(podinfo.read_spec(c.bundle))
        return await podinfo.netns_addresses(ns, self.reaper.spawner) if ns else ()
