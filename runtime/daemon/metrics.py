"""The daemon's Prometheus metrics.

The per-state container gauge and the checkpoint / restore histograms are the
engine's (``architect.engine.metrics``: one name, one definition); the daemon
adds wakes by reason, held packets, its own tick cost and where a wake's time
goes (``architect_wake_phase_seconds``).

A wake by packet, phase by phase, each recorded by the part that sees it:

  hold      first packet at the holder -> the wake callback runs   (PodNetwork)
  decision  the callback -> the shim is asked to restore (lock;
            the RESTORING status is written beside the restore)    (Controller)
  restore   the shim's wake round trip (verify + runc/CRIU); the
            callback returns at its end                            (Controller)
  release   the callback returned -> every held packet accepted    (PodNetwork)
  report    after the release: status and Event written (not in
            the client's wait, only in the state's visibility)     (Controller)

The sub-phases of ``restore`` (image check, engine) are the shim's own figures:
its ``status`` timings ``wake_*`` (runtime/checkpoint ``RestoreResult.details``).
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

WAKE_PHASES = ("hold", "decision", "restore", "release", "report")
# From 0.1 ms (a verdict) to 10 s (a restore of a large image on a busy node).
WAKE_PHASE_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
WAKE_PHASE_SECONDS = Histogram(
    "architect_wake_phase_seconds",
    "Time a wake spends in each phase: hold (first packet -> wake started), decision "
    "(-> shim asked), restore (shim round trip), release (-> held packets accepted), "
    "report (status, Event: after the release).",
    ["phase"],
    buckets=WAKE_PHASE_BUCKETS,
)


def observe_wake_phases(phases: Mapping[str, float]) -> None:
    """Record one wake's phases (seconds). Unknown names are a bug; a negative
    span (clock readings of two components) is recorded as 0."""
    for name, seconds in phases.items():
        if name not in WAKE_PHASES:
            raise ValueError(f"wake phase {name!r}: want one of {', '.join(WAKE_PHASES)}")
        WAKE_PHASE_SECONDS.labels(phase=name).observe(max(0.0, seconds))


def hold_phases(
    first_packet_at: float | None,
    wake_started_at: float | None,
    wake_finished_at: float | None,
    released_at: float | None,
) -> dict[str, float]:
    """The hold's two phases from its monotonic marks (``HoldStats``); only what
    a complete wake by packet measured (no packet, no wake: nothing)."""
    out: dict[str, float] = {}
    if first_packet_at is not None and wake_started_at is not None:
        out["hold"] = wake_started_at - first_packet_at
    if wake_finished_at is not None and released_at is not None and "hold" in out:
        out["release"] = released_at - wake_finished_at
    return out


def set_states(counts: Mapping[ContainerState, int]) -> None:
    set_container_states(counts)


__all__ = [
    "CHECKPOINT_SECONDS",
    "HELD",
    "RESTORE_SECONDS",
    "TICK_SECONDS",
    "WAKES",
    "WAKE_PHASES",
    "WAKE_PHASE_SECONDS",
    "hold_phases",
    "observe_wake_phases",
    "set_states",
]
