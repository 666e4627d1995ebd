"""Where a wake's time goes: the phase histogram and who records which phase.

hold and release are the hold's (PodNetwork, from HoldStats), decision, restore
and report the controller's. Only that each wake is counted once per phase is
checked here; how long phases take is the benchmark's business
(bench/wake_latency.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from architect.engine.telemetry import ContainerKey
from architect.runtime.daemon import metrics
from architect.runtime.daemon.network import PodNetwork
from architect.runtime.network.hold import HoldCore, HoldStats, Phase
from tests.factories import NS, hibernation, pod
from tests.runtime.daemon.test_daemon_controller import CID, KEY, Rig


def count(phase: str) -> float:
    v = REGISTRY.get_sample_value("architect_wake_phase_seconds_count", {"phase": phase})
    return v or 0.0


def counts() -> dict[str, float]:
    return {p: count(p) for p in metrics.WAKE_PHASES}


def added(before: dict[str, float]) -> dict[str, float]:
    return {p: n - before[p] for p, n in counts().items() if n != before[p]}


def test_hold_phases_from_the_holds_marks() -> None:
    assert metrics.hold_phases(10.0, 10.5, 11.0, 11.25) == {"hold": 0.5, "release": 0.25}
    assert metrics.hold_phases(None, None, None, None) == {}
    assert metrics.hold_phases(None, 10.0, 11.0, 11.5) == {}  # no packet: no wake by packet
    assert metrics.hold_phases(10.0, 10.5, None, None) == {"hold": 0.5}


def test_observe_records_each_phase_once_and_refuses_unknown_names() -> None:
    before = counts()
    metrics.observe_wake_phases({"hold": 0.001, "release": -0.0001})  # clamped, still counted
    assert added(before) == {"hold": 1, "release": 1}
    with pytest.raises(ValueError, match="'thaw'"):
        metrics.observe_wake_phases({"thaw": 1.0})


async def test_controller_records_decision_restore_report_per_wake() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    before = counts()
    await r.net.first_packet(KEY)
    await r.settle()
    assert added(before) == {"decision": 1, "restore": 1, "report": 1}


async def test_failed_wake_records_no_phase() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    r.shim.fail.add("wake")
    await r.ctl.tick([pod()], [hibernation()])
    before = counts()
    await r.net.first_packet(KEY)
    await r.settle()
    assert added(before) == {}


@dataclass
class FakeHold:
    core: HoldCore[Any] = field(default_factory=HoldCore)
    stats: HoldStats = field(default_factory=HoldStats)

    @property
    def phase(self) -> Phase:
        return self.core.phase

    async def wait_released(self, timeout: float | None = None) -> str:
        return self.core.outcome or ""


@dataclass
class FakeContainerNet:
    hold: FakeHold | None
    resumed: int = 0

    async def resume(self) -> None:
        self.resumed += 1
        self.hold = None


def _released_hold(outcome: str, first_packet: float | None = 1.0) -> FakeHold:
    h = FakeHold()
    h.core.release(outcome)
    h.stats = HoldStats(first_packet_at=first_packet, wake_started_at=1.002,
                        wake_finished_at=1.3, released_at=1.3004)  # fmt: skip
    return h


@pytest.mark.parametrize(
    ("outcome", "first_packet", "want"),
    [
        ("woken", 1.0, {"hold": 1, "release": 1}),
        ("wake failed: criu restore failed", 1.0, {}),  # a failed wake is not a wake
        ("closed", None, {}),  # released without a packet (teardown, exec wake)
    ],
)
async def test_pod_network_records_the_holds_phases_at_release(
    outcome: str, first_packet: float | None, want: dict[str, float]
) -> None:
    net = PodNetwork()
    key = ContainerKey(NS, "web", "main")
    cn = FakeContainerNet(_released_hold(outcome, first_packet))
    net.nets[key] = cn  # type: ignore[assignment]
    before = counts()
    await net.release(key)
    assert added(before) == want
    assert cn.resumed == 1
    before = counts()
    await net.release(key)  # the hold is gone: nothing more
    assert added(before) == {}
