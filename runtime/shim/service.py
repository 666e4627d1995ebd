"""containerd.task.v2.Task for one shim process (one pod, one or more containers).

A hibernated container has no processes, yet State and Wait answer as for a running
one and no TaskExit is published: containerd and kubelet see it RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from architect.runtime.checkpoint import (
    AddressRewrite,
    CheckpointError,
    CheckpointOptions,
    ImageError,
    ImageMismatch,
    RestoreOptions,
)
from architect.runtime.checkpoint import Container as CkptContainer
from architect.runtime.checkpoint import image as ckpt_image
from architect.runtime.checkpoint._fs import safe_rmtree
from architect.runtime.checkpoint.image import MANIFEST
from architect.runtime.checkpoint.rewrite import rewrites_between
from architect.runtime.shim import plan, podinfo, stopwindow
from architect.runtime.shim.events import Publisher
from architect.runtime.shim.oom import OomWatcher
from architect.runtime.shim.pb import (
    cgroups_metrics_pb2,
    events_pb2,
    runc_options_pb2,
    runtime_options_pb2,
    shim_pb2,
    task_pb2,
)
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runc import Runc, RuncError
from architect.runtime.shim.stdio import ConsoleIO, PipeIO
from architect.runtime.shim.ttrpc import Code, Server, TtrpcError

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
VERSION = "architect-shim-0.1"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
RUNTIME_OPTIONS_URL = "runtimeoptions.v1.Options"

CREATED, RUNNING, STOPPED, PAUSED = (
    task_pb2.CREATED,
    task_pb2.RUNNING,
    task_pb2.STOPPED,
    task_pb2.PAUSED,
)


def _ts(when: datetime | None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if when is not None:
        ts.FromDatetime(when)
    return ts


@dataclass
class Proc:
    exec_id: str
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    pid: int = 0
    status: int = CREATED
    exit_status: int = 0
    exited_at: datetime | None = None
    io: PipeIO | ConsoleIO | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    spec: bytes = b""


@dataclass
class Container:
    id: str
    bundle: Path
    runtime: str  # "runc" | "runsc"
    annotations: dict[str, str]
    init: Proc
    state_dir: Path
    execs: dict[str, Proc] = field(default_factory=dict)
    hibernated: bool = False
    checkpointing: bool = False  # the init's exit during a dump is no exit
    starting: bool = False  # an init exit now waits until TaskStart is out
    pending_exit: int | None = None
    # Fresh per Create: a container restored from a handover starts undecided.
    stop: stopwindow.StopDecision = field(default_factory=stopwindow.StopDecision)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    start_path: str = "fresh"
    start_reason: str = ""
    # Hibernated at create from another pod's handover and never run here: its
    # first wake is its start, so a restore that fails then starts it fresh.
    deferred_restore: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image(self) -> Path:
        return self.state_dir / "image"

    @property
    def migrate_on_stop(self) -> bool:
        return self.stop.armed

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": str(self.bundle),
            "runtime": self.runtime,
            "pid": self.init.pid,
            "hibernated": self.hibernated,
            "image": str(self.image),
            "start_path": self.start_path,
            "start_reason": self.start_reason,
            "deferred_restore": self.deferred_restore,
            "timings": dict(self.timings),
        }


def not_found(cid: str, exec_id: str = "") -> TtrpcError:
    what = f"exec {exec_id!r} of container {cid!r}" if exec_id else f"container {cid!r}"
    return TtrpcError(Code.NOT_FOUND, f"{what}: not found")


def read_annotations(bundle: Path) -> dict[str, str]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    ann = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}


def cgroup_path(bundle: Path) -> str:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str((spec.get("linux") or {}).get("cgroupsPath") or "")


@dataclass(frozen=True)
class RuntimeConfig:
    binary: str = "runc"
    flags: tuple[str, ...] = ()  # global flags for every call, e.g. runsc's --network=none


def runtime_config(opt: any_pb2.Any) -> RuntimeConfig:
    """The OCI runtime named by containerd's task options (default runc).

    runc's Options carry ``binary_name``. CRI hands runtimes it does not know a
    ``runtimeoptions.v1.Options`` whose ``config_path`` names a TOML file (the
    ``ConfigPath`` of the runtime's options in containerd's config); ours holds
    ``binary_name = "runsc"`` for runsc-architect and, like gVisor's own shim,
    a ``[runsc_config]`` table of runsc flags.
    """
    if opt.type_url.endswith(RUNC_OPTIONS_URL):
        o = runc_options_pb2.Options()
        o.ParseFromString(opt.value)
        return RuntimeConfig(o.binary_name or "runc")
    if opt.type_url.endswith(RUNTIME_OPTIONS_URL):
        ro = runtime_options_pb2.Options()
        ro.ParseFromString(opt.value)
        if ro.config_path:
            return config_file(Path(ro.config_path))
    return RuntimeConfig()


def config_file(path: Path) -> RuntimeConfig:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"runtime config {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"runtime config {path}: not TOML: {e}") from e
    binary = data.get("binary_name", "runc")
    if not isinstance(binary, str) or Path(binary).name not in ("runc", "runsc"):
        raise TtrpcError(
            Code.INVALID_ARGUMENT,
            f"runtime config {path}: binary_name {binary!r}: want runc or runsc",
        )
    table = data.get("runsc_config", {})
    if not isinstance(table, dict) or not all(
        isinstance(v, str | bool | int) for v in table.values()
    ):
        raise TtrpcError(
            Code.INVALID_ARGUMENT,
            f"runtime config {path}: runsc_config: want a table of flag = value",
        )
    flags = tuple(
        f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(table.items())
    )
    return RuntimeConfig(binary, flags)


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
        self.stop_window = stop_window
        self.publisher = publisher
        self.namespace = namespace
        self.state_root = state_root
        self.runc_root = runc_root
        self.containers: dict[str, Container] = {}
        self.on_empty = on_empty
        self.watchers: list[asyncio.Queue[dict[str, Any]]] = []
        self._runcs: dict[str, Runc] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.oom = OomWatcher(
            lambda cid: self.publish(events_pb2.TaskOOM(container_id=cid))
        )
        reaper.subscribe(self._on_exit)

    # -- helpers -----------------------------------------------------------------

    def runc(self, binary: str) -> Runc:
        if binary not in self._runcs:
            name = Path(binary).name
            self._runcs[binary] = Runc(self.reaper, self.runc_root / name, binary, self._flags)
        return self._runcs[binary]

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

    def persist(self, c: Container) -> None:
        c.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = c.state_dir / ".state.json"
        tmp.write_text(json.dumps(c.record()))
        tmp.replace(c.state_dir / "state.json")

    control_path: Path | None = None  # this shim's control socket
    run_dir: Path | None = None

    def _link_path(self, cid: str) -> Path | None:
        return self.run_dir / self.namespace / cid if self.run_dir is not None else None

    def _link_control(self, cid: str) -> None:
        link = self._link_path(cid)
        if link is None or self.control_path is None:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(self.control_path)

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
            code = await self.runc(self._binary).wait(c.id)
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
                if c.checkpointing:
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
                exited_at=_ts(p.exited_at),
            )
        )
        p.exited.set()

    # -- Task API ----------------------------------------------------------------

    async def create(self, req: shim_pb2.CreateTaskRequest) -> shim_pb2.CreateTaskResponse:
        if req.id in self.containers:
            raise TtrpcError(Code.ALREADY_EXISTS, f"container {req.id!r}: already exists")
        bundle = Path(req.bundle)
        rc = runtime_config(req.options)
        binary = rc.binary
        self._flags = rc.flags
        runtime = "runsc" if Path(binary).name.startswith("runsc") else "runc"
        annotations = read_annotations(bundle)
        self._mount_rootfs(bundle, req.rootfs)
        init = Proc("", req.stdin, req.stdout, req.stderr, req.terminal)
        c = Container(
            req.id, bundle, runtime, annotations, init, self.container_state_dir(req.id)
        )
        c.timings["runc"] = 0.0
        try:
            c.stop.expected = plan.migration_expected(annotations)
        except plan.PlanError as e:  # admission validates it: log, never fail the pod
            log.warning("%s: not migration-expected: %s", c.id, e)
        self._binary = binary
        r = self.runc(binary)
        decision = plan.plan_start(runtime, annotations, self.state_root, self._own_image(c))
        self.containers[c.id] = c
        try:
            init.io = await self._new_io(c, init)
            pid_file = bundle / "init.pid"
            c.start_reason = decision.reason
            if decision.path == "restore" and not req.terminal:
                if not decision.wake:
                    if await self._hibernate_on_create(c, decision):
                        # No process: RUNNING in containerd's eyes, as any
                        # hibernated container; the first packet or exec wakes it.
                        init.status = RUNNING
                        c.start_path = "restore"
                else:
                    pid = await self._restore_on_create(c, decision)
                    if pid:
                        init.pid = pid
                        init.status = RUNNING  # restored processes run at once
                        c.start_path = "restore"
            if not init.pid and not c.hibernated:
                log.info("%s: starting fresh (%s)", c.id, c.start_reason)
                if isinstance(init.io, ConsoleIO):
                    got = asyncio.create_task(init.io.receive())
                    init.pid = await r.create(c.id, bundle, pid_file, None, init.io.sock_path)
                    await got
                else:
                    init.pid = await r.create(c.id, bundle, pid_file, init.io.stdio())
        except (RuncError, OSError, plan.PlanError, TimeoutError) as e:
            self.containers.pop(c.id, None)
            if init.io is not None:
                init.io.close()
            raise TtrpcError(Code.UNKNOWN, f"create {req.id}: {e}") from e
        self.persist(c)  # state.json tells the daemon which path was taken
        self._link_control(c.id)
        self.notify({"event": "started", "id": c.id, "path": c.start_path,
                     "reason": c.start_reason, "seconds": c.timings.get("restore", 0.0)})
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

    def _own_image(self, c: Container) -> Path | None:
        return c.image if c.image.exists() else None

    def _mount_rootfs(self, bundle: Path, mounts: Any) -> None:
        if not mounts:
            return
        import subprocess

        target = bundle / "rootfs"
        target.mkdir(exist_ok=True)
        for m in mounts:
            argv = ["mount", "-t", m.type, m.source, str(target)]
            if m.options:
                argv += ["-o", ",".join(m.options)]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                raise TtrpcError(Code.UNKNOWN, f"mount rootfs {m.type}: {res.stderr.strip()}")

    async def _new_io(self, c: Container, p: Proc) -> PipeIO | ConsoleIO:
        if p.terminal:
            c.state_dir.mkdir(parents=True, exist_ok=True)
            name = f"console-{p.exec_id or 'init'}.sock"
            return ConsoleIO(c.state_dir / name, p.stdin, p.stdout)
        return PipeIO(p.stdin, p.stdout, p.stderr)

    def _ckpt(
        self,
        c: Container,
        addresses: tuple[str, ...] = (),
        empty_dirs: tuple[Path, ...] = (),
    ) -> CkptContainer:
        """``c`` as the checkpoint backend sees it. ``empty_dirs``: the volumes whose
        content travels in (checkpoint) or comes out of (restore) the image; none
        unless migrate-emptydir-containers lists the container."""
        import ipaddress

        return self.runc(self._binary).container(
            c.id,
            c.bundle,
            c.annotations.get(plan.ANN_TEMPLATE_HASH, ""),
            empty_dirs,
            tuple(ipaddress.ip_address(a) for a in addresses),
        )

    def _choices(self, c: Container) -> plan.MigrationChoices:
        name = c.annotations.get(plan.CRI_CONTAINER_NAME, "")
        choices = plan.migration_choices(c.annotations, name)
        for problem in choices.problems:  # admission rejects these; never fail the pod
            log.warning("%s: %s: read as the default (not listed)", c.id, problem)
        return choices

    def _travelling_dirs(self, c: Container) -> tuple[Path, ...]:
        """The emptyDirs that move with a migration of ``c`` (opted in only)."""
        if not self._choices(c).empty_dirs:
            return ()
        return podinfo.empty_dirs(podinfo.read_spec(c.bundle))

    async def _rewrites(self, c: Container, image: Path) -> tuple[AddressRewrite, ...]:
        """The socket rewrites a restore of ``image`` as ``c`` applies: only those
        the rewrite-*-addresses-containers annotations ask for, from the pod IPs the
        image recorded to the pod's IPs now (from its /etc/hosts, as the seed says;
        the netns's addresses if that names none). Same IPs (a local wake): none."""
        if c.runtime != "runc":  # runsc keeps its addresses inside gVisor's state
            return ()
        choices = self._choices(c)
        if not (choices.rewrite_listeners or choices.rewrite_established):
            return ()
        old = self.runc(self._binary).backend.describe(image).addresses
        new = podinfo.hosts_addresses(podinfo.read_spec(c.bundle))
        if not new:
            new = await self._pod_addresses(c)
            log.info("%s: /etc/hosts names no pod IP; the netns has %s", c.id, list(new))
        try:
            return rewrites_between(
                old, new,
                listeners=choices.rewrite_listeners, established=choices.rewrite_established,
            )  # fmt: skip
        except ValueError as e:  # an address that does not parse: restore unrewritten
            log.warning("%s: no socket rewrite: %s", c.id, e)
            return ()

    async def _pod_addresses(self, c: Container) -> tuple[str, ...]:
        ns = podinfo.netns_path(podinfo.read_spec(c.bundle))
        return await podinfo.netns_addresses(ns, self.reaper.spawner) if ns else ()

    async def _image_ready(self, c: Container, decision: plan.StartPlan) -> bool:
        """Wait (bounded by the plan's scaleup-timeout) for ``decision.image``; False
        when the caller must start fresh (``c.start_reason`` then says why)."""
        assert decision.image is not None
        deadline = time.monotonic() + decision.wait_seconds
        ready, pending = decision.image / plan.READY_MARK, decision.image / plan.PENDING_MARK
        while not ready.exists():
            # `ready` lands before `pending` goes: neither means the handover was
            # withdrawn (the old pod's checkpoint failed), so waiting on is pointless.
            if decision.wait_seconds and not pending.exists() and not ready.exists():
                c.start_reason = f"handover {decision.image} withdrawn"
                log.info("%s: %s: starting fresh", c.id, c.start_reason)
                return False
            if time.monotonic() >= deadline:
                c.start_reason = f"scaleup-timeout passed waiting for {decision.image}"
                log.info("%s: %s: starting fresh", c.id, c.start_reason)
                return False
            await asyncio.sleep(0.2)
        if decision.handover and decision.consume:  # another pod's: of this namespace only
            refused = plan.foreign_handover(
                decision.image, c.annotations.get(plan.CRI_SANDBOX_NAMESPACE, ""))
            if refused:
                c.start_reason = refused
                log.warning("%s: %s: starting fresh", c.id, refused)
                return False
        return True

    def _arriving_dirs(self, c: Container, decision: plan.StartPlan) -> tuple[Path, ...] | None:
        """Where a start from ``decision`` puts the image's emptyDir content: the
        container's emptyDirs for another pod's image when migrate-emptydir lists the
        container; None: the volumes are left exactly as they are (its own
        hibernation image: the volumes never left the node)."""
        if not decision.handover or not self._choices(c).empty_dirs:
            return None
        return podinfo.empty_dirs(podinfo.read_spec(c.bundle))

    async def _restore_on_create(self, c: Container, decision: plan.StartPlan) -> int:
        """Restore from ``decision.image``; 0 when the caller must start fresh
        (``c.start_reason`` then says why)."""
        assert decision.image is not None and isinstance(c.init.io, PipeIO)
        if not await self._image_ready(c, decision):
            return 0
        t0 = time.monotonic()
        backend = self.runc(self._binary).backend
        try:
            rewrites = await self._rewrites(c, decision.image)
            arriving = self._arriving_dirs(c, decision)
            if arriving is not None and not backend.describe(decision.image).empty_dirs:
                arriving = None  # the old pod sent none: nothing to put back
            result = await backend.restore(
                self._ckpt(c, empty_dirs=arriving or ()), decision.image,
                RestoreOptions(rewrites=rewrites, stdio=c.init.io.stdio().fds(),
                               empty_dirs=arriving is not None),
            )
        except (CheckpointError, OSError, ValueError) as e:
            # The backend left nothing running: a fresh start is safe.
            c.start_reason = f"restore from {decision.image} failed: {e}"
            log.warning("%s: restore from %s failed, starting fresh: %s", c.id, decision.image, e)
            if decision.consume:  # a broken handover must not fail the next pod too
                safe_rmtree(decision.image)
            return 0
        c.timings["restore"] = time.monotonic() - t0
        c.timings.update({f"restore_{k}": v for k, v in result.details.items()})
        log.info("%s: restored from %s (%s) in %.3fs, rewrites %s",
                 c.id, decision.image, decision.reason, c.timings["restore"],
                 [f"{r.old}->{r.new}" for r in rewrites] or "none")
        if decision.consume:  # no second container may restore the same state
            safe_rmtree(decision.image)
        return result.pid

    async def _hibernate_on_create(self, c: Container, decision: plan.StartPlan) -> bool:
        """A replacement that postmigration-autoscaleup-containers does not list: the
        handover image becomes its hibernation image, verified now (a bad one starts
        fresh, as a failed restore does), its emptyDirs (when they travel) put in
        place now, so a later wake touches no volume. False: start fresh."""
        assert decision.image is not None
        if not await self._image_ready(c, decision):
            return False
        t0 = time.monotonic()
        backend = self.runc(self._binary).backend
        try:
            m = backend.describe(decision.image)
            if m.backend != backend.name:
                raise ImageMismatch(
                    decision.image, f"image was made by {m.backend}, not {backend.name}"
                )
            arriving = self._arriving_dirs(c, decision)
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
                safe_rmtree(decision.image)
            return False
        (c.image / plan.READY_MARK).touch()
        if decision.consume:
            safe_rmtree(decision.image)
        c.hibernated = True
        c.deferred_restore = True
        c.timings["restore"] = time.monotonic() - t0
        c.start_reason = (f"{decision.reason}; hibernated until woken "
                          f"(not in {plan.ANN_AUTOSCALEUP})")
        log.info("%s: %s in %.3fs", c.id, c.start_reason, c.timings["restore"])
        return True

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
                await self.runc(self._binary).start(c.id)
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
                await self._wake(c, reason="exec")
            spec = c.state_dir / f"exec-{p.exec_id}.json"
            c.state_dir.mkdir(parents=True, exist_ok=True)
            spec.write_bytes(p.spec)
            p.io = await self._new_io(c, p)
            pid_file = c.state_dir / f"exec-{p.exec_id}.pid"
            try:
                if isinstance(p.io, ConsoleIO):
                    got = asyncio.create_task(p.io.receive())
                    p.pid = await self.runc(self._binary).exec(
                        c.id, spec, pid_file, None, p.io.sock_path
                    )
                    await got
                else:
                    p.pid = await self.runc(self._binary).exec(c.id, spec, pid_file, p.io.stdio())
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
            exited_at=_ts(p.exited_at),
        )

    async def wait(self, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        _, p = self.proc(req.id, req.exec_id)
        await p.exited.wait()
        return shim_pb2.WaitResponse(exit_status=p.exit_status, exited_at=_ts(p.exited_at))

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
            await self._await_stop_decision(c, req.signal)
            if p.status == STOPPED:  # it exited by itself meanwhile
                raise TtrpcError(Code.NOT_FOUND, f"container {c.id!r}: process already finished")
        async with c.lock:
            if c.migrate_on_stop and req.signal in (signal.SIGTERM, signal.SIGKILL):
                await self._checkpoint_for_migration(c)
            if c.hibernated:
                # Nothing runs: the signal's effect is the exit it would cause.
                if req.signal == 0:
                    return
                c.hibernated = False
                self.persist(c)
                if not c.migrate_on_stop:
                    shutil.rmtree(c.image, ignore_errors=True)
                await self._exited(c, p, 128 + req.signal)
                return
        if p.status == CREATED and not p.pid:
            return
        if p.status == CREATED and req.signal in (signal.SIGKILL, signal.SIGTERM):
            # Never started: runsc's sandbox ignores signals then; delete ends it.
            with contextlib.suppress(RuncError):
                await self.runc(self._binary).delete(c.id, force=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.exited.wait(), 5)
            if not p.exited.is_set():
                await self._exited(c, p, 128 + req.signal)
            return
        try:
            await self.runc(self._binary).kill(c.id, req.signal, req.all)
        except RuncError as e:
            raise TtrpcError(Code.NOT_FOUND, f"kill {c.id}: {e}") from e

    async def _await_stop_decision(self, c: Container, sig: int) -> None:
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

    async def delete(self, req: shim_pb2.DeleteRequest) -> shim_pb2.DeleteResponse:
        c, p = self.proc(req.id, req.exec_id)
        if p is not c.init:
            if p.status == RUNNING:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"exec {p.exec_id!r} is running")
            c.execs.pop(p.exec_id, None)
            with contextlib.suppress(OSError):
                (c.state_dir / f"exec-{p.exec_id}.json").unlink()
            return shim_pb2.DeleteResponse(
                pid=p.pid, exit_status=p.exit_status, exited_at=_ts(p.exited_at)
            )
        if p.status in (RUNNING, PAUSED) and not c.hibernated:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"container {c.id!r} is running")
        with contextlib.suppress(RuncError):
            await self.runc(self._binary).delete(c.id, force=True)
        if p.io is not None:
            p.io.close()
        self.containers.pop(c.id, None)
        self.oom.unwatch(c.id)
        if not c.hibernated:  # a hibernation image outlives the task (shim restarts)
            shutil.rmtree(c.state_dir, ignore_errors=True)
        self._unmount_rootfs(c.bundle)
        self.publish(
            events_pb2.TaskDelete(
                container_id=c.id, pid=p.pid, exit_status=p.exit_status,
                exited_at=_ts(p.exited_at), id=c.id,
            )
        )
        self._unlink_control(c.id)
        return shim_pb2.DeleteResponse(
            pid=p.pid, exit_status=p.exit_status, exited_at=_ts(p.exited_at)
        )

    def _unmount_rootfs(self, bundle: Path) -> None:
        rootfs = bundle / "rootfs"
        if os.path.ismount(rootfs):
            import subprocess

            subprocess.run(["umount", "-l", str(rootfs)], capture_output=True, timeout=30)

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
                    await self._wake(c, reason="exec")
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
            pids = await self.runc(self._binary).ps(c.id)
        except RuncError as e:
            raise TtrpcError(Code.UNKNOWN, f"pids {c.id}: {e}") from e
        return shim_pb2.PidsResponse(processes=[task_pb2.ProcessInfo(pid=pid) for pid in pids])

    async def pause(self, req: shim_pb2.PauseRequest) -> None:
        c = self.get(req.id)
        await self.runc(self._binary).pause(c.id)
        c.init.status = PAUSED
        self.publish(events_pb2.TaskPaused(container_id=c.id))

    async def resume(self, req: shim_pb2.ResumeRequest) -> None:
        c = self.get(req.id)
        await self.runc(self._binary).resume(c.id)
        c.init.status = RUNNING
        self.publish(events_pb2.TaskResumed(container_id=c.id))

    async def update(self, req: shim_pb2.UpdateTaskRequest) -> None:
        c = self.get(req.id)
        if c.hibernated:
            log.info("%s: update while hibernated: applies to the cgroup only", c.id)
            return
        try:
            await self.runc(self._binary).update(c.id, req.resources.value)
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

    # -- hibernation -------------------------------------------------------------

    async def hibernate(self, cid: str) -> dict[str, Any]:
        c = self.get(cid)
        async with c.lock:
            if c.hibernated:
                return {"id": cid, "hibernated": True, "seconds": 0.0}
            if c.init.status != RUNNING:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"container {cid!r} is not running")
            if c.init.terminal:
                raise TtrpcError(
                    Code.FAILED_PRECONDITION, f"container {cid!r} has a TTY: not hibernated"
                )
            running = [e.exec_id for e in c.execs.values() if e.status == RUNNING]
            if running:
                raise TtrpcError(
                    Code.FAILED_PRECONDITION, f"container {cid!r} has running execs {running}"
                )
            t0 = time.monotonic()
            try:
                await self._checkpoint(c)
            except CheckpointError as e:
                raise TtrpcError(Code.UNKNOWN, f"hibernate {cid}: {e}") from e
            c.timings["hibernate"] = time.monotonic() - t0
            self.persist(c)
        log.info("%s: hibernated in %.3fs", cid, c.timings["hibernate"])
        self.notify({"event": "hibernated", "id": cid})
        return {"id": cid, "hibernated": True, "seconds": c.timings["hibernate"]}

    async def _checkpoint(
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
        addresses = await self._pod_addresses(c)
        c.checkpointing = True  # the init's exit during the dump is no exit
        try:
            await self.runc(self._binary).backend.checkpoint(
                self._ckpt(c, addresses, empty_dirs), c.image,
                CheckpointOptions(compression=compression),
            )
        except BaseException:
            c.checkpointing = False
            safe_rmtree(c.image)
            raise
        (c.image / plan.READY_MARK).touch()
        c.hibernated = True
        c.checkpointing = False

    async def wake(self, cid: str, reason: str = "request") -> dict[str, Any]:
        c = self.get(cid)
        async with c.lock:
            if not c.hibernated:
                return {"id": cid, "hibernated": False, "seconds": 0.0}
            await self._wake(c, reason)
        return {"id": cid, "hibernated": False, "seconds": c.timings["wake"], "pid": c.init.pid}

    async def _wake(self, c: Container, reason: str) -> None:
        assert isinstance(c.init.io, PipeIO)
        t0 = time.monotonic()
        try:
            # A wake never touches the emptyDirs: they stayed on the node, and another
            # container of the pod may have written to them meanwhile.
            result = await self.runc(self._binary).backend.restore(
                self._ckpt(c), c.image,
                RestoreOptions(rewrites=await self._rewrites(c, c.image),
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
            self.persist(c)
            self.notify({"event": "wake-failed", "id": c.id, "error": str(e)})
            await self._exited(c, c.init, 255)
            raise TtrpcError(Code.UNKNOWN, f"wake {c.id}: {e}") from e
        c.init.pid = result.pid
        c.hibernated = False
        c.deferred_restore = False
        self._watch_exit(c)
        c.timings["wake"] = time.monotonic() - t0
        c.timings.update({f"wake_{k}": v for k, v in result.details.items()})
        self.oom.watch(c.id, cgroup_path(c.bundle))  # the restore made a new cgroup
        safe_rmtree(c.image)
        self.persist(c)
        log.info("%s: woken (%s) in %.3fs, pid %d", c.id, reason, c.timings["wake"], result.pid)
        self.notify({"event": "woken", "id": c.id, "reason": reason})

    async def _start_fresh_at_wake(self, c: Container, why: str) -> None:
        """Run a deferred replacement from its bundle, as create would have."""
        assert isinstance(c.init.io, PipeIO)
        log.warning("%s: %s; starting fresh", c.id, why)
        safe_rmtree(c.image)
        r = self.runc(self._binary)
        try:
            c.init.pid = await r.create(c.id, c.bundle, c.bundle / "init.pid",
                                        c.init.io.stdio())
            await r.start(c.id)
        except (RuncError, OSError, TimeoutError) as e:
            c.hibernated = False
            self.persist(c)
            await self._exited(c, c.init, 255)
            raise TtrpcError(Code.UNKNOWN, f"wake {c.id}: {why}; fresh start: {e}") from e
        c.hibernated = c.deferred_restore = False
        c.start_path, c.start_reason = "fresh", why
        self._watch_exit(c)
        self.oom.watch(c.id, cgroup_path(c.bundle))
        self.persist(c)
        self.notify({"event": "woken", "id": c.id, "reason": "fresh start", "error": why})

    async def _checkpoint_for_migration(self, c: Container) -> None:
        """Pod deletion of a managed container: leave its state for the replacement.

        ``pending`` marks the handover while the checkpoint runs (a replacement
        created meanwhile waits up to its scaleup-timeout); the image's files move
        in with the manifest last, then ``ready``."""
        thash = c.annotations.get(plan.ANN_TEMPLATE_HASH, "")
        name = c.annotations.get(plan.CRI_CONTAINER_NAME, c.id)
        dest = plan.handover_dir(self.state_root, thash or "unknown", name)
        # The daemon may have marked it pending already: keep that mark (a waiting
        # replacement must never see the dir without one), clear the rest.
        dest.mkdir(parents=True, exist_ok=True)
        (dest / plan.PENDING_MARK).touch()
        for stale in dest.iterdir():
            if stale.name == plan.PENDING_MARK:
                continue
            if stale.is_dir() and not stale.is_symlink():
                safe_rmtree(stale)
            else:
                stale.unlink()
        t0 = time.monotonic()
        travelling = self._travelling_dirs(c)  # migrate-emptydir-containers
        try:
            if not c.hibernated:
                await self._checkpoint(c, compression="auto", empty_dirs=travelling)
            elif travelling or self.runc(self._binary).backend.describe(c.image).empty_dirs:
                # A hibernation image holds no emptyDir (or, taken over from a
                # handover, the old pod's): the handover takes the volumes as they
                # are now, or none when they do not travel.
                await asyncio.to_thread(ckpt_image.repack, c.image, dest, travelling)
                safe_rmtree(c.image)
        except (CheckpointError, OSError) as e:
            safe_rmtree(dest)  # withdrawn: a waiting replacement starts fresh
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

    def status(self) -> list[dict[str, Any]]:
        out = []
        for c in self.containers.values():
            rec = c.record()
            rec["status"] = "SCALED_DOWN" if c.hibernated else task_pb2.Status.Name(c.init.status)
            rec["timings"] = dict(c.timings)
            rec["migrate_on_stop"] = c.migrate_on_stop
            rec["migration_expected"] = c.stop.expected
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

    _binary: str = "runc"
    _flags: tuple[str, ...] = ()


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def read_cgroup_metrics(
    cg: str, root: Path = Path("/sys/fs/cgroup")
) -> cgroups_metrics_pb2.Metrics:
    """cgroup v1 metrics of a container (memory, cpu, pids) as containerd expects."""
    m = cgroups_metrics_pb2.Metrics()
    if not cg or ":" in cg:  # systemd-style paths are not resolved here
        return m
    rel = cg.lstrip("/")
    m.memory.usage.usage = _read_int(root / "memory" / rel / "memory.usage_in_bytes")
    m.memory.usage.limit = _read_int(root / "memory" / rel / "memory.limit_in_bytes")
    m.cpu.usage.total = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
    m.pids.current = _read_int(root / "pids" / rel / "pids.current")
    return m
