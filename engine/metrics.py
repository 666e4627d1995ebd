"""Prometheus metrics of the engine (one registry, the default)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from architect.engine.telemetry import ContainerState

_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CHECKPOINT_DURATION = Histogram(
    "architect_checkpoint_duration_seconds",
    "Time from a Checkpoint's creation (Pending) to Ready.",
    ["runtime", "reason"],
    buckets=_BUCKETS,
)
RESTORE_DURATION = Histogram(
    "architect_restore_duration_seconds",
    "Time a Checkpoint spent Restoring before it was Consumed.",
    ["runtime"],
    buckets=_BUCKETS,
)
CONTAINERS = Gauge("architect_containers", "Managed containers by state.", ["state"])
TRANSITIONS = Counter(
    "architect_checkpoint_transitions_total",
    "Checkpoint and PersistentCheckpoint phase changes observed.",
    ["kind", "phase"],
)
ADMISSIONS = Counter(
    "architect_admission_reviews_total", "Admission reviews answered.", ["handler", "allowed"]
)


def set_container_states(counts: Mapping[ContainerState, int]) -> None:
    """Publish the number of containers in each state (absent states read 0)."""
    for state in ContainerState:
        CONTAINERS.labels(state=state.value).set(counts.get(state, 0))
