"""What the daemon observes about one managed container, as plain values.

The daemon samples these; the evaluator only reads them. Times are absolute
(timezone-aware datetimes) so a decision never depends on when it is computed,
only on the ``now`` it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

# A running container that uses at least this much CPU (millicores, averaged over
# the daemon's CPU window, runtime/daemon/usage.py: 10 s) is active, not idle, with
# or without network activity: a batch step must not be frozen mid-way. 50m is 5 %
# of a core: an idle server's background work (a runtime's GC and timers, a probe
# answered every 10 s, a metrics scrape) stays well below it, while anything doing
# real work, even throttled to a small CPU limit, is above it.
BUSY_CPU_MILLICORES = 50.0


class ContainerState(StrEnum):
    """The values of the pod annotation ``architect.loopholelabs.io/status``."""

    RUNNING = "RUNNING"
    CHECKPOINTING = "CHECKPOINTING"
    SCALED_DOWN = "SCALED_DOWN"
    RESTORING = "RESTORING"
    MIGRATING = "MIGRATING"


# States in which a checkpoint or restore is under way: nothing else may start.
TRANSITIONAL = frozenset(
    {ContainerState.CHECKPOINTING, ContainerState.RESTORING, ContainerState.MIGRATING}
)


class ContainerKey(NamedTuple):
    """Names one container; ``container`` is "" for a pod-scoped (runsc) unit.

    A tuple, not a dataclass: it is hashed for every container of every
    evaluation, and tuples hash in C.
    """

    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, slots=True)
class ContainerTelemetry:
    """One sample of a managed container.

    ``last_activity``: last incoming packet (or connection / exec) that counts as
    activity; shadow-port traffic is not counted by the daemon. ``held_packets``:
    packets queued by the packet hold while the container is hibernated.
    ``resources_reduced``: the pod's requests are currently the hibernated (zero)
    ones, so a Resize is or is not due. ``exec_sessions``: exec processes open in
    the container (kubectl exec); ``cpu_millicores``: its CPU use over the daemon's
    window. The daemon also counts either as activity (``last_activity``), so the
    idle clock starts when they end, not when they began.
    """

    state: ContainerState
    state_since: datetime
    last_activity: datetime | None = None
    open_connections: int = 0
    exec_sessions: int = 0
    held_packets: int = 0
    cpu_millicores: float = 0.0
    memory_bytes: int = 0
    resources_reduced: bool = False
