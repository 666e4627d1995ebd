"""A container of the shim and its processes: the state the Task API
(``service.py``) and the hibernate/wake lifecycle (``lifecycle.py``) share.

As in containerd's runc shim (``runc/container.go``, ``process/``), each container
carries its own runtime: the ``Runc`` its Create chose (runc or runsc, with that
runtime config's flags), so one container's Create never changes another's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from architect.runtime.shim import stopwindow
from architect.runtime.shim.pb import task_pb2
from architect.runtime.shim.runc import Runc
from architect.runtime.shim.stdio import ConsoleIO, PipeIO
from architect.runtime.shim.ttrpc import Code, TtrpcError

CREATED, RUNNING, STOPPED, PAUSED = (
    task_pb2.CREATED,
    task_pb2.RUNNING,
    task_pb2.STOPPED,
    task_pb2.PAUSED,
)


def ts(when: datetime | None) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if when is not None:
        out.FromDatetime(when)
    return out


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
    runc: Runc  # this container's runtime (runc or runsc), chosen by its Create
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
    # Set by the daemon's "held" op: the hold of a container created hibernated is armed.
    held: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def runtime(self) -> str:
        """``runc`` or ``runsc``, as state.json and the control socket's status say it."""
        return "runsc" if self.runc.gvisor else "runc"

    @property
    def image(self) -> Path:
        return self.state_dir / "image"

    @property
    def migrate_on_stop(self) -> bool:
        return self.stop.armed

    def own_image(self) -> Path | None:
        return self.image if self.image.exists() else None

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

    def persist(self) -> None:
        """Write ``state.json`` (atomically: the daemon reads it at any time)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / ".state.json"
        tmp.write_text(json.dumps(self.record()))
        tmp.replace(self.state_dir / "state.json")


def not_found(cid: str, exec_id: str = "") -> TtrpcError:
    what = f"exec {exec_id!r} of container {cid!r}" if exec_id else f"container {cid!r}"
    return TtrpcError(Code.NOT_FOUND, f"{what}: not found")


def new_io(c: Container, p: Proc) -> PipeIO | ConsoleIO:
    """``p``'s stdio: a console socket in the container's state dir for a TTY, else pipes."""
    if p.terminal:
        c.state_dir.mkdir(parents=True, exist_ok=True)
        name = f"console-{p.exec_id or 'init'}.sock"
        return ConsoleIO(c.state_dir / name, p.stdin, p.stdout)
    return PipeIO(p.stdin, p.stdout, p.stderr)
