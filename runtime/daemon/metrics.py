"""The daemon's Prometheus metrics.

The per-state container gauge and the checkpoint / restore histograms are the
engine's (``architect.engine.metrics``: one name, one definition); the daemon
adds wakes by reason, held packets and its own tick cost.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from architect.engine.metrics import CHECKPOINT_DURATION as CHECKPOINT_SECONDS
from architect.engine.metrics import RESTORE_DURATION as RESTORE_SECONDS
from architect.engine.metrics import set_container_states
from architect.engine.telemetry import ContainerState

WAKES = Counter("architect_wake_total", "Containers woken, by what woke them.", ["reason"])
HELD = Gauge("architect_held_packets", "Packets held right now for hibernated containers.")
TICK_SECONDS = Histogram(
    "architect_daemon_tick_seconds",
    "Duration of one reconcile pass (sample, evaluate, act).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def set_states(counts: Mapping[ContainerState, int]) -> None:
    set_container_states(counts)


__all__ = ["CHECKPOINT_SECONDS", "HELD", "RESTORE_SECONDS", "TICK_SECONDS", "WAKES", "set_states"]
