"""A gVisor (runsc) pod unit's CPU comes from its pod's cgroup: runsc leaves the
app containers' cgroups empty (the sandbox's host processes sit in the pause
container's), so sampling the app's would call a busy sandbox idle and
hibernate it (measured on the e2e node: a `while true; do :; done` pod was
hibernated after its 3s). Its exec sessions come from the shim's count: the
exec runs inside the sandbox, in no host cgroup."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from architect.engine.pods import POD_SCOPE
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.policy.models import HibernationPolicy
from architect.runtime.daemon.controller import Controller
from architect.runtime.daemon.ports import ShimContainer
from architect.runtime.daemon.usage import Usage, UsageSampler, sandbox_cgroup
from tests.factories import API_VERSION, NS, pod
from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

KEY = ContainerKey(NS, "gv", POD_SCOPE)
CID = "gv-main-id"
APP_CGROUP = "kubepods/besteffort/poduid-gv/gv-main-id"
POD_CGROUP = "kubepods/besteffort/poduid-gv"


@dataclass
class CgroupUsage(UsageSampler):
    """What each cgroup would say: the pod's counts the sandbox, the app's nothing."""

    by_path: dict[str, Usage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(root="/nonexistent")

    def sample(self, key: ContainerKey, now: datetime) -> Usage | None:
        path = self.paths.get(key)
        return self.by_path.get(path, Usage(0.0, 0)) if path is not None else None


def _policy(auto: bool = True) -> HibernationPolicy:
    return HibernationPolicy.model_validate({
        "apiVersion": API_VERSION, "kind": "HibernationPolicy",
        "metadata": {"name": "gv", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "runtime": "runsc",
                 "managedPod": True, "pod": {"scaledownAfter": "3s", "autoScaledown": auto}},
    })


SIDE = "gv-side-id"


async def _run(pod_cpu: float, ticks: int, side_execs: tuple[int, ...] = (),
               calls: list[str] | None = None,
               sessions: list[int] | None = None) -> tuple[list[ContainerState], CgroupUsage]:
    """Ticks 2 s apart over pod gv (containers main, side); ``side_execs``: the
    shim's count of running execs in side at each tick (0 after)."""
    calls = calls if calls is not None else []
    clock = Clock()
    shim = FakeShim(calls)
    shim.containers[CID] = ShimContainer(CID, "RUNNING", 100, "/proc/1/ns/net", "/sock/gv",
                                         cgroup=APP_CGROUP)
    usage = CgroupUsage(by_path={POD_CGROUP: Usage(pod_cpu, 0)})
    ctl = Controller(shim, FakeNet(calls), FakeReporter(calls), clock=clock, usage=usage)
    p = pod("gv", runtime_class="runsc-architect", containers=("main", "side"))
    states = []
    for i in range(ticks):
        execs = side_execs[i] if i < len(side_execs) else 0
        shim.containers[SIDE] = ShimContainer(SIDE, "RUNNING", 100, "/proc/1/ns/net",
                                              "/sock/gv", execs=execs)
        await ctl.tick([p], [_policy()])
        t = ctl.tracker.get(KEY)
        assert t is not None, ctl.ignored
        states.append(t.state)
        if sessions is not None:
            sessions.append(t.exec_sessions)
        clock.advance(2)
    return states, usage


def test_the_sandbox_cgroup_is_the_pods() -> None:
    assert sandbox_cgroup(APP_CGROUP) == POD_CGROUP
    systemd = ("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
               "cri-containerd-abc.scope")
    assert sandbox_cgroup(systemd) == (
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice")


async def test_a_busy_gvisor_sandbox_is_not_hibernated() -> None:
    states, usage = await _run(pod_cpu=900.0, ticks=6)  # 10 s, scaledownAfter 3s
    assert usage.paths[KEY] == POD_CGROUP
    assert set(states) == {ContainerState.RUNNING}, states


async def test_an_idle_gvisor_sandbox_hibernates() -> None:
    states, _ = await _run(pod_cpu=2.0, ticks=4)
    assert states[-1] is ContainerState.SCALED_DOWN, states


async def test_an_open_exec_session_keeps_a_gvisor_pod_up_without_asking_the_shim() -> None:
    calls: list[str] = []
    R, D = ContainerState.RUNNING, ContainerState.SCALED_DOWN
    sessions: list[int] = []
    states, _ = await _run(pod_cpu=2.0, ticks=8, side_execs=(1,) * 5, calls=calls,
                           sessions=sessions)
    # The tracker holds the shim's count as the pod's exec sessions (what
    # `explain` and the evaluator read), as a runc container's come from its cgroup;
    # from the first tick after its adoption (the first tick adopts, then samples).
    assert sessions[1:6] == [1, 1, 1, 1, 0], sessions
    # An exec in the side container until t=8: no checkpoint is even asked for (the
    # shim would refuse it with a HibernateFailed Warning every scaledownAfter);
    # idle from the last tick that saw it (t=8), it hibernates at t=12.
    assert states == [R, R, R, R, R, R, D, D], states
    assert calls.count(f"shim.hibernate {CID}") == 1, calls
