"""containerd.task.v2.Task for one shim process (one pod, one or more containers).

The Task API only: each handler parses its request, finds the container
(``process.py``) and hands the hibernate/wake lifecycle to ``lifecycle.py``, the
runtime choice to ``runtimeconfig.py``, the bundle's mounts to ``bundle.py`` and
Stats to ``stats.py``. What is shim-wide lives here: the containers, exits, events
and the control socket's watchers.

A hibernated container has no processes, yet State and Wait answer as for a running
one and no TaskExit is published: containerd and kubelet see it RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from architect.runtime.shim import plan, podinfo, sandbox, stopwindow
from architect.runtime.shim.bundle import (
    cgroup_path,
    mount_rootfs,
    read_annotations,
    unmount_rootfs,
)
from architect.runtime.shim.events import Publisher
from architect.runtime.shim.lifecycle import Lifecycle
from architect.runtime.shim.oom import OomWatcher
from architect.runtime.shim.pb import events_pb2, shim_pb2, task_pb2
from architect.runtime.shim.process import (
    CREATED,
    PAUSED,
    RUNNING,
    STOPPED,
    Container,
    Proc,
    new_io,
    not_found,
    ts,
)
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runc import Runc, RuncError
from architect.runtime.shim.runtimeconfig import RuntimeConfig, runtime_config
from architect.runtime.shim.stats import read_cgroup_metrics
from architect.runtime.shim.stdio import ConsoleIO, PipeIO
from architect.runtime.shim.ttrpc import Code, Server, TtrpcError

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
VERSION = "architect-shim-0.1"
# How long a Create of a container kept hibernated waits for the daemon's hold: the
# daemon adopts on its next pass (a tick, or a pod event, well under this).
HOLD_WAIT = 5.0


class TaskService:
    """The Task API. Handlers take and return protobuf messages."""

    def __init__(
        self,
        reaper: Reaper,
        publisher: Publisher,
        namespace: str,
        state_root: Path,
        runc_root: Path,
        on_empty: Callable[[], None] | None = None,
        stop_window: float = stopwindow.DEFAULT_WINDOW,
    ) -> None:
        self.reaper = reaper
        self.publisher = publisher
        self.namespace = namespace
        self.state_root = state_root
        self.runc_root = runc_root
        self.containers: dict[str, Container] = {}
        self.on_empty = on_empty
        self.watchers: list[asyncio.Queue[dict[str, Any]]] = []
        self._runcs: dict[RuntimeConfig, Runc] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.oom = OomWatcher(
            lambda cid: self.publish(events_pb2.TaskOOM(container_id=cid))
        )
        self.lifecycle = Lifecycle(
            reaper, state_root, self.oom, self.notify, self._exited, self._watch_exit,
            stop_window,
        )
        self.lifecycle.members = lambda c: sandbox.members(c, self.containers.values())
        reaper.subscribe(self._on_exit)

    # -- helpers -----------------------------------------------------------------

    def runc(self, rc: RuntimeConfig) -> Runc:
        """The runtime a Create asked for: runc or runsc with that config's flags. Kept
        per config, so the containers that share one share its cached version probe."""
        if rc not in self._runcs:
            name = Path(rc.binary).name
            self._runcs[rc] = Runc(self.reaper, self.runc_root / name, rc.binary, rc.flags)
        return self._runcs[rc]

    def get(self, cid: str) -> Container:
        c = self.containers.get(cid)
        if c is None:
            raise not_found(cid)
        return c

    def proc(self, cid: str, exec_id: str) -> tuple[Container, Proc]:
        c = self.get(cid)
        if not exec_id:
            return c, c.init
        p = c.execs.get(exec_id)
        if p is None:
            raise not_found(cid, exec_id)
        return c, p

    def container_state_dir(self, cid: str) -> Path:
        return self.state_root / "containers" / self.namespace / cid

    control_path: Path | None = None  # this shim's control socket
    run_dir: Path | None = None
    hold_wait: float = HOLD_WAIT

    def _link_path(self, cid: str) -> Path | None:
        return self.run_dir / self.namespace / cid if self.run_dir is not None else None

    def _link_control(self, cid: str) -> None:
        link = self._link_path(cid)
        if link is None or self.control_path is None:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(self.control_path)

    async def _await_hold(self, c: Container) -> None:
        """Created hibernated (no process), ``c`` is Ready once Create returns, and a
        connection before the daemon's hold is armed would be refused: name it to
        the daemon and wait, bounded, for its "held" op. Without a daemon it goes
        on unheld after ``hold_wait`` (packets are then accepted, as a hold fails
        open)."""
        ns = c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, "")
        pod = c.annotations.get(plan.CRI_SANDBOX_NAME, "")
        name = c.annotations.get(plan.CRI_CONTAINER_NAME, "")
        if self.run_dir is None or not (ns and pod and name) or self.hold_wait <= 0:
            return
        marker = plan.hold_marker(self.run_dir, ns, pod, name)
        t0 = time.monotonic()
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.parent / f".{marker.name}.tmp"
            tmp.write_text(c.id)
            tmp.replace(marker)  # the daemon never reads half an ID
            await asyncio.wait_for(c.held.wait(), self.hold_wait)
            log.info("%s: hold armed by the daemon after %.3fs", c.id, time.monotonic() - t0)
        except TimeoutError:
            log.warning("%s: no hold from the daemon within %.1fs: created unheld",
                        c.id, self.hold_wait)
        except OSError as e:
            log.warning("%s: cannot name it to the daemon (%s): created unheld", c.id, e)
        finally:
            marker.unlink(missing_ok=True)
            c.timings["hold_wait"] = time.monotonic() - t0

    def held(self, cid: str) -> Container:
        """The daemon armed the hold of ``cid`` (control op "held")."""
        c = self.get(cid)
        c.held.set()
        return c

    def _unlink_control(self, cid: str) -> None:
        link = self._link_path(cid)
        if link is not None:
            link.unlink(missing_ok=True)

    def notify(self, event: dict[str, Any]) -> None:
        for q in self.watchers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    def publish(self, event: Message) -> None:
        self.publisher.publish(event)

    # -- exits -------------------------------------------------------------------

    @staticmethod
    def _in_sandbox(c: Container) -> bool:
        """A pod's app container under runsc: it runs inside the sandbox process (its
        pid is the sandbox's), so its exit is no host process exit; ``runsc wait``
        reports it instead, as gVisor's own shim does."""
        return c.runtime == "runsc" and c.annotations.get(plan.CRI_CONTAINER_TYPE) == "container"

    async def _runsc_wait(self, c: Container) -> None:
        pid = c.init.pid
        try:
            code = await c.runc.wait(c.id)
        except RuncError as e:
            # The sandbox is gone, and the container with it.
            log.warning("%s: runsc wait: %s", c.id, e)
            code = 128 + signal.SIGKILL
        if c.checkpointing or c.hibernated or c.init.pid != pid:
            return  # a dump ended it, or a restore replaced it: no exit
        if c.init.status in (RUNNING, PAUSED):
            await self._exited(c, c.init, code)

    def _watch_exit(self, c: Container) -> None:
        if self._in_sandbox(c):
            self._spawn(self._runsc_wait(c))

    def _on_exit(self, pid: int, code: int) -> None:
        for c in self.containers.values():
            # An in-sandbox init's pid is the sandbox's: its exit belongs to the
            # sandbox container. Its execs are host processes (`runsc exec`) all the same.
            if (
                not self._in_sandbox(c)
                and c.init.pid == pid
                and c.init.status in (RUNNING, PAUSED, CREATED)
            ):
                if c.checkpointing or c.hibernated:
                    log.info("%s: init %d gone by checkpoint, not an exit", c.id, pid)
                    return
                if c.starting:  # exited before Start answered: report after TaskStart
                    c.pending_exit = code
                    return
                self._spawn(self._exited(c, c.init, code))
                return
            for p in c.execs.values():
                if p.pid == pid and p.status == RUNNING:
                    self._spawn(self._exited(c, p, code))
                    return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _exited(self, c: Container, p: Proc, code: int) -> None:
        p.status = STOPPED
        p.exit_status = code
        p.exited_at = datetime.now(UTC)
        if p is c.init:
            # The init's death ends the pid namespace: execs die with it.
            for e in c.execs.values():
                if e.status == RUNNING and e.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(e.pid, signal.SIGKILL)
        if p.io is not None:
            await p.io.finish()
        log.info("%s%s: exited %d", c.id, f"/{p.exec_id}" if p.exec_id else "", code)
        self.publish(
            events_pb2.TaskExit(
                container_id=c.id,
                id=p.exec_id or c.id,
                pid=p.pid,
                exit_status=code,
                exited_at=ts(p.exited_at),
            )
        )
        p.exited.set()

    # -- Task API ----------------------------------------------------------------

    async def create(self, req: shim_pb2.CreateTaskRequest) -> shim_pb2.CreateTaskResponse:
        if req.id in self.containers:
            raise TtrpcError(Code.ALREADY_EXISTS, f"container {req.id!r}: already exists")
        bundle = Path(req.bundle)
        r = self.runc(runtime_config(req.options))
        annotations = read_annotations(bundle)
        mount_rootfs(bundle, req.rootfs)
        init = Proc("", req.stdin, req.stdout, req.stderr, req.terminal)
        c = Container(req.id, bundle, r, annotations, init, self.container_state_dir(req.id))
        c.timings["runc"] = 0.0
        try:
            c.stop.expected = plan.migration_expected(annotations)
        except plan.PlanError as e:  # admission validates it: log, never fail the pod
            log.warning("%s: not migration-expected: %s", c.id, e)
        decision = plan.plan_start(c.runtime, annotations, self.state_root, c.own_image())
        self.containers[c.id] = c
        await self._snapshot_netns(c)
        try:
            init.io = new_io(c, init)
            await self.lifecycle.create(c, decision, req.terminal)
        except (RuncError, OSError, plan.PlanError, TimeoutError) as e:
            self.containers.pop(c.id, None)
            if init.io is not None:
                init.io.close()
            raise TtrpcError(Code.UNKNOWN, f"create {req.id}: {e}") from e
        c.persist()  # state.json tells the daemon which path was taken
        self._link_control(c.id)
        self.notify({"event": "started", "id": c.id, "path": c.start_path,
                     "reason": c.start_reason, "seconds": c.timings.get("restore", 0.0)})
        if c.hibernated:
            await self._await_hold(c)
        self.publish(
            events_pb2.TaskCreate(
                container_id=c.id,
                bundle=req.bundle,
                rootfs=list(req.rootfs),
                io=events_pb2.TaskIO(
                    stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal
                ),
                checkpoint=req.checkpoint,
                pid=init.pid,
            )
        )
        return shim_pb2.CreateTaskResponse(pid=init.pid)

    async def _snapshot_netns(self, c: Container) -> None:
        """A runsc pod's sandbox takes the pod's addresses off its netns: record
        them first, so a hibernation can put them back for the wake's restore."""
        if not sandbox.pod_scoped(c) or sandbox.sandbox_id(c) != c.id:
            return
        netns = podinfo.netns_path(podinfo.read_spec(c.bundle))
        if not netns:
            return
        try:
            await sandbox.snapshot(netns, c.state_dir, self.reaper.spawner)
        except (OSError, TimeoutError) as e:  # the pod runs; only a wake would miss it
            log.warning("%s: netns %s not recorded: %s", c.id, netns, e)

    async def start(self, req: shim_pb2.StartRequest) -> shim_pb2.StartResponse:
        c, p = self.proc(req.id, req.exec_id)
        if p is c.init:
            if p.status == RUNNING:  # restored (or hibernated) on create
                if not c.hibernated:  # a hibernated one has no process nor cgroup yet
                    self._watch_exit(c)
                    self.oom.watch(c.id, cgroup_path(c.bundle))
                self.publish(events_pb2.TaskStart(container_id=c.id, pid=p.pid))
                return shim_pb2.StartResponse(pid=p.pid)
            if p.status != CREATED:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"container {c.id!r} is not created")
            c.starting = True
            try:
                await c.runc.start(c.id)
            except RuncError as e:
                raise TtrpcError(Code.UNKNOWN, f"start {c.id}: {e}") from e
            finally:
                c.starting = False
            p.status = RUNNING
            self._watch_exit(c)
            self.oom.watch(c.id, cgroup_path(c.bundle))
            self.publish(events_pb2.TaskStart(container_id=c.id, pid=p.pid))
            if c.pending_exit is not None:
                code, c.pending_exit = c.pending_exit, None
                self._spawn(self._exited(c, p, code))
            return shim_pb2.StartResponse(pid=p.pid)
        return await self._start_exec(c, p)

    async def _start_exec(self, c: Container, p: Proc) -> shim_pb2.StartResponse:
        async with c.lock:
            if c.hibernated:
                await self.lifecycle.wake_locked(c, reason="exec")
            spec = c.state_dir / f"exec-{p.exec_id}.json"
            c.state_dir.mkdir(parents=True, exist_ok=True)
            spec.write_bytes(p.spec)
            p.io = new_io(c, p)
            pid_file = c.state_dir / f"exec-{p.exec_id}.pid"
            try:
                if isinstance(p.io, ConsoleIO):
                    got = asyncio.create_task(p.io.receive())
                    p.pid = await c.runc.exec(c.id, spec, pid_file, None, p.io.sock_path)
                    await got
                else:
                    p.pid = await c.runc.exec(c.id, spec, pid_file, p.io.stdio())
            except (RuncError, OSError, TimeoutError) as e:
                p.io.close()
                raise TtrpcError(Code.UNKNOWN, f"exec {c.id}/{p.exec_id}: {e}") from e
            p.status = RUNNING
            if isinstance(p.io, PipeIO):
                # The exec's own fds now live in the process; the shim keeps none.
                for fd in (p.io.in_r, p.io.out_w, p.io.err_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                p.io.in_r = p.io.out_w = p.io.err_w = -1
        self.publish(events_pb2.TaskExecStarted(container_id=c.id, exec_id=p.exec_id, pid=p.pid))
        code = self.reaper.exited(p.pid)
        if code is not None:  # exited before its pid was known
            await self._exited(c, p, code)
        return shim_pb2.StartResponse(pid=p.pid)

    async def state(self, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        c, p = self.proc(req.id, req.exec_id)
        return shim_pb2.StateResponse(
            id=p.exec_id or c.id,
            exec_id=p.exec_id,
            bundle=str(c.bundle),
            pid=p.pid,
            status=task_pb2.Status.Name(p.status),  # a hibernated init stays RUNNING
            stdin=p.stdin,
            stdout=p.stdout,
            stderr=p.stderr,
            terminal=p.terminal,
            exit_status=p.exit_status,
            exited_at=ts(p.exited_at),
        )

    async def wait(self, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        _, p = self.proc(req.id, req.exec_id)
        await p.exited.wait()
        return shim_pb2.WaitResponse(exit_status=p.exit_status, exited_at=ts(p.exited_at))

    async def kill(self, req: shim_pb2.KillRequest) -> None:
        c, p = self.proc(req.id, req.exec_id)
        if p is not c.init:
            if p.status == RUNNING:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, req.signal)
            return
        if p.status == STOPPED:
            raise TtrpcError(Code.NOT_FOUND, f"container {c.id!r}: process already finished")
        if req.signal in (signal.SIGTERM, signal.SIGKILL) and p.status == RUNNING:
            await self.lifecycle.await_stop_decision(c, req.signal)
            if p.status == STOPPED:  # it exited by itself meanwhile
                raise TtrpcError(Code.NOT_FOUND, f"container {c.id!r}: process already finished")
        async with c.lock:
            if c.migrate_on_stop and req.signal in (signal.SIGTERM, signal.SIGKILL):
                await self.lifecycle.checkpoint_for_migration(c)
            if c.hibernated:
                # Nothing runs: the signal's effect is the exit it would cause.
                if req.signal == 0:
                    return
                c.hibernated = False
                c.persist()
                if not c.migrate_on_stop:
                    shutil.rmtree(c.image, ignore_errors=True)
                await self._exited(c, p, 128 + req.signal)
                return
        if p.status == CREATED and not p.pid:
            return
        if p.status == CREATED and req.signal in (signal.SIGKILL, signal.SIGTERM):
            # Never started: runsc's sandbox ignores signals then; delete ends it.
            with contextlib.suppress(RuncError):
                await c.runc.delete(c.id, force=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.exited.wait(), 5)
            if not p.exited.is_set():
                await self._exited(c, p, 128 + req.signal)
            return
        try:
            await c.runc.kill(c.id, req.signal, req.all)
        except RuncError as e:
            raise TtrpcError(Code.NOT_FOUND, f"kill {c.id}: {e}") from e

    async def delete(self, req: shim_pb2.DeleteRequest) -> shim_pb2.DeleteResponse:
        c, p = self.proc(req.id, req.exec_id)
        if p is not c.init:
            if p.status == RUNNING:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"exec {p.exec_id!r} is running")
            c.execs.pop(p.exec_id, None)
            with contextlib.suppress(OSError):
                (c.state_dir / f"exec-{p.exec_id}.json").unlink()
            return shim_pb2.DeleteResponse(
                pid=p.pid, exit_status=p.exit_status, exited_at=ts(p.exited_at)
            )
        if p.status in (RUNNING, PAUSED) and not c.hibernated:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"container {c.id!r} is running")
        with contextlib.suppress(RuncError):
            await c.runc.delete(c.id, force=True)
        if p.io is not None:
            p.io.close()
        self.containers.pop(c.id, None)
        self.lifecycle.forget(c.id)
        self.oom.unwatch(c.id)
        if not c.hibernated:  # a hibernation image outlives the task (shim restarts)
            shutil.rmtree(c.state_dir, ignore_errors=True)
        unmount_rootfs(c.bundle)
        self.publish(
            events_pb2.TaskDelete(
                container_id=c.id, pid=p.pid, exit_status=p.exit_status,
                exited_at=ts(p.exited_at), id=c.id,
            )
        )
        self._unlink_control(c.id)
        return shim_pb2.DeleteResponse(
            pid=p.pid, exit_status=p.exit_status, exited_at=ts(p.exited_at)
        )

    async def exec(self, req: shim_pb2.ExecProcessRequest) -> None:
        c = self.get(req.id)
        if req.exec_id in c.execs:
            raise TtrpcError(Code.ALREADY_EXISTS, f"exec {req.exec_id!r}: already exists")
        if c.init.status == STOPPED:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"container {c.id!r} is stopped")
        p = Proc(req.exec_id, req.stdin, req.stdout, req.stderr, req.terminal, spec=req.spec.value)
        c.execs[req.exec_id] = p
        if c.hibernated:
            # kubectl exec wakes the container: restore before the exec starts.
            async with c.lock:
                if c.hibernated:
                    await self.lifecycle.wake_locked(c, reason="exec")
        self.publish(events_pb2.TaskExecAdded(container_id=c.id, exec_id=req.exec_id))

    async def resize_pty(self, req: shim_pb2.ResizePtyRequest) -> None:
        _, p = self.proc(req.id, req.exec_id)
        if isinstance(p.io, ConsoleIO):
            p.io.resize(req.width, req.height)

    async def close_io(self, req: shim_pb2.CloseIORequest) -> None:
        _, p = self.proc(req.id, req.exec_id)
        if req.stdin and p.io is not None:
            p.io.close_stdin()

    async def pids(self, req: shim_pb2.PidsRequest) -> shim_pb2.PidsResponse:
        c = self.get(req.id)
        if c.hibernated:
            return shim_pb2.PidsResponse()
        try:
            pids = await c.runc.ps(c.id)
        except RuncError as e:
            raise TtrpcError(Code.UNKNOWN, f"pids {c.id}: {e}") from e
        return shim_pb2.PidsResponse(processes=[task_pb2.ProcessInfo(pid=pid) for pid in pids])

    async def pause(self, req: shim_pb2.PauseRequest) -> None:
        c = self.get(req.id)
        await c.runc.pause(c.id)
        c.init.status = PAUSED
        self.publish(events_pb2.TaskPaused(container_id=c.id))

    async def resume(self, req: shim_pb2.ResumeRequest) -> None:
        c = self.get(req.id)
        await c.runc.resume(c.id)
        c.init.status = RUNNING
        self.publish(events_pb2.TaskResumed(container_id=c.id))

    async def update(self, req: shim_pb2.UpdateTaskRequest) -> None:
        c = self.get(req.id)
        if c.hibernated:
            log.info("%s: update while hibernated: applies to the cgroup only", c.id)
            return
        try:
            await c.runc.update(c.id, req.resources.value)
        except RuncError as e:
            raise TtrpcError(Code.UNKNOWN, f"update {c.id}: {e}") from e

    async def stats(self, req: shim_pb2.StatsRequest) -> shim_pb2.StatsResponse:
        c = self.get(req.id)
        metrics = read_cgroup_metrics(cgroup_path(c.bundle))
        return shim_pb2.StatsResponse(
            stats=any_pb2.Any(
                type_url="io.containerd.cgroups.v1.Metrics", value=metrics.SerializeToString()
            )
        )

    async def connect(self, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        c = self.containers.get(req.id)
        return shim_pb2.ConnectResponse(
            shim_pid=os.getpid(), task_pid=c.init.pid if c else 0, version=VERSION
        )

    async def shutdown(self, req: shim_pb2.ShutdownRequest) -> None:
        if (req.now or not self.containers) and self.on_empty is not None:
            self.on_empty()

    async def checkpoint_task(self, req: shim_pb2.CheckpointTaskRequest) -> None:
        raise TtrpcError(
            Code.UNIMPLEMENTED,
            "Checkpoint through containerd is not offered: Architect's daemon "
            "hibernates through the shim's control socket",
        )

    # -- the control socket's ops ------------------------------------------------

    async def hibernate(self, cid: str) -> dict[str, Any]:
        return await self.lifecycle.hibernate(self.get(cid))

    async def wake(self, cid: str, reason: str = "request") -> dict[str, Any]:
        return await self.lifecycle.wake(self.get(cid), reason)

    def expect_migration(self, cid: str) -> Container:
        """The daemon will send a migrate-on-stop decision for ``cid``: Kill waits for it."""
        c = self.get(cid)
        c.stop.expect()
        return c

    def decide_migration(self, cid: str, enabled: bool) -> Container:
        c = self.get(cid)
        c.stop.decide(enabled)
        log.info("%s: migrate-on-stop %s", cid, "armed" if enabled else "disarmed")
        return c

    def status(self) -> list[dict[str, Any]]:
        out = []
        for c in self.containers.values():
            rec = c.record()
            rec["status"] = "SCALED_DOWN" if c.hibernated else task_pb2.Status.Name(c.init.status)
            rec["timings"] = dict(c.timings)
            rec["migrate_on_stop"] = c.migrate_on_stop
            rec["migration_expected"] = c.stop.expected
            # The daemon's count of a gVisor pod's exec sessions: their processes
            # live in the sandbox, in no host cgroup it could read.
            rec["execs"] = sum(1 for e in c.execs.values() if e.status == RUNNING)
            out.append(rec)
        return out

    # -- wiring ------------------------------------------------------------------

    def register(self, server: Server) -> None:
        def unary(
            req_type: type[Message],
            fn: Callable[[Any], Awaitable[Message | None]],
        ) -> Callable[[bytes], Awaitable[bytes]]:
            async def handler(payload: bytes) -> bytes:
                req = req_type()
                req.ParseFromString(payload)
                resp = await fn(req)
                return resp.SerializeToString() if resp is not None else b""

            return handler

        table: dict[str, tuple[type[Message], Callable[[Any], Awaitable[Message | None]]]] = {
            "State": (shim_pb2.StateRequest, self.state),
            "Create": (shim_pb2.CreateTaskRequest, self.create),
            "Start": (shim_pb2.StartRequest, self.start),
            "Delete": (shim_pb2.DeleteRequest, self.delete),
            "Pids": (shim_pb2.PidsRequest, self.pids),
            "Pause": (shim_pb2.PauseRequest, self.pause),
            "Resume": (shim_pb2.ResumeRequest, self.resume),
            "Checkpoint": (shim_pb2.CheckpointTaskRequest, self.checkpoint_task),
            "Kill": (shim_pb2.KillRequest, self.kill),
            "Exec": (shim_pb2.ExecProcessRequest, self.exec),
            "ResizePty": (shim_pb2.ResizePtyRequest, self.resize_pty),
            "CloseIO": (shim_pb2.CloseIORequest, self.close_io),
            "Update": (shim_pb2.UpdateTaskRequest, self.update),
            "Wait": (shim_pb2.WaitRequest, self.wait),
            "Stats": (shim_pb2.StatsRequest, self.stats),
            "Connect": (shim_pb2.ConnectRequest, self.connect),
            "Shutdown": (shim_pb2.ShutdownRequest, self.shutdown),
        }
        for method, (req_type, fn) in table.items():
            server.register(SERVICE, method, unary(req_type, fn))
