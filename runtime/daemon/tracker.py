"""Pure: the daemon's memory of each managed container, and its transitions.

The evaluator is stateless; this is the state it is fed. One ``Tracked`` per
governed container holds its lifecycle state (the values of the status
annotation), when that began, the last activity seen, and whether an action is
in flight. ``Tracker.telemetry()`` turns it into the evaluator's input.

The state machine (every arrow is one method here)::

    RUNNING --begin_hibernate--> CHECKPOINTING --hibernated--> SCALED_DOWN
       ^                              |  failed (fail open)          |
       +------------------------------+                              | begin_wake
       +---- woken / wake failed (released anyway) <-- RESTORING <---+
    RUNNING / SCALED_DOWN --begin_migrate--> MIGRATING (pod being deleted)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from architect.engine.telemetry import (
    BUSY_CPU_MILLICORES,
    ContainerKey,
    ContainerState,
    ContainerTelemetry,
)

RUNNING = ContainerState.RUNNING
CHECKPOINTING = ContainerState.CHECKPOINTING
SCALED_DOWN = ContainerState.SCALED_DOWN
RESTORING = ContainerState.RESTORING
MIGRATING = ContainerState.MIGRATING


class TransitionError(ValueError):
    """A transition that the state machine does not allow from the current state."""


@dataclass(slots=True)
class Tracked:
    key: ContainerKey
    state: ContainerState
    since: datetime
    last_activity: datetime | None = None
    open_connections: int = 0
    held_packets: int = 0
    exec_sessions: int = 0
    cpu_millicores: float = 0.0
    resources_reduced: bool = False
    busy: bool = False  # an action is in flight: no other starts
    migrate_armed: bool = False  # the shim was told migrate-on-stop
    wake_reason: str = ""

    def telemetry(self) -> ContainerTelemetry:
        return ContainerTelemetry(
            state=self.state,
            state_since=self.since,
            last_activity=self.last_activity,
            open_connections=self.open_connections,
            exec_sessions=self.exec_sessions,
            held_packets=self.held_packets,
            cpu_millicores=self.cpu_millicores,
            resources_reduced=self.resources_reduced,
        )


def adopted_state(shim_status: str | None, annotated: ContainerState | None) -> ContainerState:
    """The state of a container found at (re)start.

    The shim is the truth about processes: it reports SCALED_DOWN for a
    hibernated container and a task status (RUNNING, ...) otherwise. The
    annotation only fills in when the shim does not know the container (not
    started yet): a transitional state left by a killed daemon means nothing
    finished, so it reads as RUNNING (the shim's own lock made the outcome
    whatever it now reports).
    """
    if shim_status == SCALED_DOWN.value:
        return SCALED_DOWN
    if shim_status is not None:
        return RUNNING
    if annotated is SCALED_DOWN:
        return SCALED_DOWN
    return RUNNING


@dataclass(slots=True)
class Tracker:
    items: dict[ContainerKey, Tracked] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.items

    def get(self, key: ContainerKey) -> Tracked | None:
        return self.items.get(key)

    def add(self, key: ContainerKey, state: ContainerState, now: datetime) -> Tracked:
        t = Tracked(key, state, now, resources_reduced=False)
        self.items[key] = t
        return t

    def drop(self, key: ContainerKey) -> Tracked | None:
        return self.items.pop(key, None)

    def telemetry(self) -> dict[ContainerKey, ContainerTelemetry]:
        return {k: t.telemetry() for k, t in self.items.items()}

    def pod_states(self, namespace: str, pod: str) -> dict[str, ContainerState]:
        return {
            k.container: t.state
            for k, t in self.items.items()
            if k.namespace == namespace and k.pod == pod
        }

    def by_pod(self) -> dict[tuple[str, str], dict[str, ContainerState]]:
        """Every pod's states in one pass (pod_states per pod would be quadratic)."""
        out: dict[tuple[str, str], dict[str, ContainerState]] = {}
        for k, t in self.items.items():
            out.setdefault((k.namespace, k.pod), {})[k.container] = t.state
        return out

    def counts(self) -> dict[ContainerState, int]:
        out: dict[ContainerState, int] = {}
        for t in self.items.values():
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def stale(self, governed: Iterable[ContainerKey]) -> list[ContainerKey]:
        """Tracked containers that nothing governs any more (pod gone, policy removed)."""
        keep = set(governed)
        return [k for k in self.items if k not in keep]

    # --- observations ---------------------------------------------------------

    def observe(
        self,
        key: ContainerKey,
        last_packet_at: datetime | None,
        open_connections: int,
        held_packets: int,
    ) -> None:
        t = self.items[key]
        if last_packet_at is not None and (
            t.last_activity is None or last_packet_at > t.last_activity
        ):
            t.last_activity = last_packet_at
        t.open_connections = open_connections
        t.held_packets = held_packets

    def observe_usage(
        self,
        key: ContainerKey,
        cpu_millicores: float | None,
        exec_sessions: int,
        now: datetime,
        busy_millicores: float = BUSY_CPU_MILLICORES,
    ) -> None:
        """CPU and exec sessions of a running container (None: CPU not known yet).

        Either one counts as activity now, so the idle clock restarts when a busy
        step or an exec shell ends, not when it began."""
        t = self.items.get(key)
        if t is None:
            return
        t.cpu_millicores = cpu_millicores or 0.0
        t.exec_sessions = exec_sessions
        if exec_sessions > 0 or (cpu_millicores or 0.0) >= busy_millicores:
            self.touch(key, now)

    def touch(self, key: ContainerKey, now: datetime) -> None:
        """Activity the counters do not see (an exec, a refused hibernate)."""
        t = self.items.get(key)
        if t is not None and (t.last_activity is None or now > t.last_activity):
            t.last_activity = now

    # --- transitions ----------------------------------------------------------

    def _move(
        self, key: ContainerKey, allowed: Iterable[ContainerState], to: ContainerState, now: datetime
    ) -> Tracked:
        t = self.items[key]
        if t.state not in set(allowed):
            raise TransitionError(f"{_name(key)}: {t.state.value} -> {to.value} is not allowed")
        t.state, t.since = to, now
        return t

    def begin_hibernate(self, key: ContainerKey, now: datetime) -> None:
        t = self.items[key]
        if t.busy:
            raise TransitionError(f"{_name(key)}: an action is already in flight")
        self._move(key, (RUNNING,), CHECKPOINTING, now)
        t.busy = True

    def hibernated(self, key: ContainerKey, now: datetime) -> None:
        t = self._move(key, (CHECKPOINTING,), SCALED_DOWN, now)
        t.busy, t.held_packets, t.open_connections = False, 0, 0
        t.cpu_millicores, t.exec_sessions = 0.0, 0

    def hibernate_failed(self, key: ContainerKey, now: datetime) -> None:
        # Idle time restarts: a failing container is retried after another full
        # scaledown period, not every tick.
        t = self._move(key, (CHECKPOINTING,), RUNNING, now)
        t.busy = False

    def begin_wake(self, key: ContainerKey, now: datetime, reason: str) -> bool:
        """True when this call starts the wake; False when one is already under way
        or the container is not hibernated (a second packet, an exec meanwhile)."""
        t = self.items[key]
        if t.state is not SCALED_DOWN or t.busy:
            return False
        self._move(key, (SCALED_DOWN,), RESTORING, now)
        t.busy, t.wake_reason = True, reason
        return True

    def woken(self, key: ContainerKey, now: datetime) -> None:
        """The container runs again (woken by us, by an exec, or the wake failed and
        the shim reports it running): RUNNING, counted as fresh activity."""
        t = self.items[key]
        t.state, t.since, t.busy = RUNNING, now, False
        t.last_activity, t.held_packets = now, 0

    def wake_failed(self, key: ContainerKey, now: datetime) -> None:
        """The wake failed: the image stays, the container is still hibernated."""
        t = self._move(key, (RESTORING,), SCALED_DOWN, now)
        t.busy = False

    def begin_migrate(self, key: ContainerKey, now: datetime) -> None:
        t = self.items[key]
        t.state, t.since, t.migrate_armed = MIGRATING, now, True

    def set_reduced(self, key: ContainerKey, reduced: bool) -> None:
        t = self.items.get(key)
        if t is not None:
            t.resources_reduced = reduced


def _name(key: ContainerKey) -> str:
    return f"{key.namespace}/{key.pod}/{key.container}"
