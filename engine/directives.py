"""What the evaluator decides: one directive per container, each with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from architect.engine.telemetry import ContainerKey


class Action(StrEnum):
    """What the daemon should do with a container now."""

    HIBERNATE = "Hibernate"
    WAKE = "Wake"
    RESIZE = "Resize"
    CHECKPOINT_FOR_MIGRATION = "CheckpointForMigration"
    STAY_AWAKE = "StayAwake"
    STAY_HIBERNATED = "StayHibernated"
    WAIT = "Wait"  # a checkpoint or restore is under way, or no sample yet
    NONE = "None"  # governed, but nothing applies (e.g. deleted without a MigrationPolicy)
    UNMANAGED = "Unmanaged"  # no policy governs the container


# Actions the daemon must carry out (the rest only explain).
ACTIONABLE = frozenset(
    {Action.HIBERNATE, Action.WAKE, Action.RESIZE, Action.CHECKPOINT_FOR_MIGRATION}
)


class ResizeTarget(StrEnum):
    HIBERNATED = "Hibernated"  # requests down to zero: the memory went back to the node
    ORIGINAL = "Original"  # the pod's own requests again


class WakeReason(StrEnum):
    """What a WAKE directive wakes for (typed, so no one reads it out of ``why``)."""

    EXEC = "exec"  # a kubectl exec session is waiting
    PACKET = "packet"  # packets were held since hibernation
    CONNECTION = "connection"  # a TCP connection is open
    # Hibernated (e.g. restored so after a migration) while no HibernationPolicy
    # governs it: nothing else would ever wake it.
    NO_HIBERNATION_POLICY = "no-hibernation-policy"


class PolicyRef(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Directive(NamedTuple):
    """A decision for one container (or one pod, for runsc managed pods).

    A NamedTuple because an evaluation makes one per container and tuples are
    built several times faster than frozen dataclasses. The reason is kept as a
    template and its arguments and rendered on demand (``reason``): most
    directives are never read by a person, and formatting 10,000 timestamps
    would cost more than deciding.
    """

    key: ContainerKey
    action: Action
    why: str  # str.format template of the reason
    policy: PolicyRef | None = None  # the governing HibernationPolicy
    migration_policy: PolicyRef | None = None  # the governing MigrationPolicy
    next_at: datetime | None = None  # when the decision changes if nothing else happens
    resize_to: ResizeTarget | None = None
    args: tuple[object, ...] = ()
    wake_reason: WakeReason | None = None  # set on every WAKE directive

    @property
    def reason(self) -> str:
        if not self.args:
            return self.why
        return self.why.format(*(_render(a) for a in self.args))


def _render(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    return value


class Conflict(NamedTuple):
    """Two policies claim one container; ``loser`` yields to ``winner``."""

    key: ContainerKey
    loser: PolicyRef
    winner: PolicyRef
    why: str  # "higher priority (10 > 0)", "compiled from annotations", "name order"

    def message(self) -> str:
        unit = self.key.container or "the whole pod"
        return (
            f"{self.winner} governs {unit} of pod {self.key.namespace}/{self.key.pod} "
            f"instead ({self.why})"
        )


@dataclass(frozen=True, slots=True)
class PolicyStats:
    """What a policy's status reports: pods it matches, containers it hibernated."""

    matched_pods: int = 0
    hibernated_containers: int = 0


@dataclass(frozen=True, slots=True)
class InvalidPolicy:
    policy: PolicyRef
    message: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    directives: tuple[Directive, ...]
    conflicts: tuple[Conflict, ...]
    stats: dict[PolicyRef, PolicyStats]
    invalid: tuple[InvalidPolicy, ...] = ()

    def actionable(self) -> tuple[Directive, ...]:
        return tuple(d for d in self.directives if d.action in ACTIONABLE)

    def for_pod(self, namespace: str, pod: str) -> tuple[Directive, ...]:
        return tuple(
            d for d in self.directives if d.key.namespace == namespace and d.key.pod == pod
        )
