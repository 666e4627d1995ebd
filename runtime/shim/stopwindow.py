"""Migrate-on-stop's decision window: a Kill that beat the daemon's decision waits for it.

When a pod is deleted, the kubelet (StopContainer -> Kill(SIGTERM)) and the node
daemon (migrate-on-stop over the control socket) react to the same event. If the
signal came first it would be delivered and an app that exits on SIGTERM would
leave no handover. So a Kill of a *migration-expected* container that has no
decision yet waits, at most ``window`` seconds after the first such Kill, for
the daemon to say ``enabled: true`` (checkpoint first) or ``false`` (deliver).

Pure asyncio, no I/O: the shim's Kill and the control socket share one
``StopDecision`` per container, and the tests drive it with small windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from architect.policy import durations

WINDOW_ENV = "ARCHITECT_SHIM_STOP_WINDOW"
# The daemon's decision follows the same pod-watch event the kubelet acts on,
# then one tick (evaluate, adopt) and one control request: a few hundred ms on a
# busy node. 2 s leaves several times that margin, and is what a stop costs at
# most when no decision comes (daemon down), small against the 30 s grace period.
DEFAULT_WINDOW = 2.0
MAX_WINDOW = 30.0  # longer would hold the kubelet's StopContainer for nothing


class Outcome(StrEnum):
    ARMED = "armed"  # checkpoint for migration, then the exit
    DISARMED = "disarmed"  # the daemon said no: deliver the signal
    TIMEOUT = "timeout"  # no decision within the window: deliver the signal
    NOT_EXPECTED = "not-expected"  # nobody will decide: deliver at once


class WindowError(ValueError):
    pass


def parse_window(raw: str | None) -> float:
    """The window from the shim's environment (a Go duration; ``0s`` turns it off)."""
    if raw is None or raw == "":
        return DEFAULT_WINDOW
    try:
        seconds = durations.parse_duration(raw).total_seconds()
    except ValueError as e:
        raise WindowError(f"{WINDOW_ENV}: value {raw!r}: {e}") from None
    if not 0 <= seconds <= MAX_WINDOW:
        raise WindowError(
            f"{WINDOW_ENV}: value {raw!r}: want 0s to {MAX_WINDOW:.0f}s "
            f"(default {DEFAULT_WINDOW:g}s)"
        )
    return seconds


@dataclass
class StopDecision:
    """One container's migrate-on-stop state, as the daemon and the annotations set it."""

    expected: bool = False  # a decision will come (annotations, or the daemon said so)
    enabled: bool | None = None  # the daemon's decision; None: none yet
    _decided: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _deadline: float | None = field(default=None, repr=False)

    @property
    def armed(self) -> bool:
        return self.enabled is True

    def expect(self) -> None:
        self.expected = True

    def decide(self, enabled: bool) -> None:
        """The daemon's word; the last one counts (as before the window existed)."""
        self.enabled = enabled
        self._decided.set()

    def settled(self) -> Outcome:
        """What a Kill would do now, without waiting."""
        if self.enabled is not None:
            return Outcome.ARMED if self.enabled else Outcome.DISARMED
        return Outcome.TIMEOUT if self.expected else Outcome.NOT_EXPECTED

    async def wait(
        self, window: float, clock: Callable[[], float] = time.monotonic
    ) -> tuple[Outcome, float]:
        """Wait for the decision, at most until ``window`` after the first Kill that
        waited (a SIGKILL after a SIGTERM shares the SIGTERM's deadline, so a
        stop never waits longer than one window); (outcome, seconds waited)."""
        if self.enabled is not None or not self.expected:
            return self.settled(), 0.0
        start = clock()
        if self._deadline is None:
            self._deadline = start + window
        remaining = self._deadline - start
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), remaining)
        return self.settled(), clock() - start
