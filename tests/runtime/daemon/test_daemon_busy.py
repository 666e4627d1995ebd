"""The controller feeds CPU and exec sessions to the evaluator: a busy container
without network-monitor is not hibernated (fakes of shim, network, cgroup)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from architect.engine.telemetry import ContainerKey, ContainerState
from architect.runtime.daemon.controller import Controller
from architect.runtime.daemon.ports import ShimContainer
from architect.runtime.daemon.usage import Usage, UsageSampler
from tests.factories import NS, hibernation, pod
from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

KEY = ContainerKey(NS, "web", "main")
CID = "web-main-id"


@dataclass
class FakeUsage(UsageSampler):
    """What the cgroup would say, set by the test."""

    now: Usage = field(default_factory=lambda: Usage(0.0, 0))

    def __post_init__(self) -> None:
        super().__init__(root="/nonexistent")

    def sample(self, key: ContainerKey, now: datetime) -> Usage | None:
        return self.now if key in self.paths else None


async def run(usages: list[Usage], after: str = "3s") -> tuple[list[ContainerState], list[str]]:
    calls: list[str] = []
    clock = Clock()
    shim = FakeShim(calls)
    shim.containers[CID] = ShimContainer(CID, "RUNNING", 100, "/proc/1/ns/net", "/sock/web",
                                         cgroup="kubepods/pod1/web-main-id")
    usage = FakeUsage()
    ctl = Controller(shim, FakeNet(calls), FakeReporter(calls), clock=clock, usage=usage)
    policies = [hibernation(network="none", after=after)]
    states = []
    for u in usages:
        usage.now = u
        await ctl.tick([pod()], policies)
        t = ctl.tracker.get(KEY)
        assert t is not None
        states.append(t.state)
        clock.advance(2)
    return states, calls


async def test_busy_cpu_keeps_a_container_without_network_monitor_awake() -> None:
    busy, idle = Usage(400.0, 0), Usage(3.0, 0)
    states, calls = await run([busy] * 5 + [idle] * 3)
    R, D = ContainerState.RUNNING, ContainerState.SCALED_DOWN
    # Ticks every 2 s, busy until t=8 (scaledownAfter 3s): awake. Idle after: the
    # clock starts at the last busy sample (t=8), so it hibernates at t=12, not at
    # t=10 as it would if busy time counted as idle.
    assert states == [R, R, R, R, R, R, D, D]
    assert f"shim.hibernate {CID}" in calls
    assert not any(c.startswith("net.") for c in calls)  # mode none: no rules at all


async def test_an_open_exec_session_keeps_it_awake() -> None:
    states, _ = await run([Usage(None, 1)] * 5)
    assert set(states) == {ContainerState.RUNNING}


async def test_idle_container_without_network_monitor_hibernates() -> None:
    states, _ = await run([Usage(2.0, 0)] * 3)
    assert states[-1] is ContainerState.SCALED_DOWN


async def test_a_network_container_without_ports_is_adopted_once_on_all_ports() -> None:
    # Once refused with a warning every tick ("no tcp_ports or udp_ports to watch").
    calls: list[str] = []
    shim, net = FakeShim(calls), FakeNet(calls)
    shim.add(CID)
    ctl = Controller(shim, net, FakeReporter(calls), clock=Clock())
    p = pod(containers=("main", "side"), ports=())
    p["spec"]["containers"][1]["ports"] = [{"containerPort": 9000}]
    for _ in range(3):
        await ctl.tick([p], [hibernation(containers=("main",), network="packets")])
    (target,) = net.setups
    assert (target.tcp_ports, target.except_tcp) == ((), (9000,))
    assert ctl.tracker.get(KEY) is not None and KEY not in ctl.ignored
