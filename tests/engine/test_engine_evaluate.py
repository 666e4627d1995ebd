"""Table-driven tests of the evaluator's decisions and precedence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from architect.engine.directives import Action, PolicyRef, ResizeTarget, WakeReason
from architect.engine.evaluate import POD_SCOPE, Settings, evaluate
from architect.engine.telemetry import ContainerKey, ContainerState, ContainerTelemetry
from tests.factories import NOW, ago, hp, mp, pod_info, tel

RUNNING = ContainerState.RUNNING
DOWN = ContainerState.SCALED_DOWN
KEY = ContainerKey("default", "web-1", "app")


@dataclass
class Case:
    name: str
    telemetry: ContainerTelemetry | None
    action: Action
    reason_has: str
    rules: dict[str, Any] | None = None  # the container entry of the policy
    next_in: float | None = None  # seconds from NOW to next_at
    wake: WakeReason | None = None  # the typed reason of a WAKE (None otherwise)


CASES = [
    Case("idle past scaledownAfter hibernates", tel(active=31), Action.HIBERNATE, "idle since"),
    Case("idle exactly at scaledownAfter hibernates", tel(active=30), Action.HIBERNATE, "30s"),
    Case(
        "recent packet keeps awake until due",
        tel(active=10),
        Action.STAY_AWAKE,
        "hibernates at",
        next_in=20,
    ),
    Case(
        "just woke: idle counts from the state change",
        tel(since=5, active=100),
        Action.STAY_AWAKE,
        "last active",
        next_in=25,
    ),
    Case("no activity ever, running long", tel(since=3600), Action.HIBERNATE, "idle since"),
    Case("exec session keeps awake", tel(active=999, execs=1), Action.STAY_AWAKE, "exec"),
    Case(
        "open connection keeps awake in connections mode",
        tel(active=999, conns=2),
        Action.STAY_AWAKE,
        "2 TCP connection",
        rules={"name": "app", "scaledownAfter": "30s", "wakeOn": {"network": "connections"}},
    ),
    Case(
        "open connection does not keep awake in packets mode",
        tel(active=999, conns=2),
        Action.HIBERNATE,
        "idle",
        rules={"name": "app", "scaledownAfter": "30s", "wakeOn": {"network": "packets"}},
    ),
    Case("busy CPU keeps awake", tel(active=999, cpu=500), Action.STAY_AWAKE, "busy"),
    Case("50m CPU (5 % of a core) is busy", tel(active=999, cpu=50), Action.STAY_AWAKE, "busy: 50m"),
    Case("idle background CPU is idle", tel(active=999, cpu=49), Action.HIBERNATE, "idle"),
    Case(
        "busy CPU keeps awake without network-monitor",
        tel(active=999, cpu=300),
        Action.STAY_AWAKE,
        "busy",
        rules={"name": "app", "scaledownAfter": "30s", "wakeOn": {"network": "none"}},
    ),
    Case(
        "exec session keeps awake without network-monitor",
        tel(active=999, execs=2),
        Action.STAY_AWAKE,
        "2 exec session(s) open",
        rules={"name": "app", "scaledownAfter": "30s", "wakeOn": {"network": "none"}},
    ),
    Case(
        "autoScaledown false never hibernates",
        tel(active=999),
        Action.STAY_AWAKE,
        "autoScaledown is false",
        rules={"name": "app", "autoScaledown": False},
    ),
    Case("checkpointing waits", tel(ContainerState.CHECKPOINTING), Action.WAIT, "CHECKPOINTING"),
    Case("restoring waits", tel(ContainerState.RESTORING), Action.WAIT, "RESTORING"),
    Case("no sample yet waits", None, Action.WAIT, "no telemetry"),
    Case(
        "held packets wake (packets)",
        tel(DOWN, held=3),
        Action.WAKE,
        "3 packet(s) held",
        rules={"name": "app", "wakeOn": {"network": "packets"}},
        wake=WakeReason.PACKET,
    ),
    Case(
        "held packets do not wake when network wake is off",
        tel(DOWN, held=3),
        Action.STAY_HIBERNATED,
        "wakes on exec",
    ),
    Case(
        "connection wakes (connections)",
        tel(DOWN, conns=1),
        Action.WAKE,
        "1 TCP connection",
        rules={"name": "app", "wakeOn": {"network": "connections"}},
        wake=WakeReason.CONNECTION,
    ),
    Case(
        "exec wakes", tel(DOWN, execs=1), Action.WAKE, "kubectl exec", wake=WakeReason.EXEC
    ),
    Case(
        "exec does not wake when wakeOn.exec is false",
        tel(DOWN, execs=1),
        Action.STAY_HIBERNATED,
        "nothing",
        rules={"name": "app", "wakeOn": {"exec": False}},
    ),
    Case("hibernated and quiet stays", tel(DOWN), Action.STAY_HIBERNATED, "hibernated since"),
    Case(
        "hibernated but resources not reduced resizes",
        tel(DOWN, reduced=False),
        Action.RESIZE,
        "running resources",
    ),
    Case("running on reduced resources resizes back", tel(reduced=True), Action.RESIZE, "zero"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_single_container_decisions(case: Case) -> None:
    rules = case.rules or {"name": "app", "scaledownAfter": "30s"}
    telemetry = {KEY: case.telemetry} if case.telemetry else {}
    ev = evaluate([hp(containers=[rules])], [pod_info()], telemetry, NOW)
    (d,) = ev.directives
    assert d.key == KEY
    assert d.action is case.action, d.reason
    assert case.reason_has in d.reason
    assert d.wake_reason is case.wake
    assert d.policy == PolicyRef("HibernationPolicy", "default", "hp")
    if case.next_in is not None:
        assert d.next_at == NOW + timedelta(seconds=case.next_in)
    if d.action is Action.RESIZE:
        want = ResizeTarget.HIBERNATED if case.telemetry.state is DOWN else ResizeTarget.ORIGINAL  # type: ignore[union-attr]
        assert d.resize_to is want


def test_busy_threshold_is_a_setting() -> None:
    t = {KEY: tel(active=999, cpu=500)}
    ev = evaluate([hp()], [pod_info()], t, NOW, Settings(busy_cpu_millicores=1000))
    assert ev.directives[0].action is Action.HIBERNATE


@dataclass
class PrecedenceCase:
    name: str
    policies: list[Any]
    winner: str
    why: str


PRECEDENCE = [
    PrecedenceCase("higher priority wins", [hp("a"), hp("b", priority=5)], "b", "higher priority"),
    PrecedenceCase(
        "compiled wins at equal priority",
        [hp("a"), hp("z", compiled=True)],
        "z",
        "compiled from annotations",
    ),
    PrecedenceCase(
        "priority beats compiled",
        [hp("a", priority=1), hp("z", compiled=True)],
        "a",
        "higher priority",
    ),
    PrecedenceCase("name breaks ties", [hp("b"), hp("a")], "a", "first by name"),
]


@pytest.mark.parametrize("case", PRECEDENCE, ids=[c.name for c in PRECEDENCE])
def test_precedence_and_conflicts(case: PrecedenceCase) -> None:
    for order in (case.policies, list(reversed(case.policies))):
        ev = evaluate(order, [pod_info()], {KEY: tel(active=1)}, NOW)
        (d,) = ev.directives
        assert d.policy is not None and d.policy.name == case.winner
        (c,) = ev.conflicts
        assert c.winner.name == case.winner
        assert c.loser.name != case.winner
        assert case.why in c.why
        assert "governs app of pod default/web-1" in c.message()


def test_policy_that_does_not_list_the_container_is_no_conflict() -> None:
    ev = evaluate(
        [hp("a"), hp("b", containers=[{"name": "sidecar"}])],
        [pod_info(containers=("app", "sidecar"))],
        {},
        NOW,
    )
    assert ev.conflicts == ()
    by_container = {d.key.container: d.policy.name for d in ev.directives if d.policy}
    assert by_container == {"app": "a", "sidecar": "b"}


def test_unlisted_container_is_unmanaged_with_near_miss() -> None:
    ev = evaluate([hp()], [pod_info(containers=("app", "log"))], {}, NOW)
    log = next(d for d in ev.directives if d.key.container == "log")
    assert log.action is Action.UNMANAGED
    assert "does not list container log" in log.reason


@pytest.mark.parametrize(
    ("pod_kwargs", "reason"),
    [
        ({"runtime_class": None}, "runtime class (none) is not an Architect runtime class"),
        ({"runtime_class": "gvisor"}, "runtime class gvisor"),
        ({"labels": {"app": "other"}}, "no HibernationPolicy or MigrationPolicy selects"),
        ({"namespace": "other"}, "no HibernationPolicy or MigrationPolicy selects"),
    ],
)
def test_unmanaged(pod_kwargs: dict[str, Any], reason: str) -> None:
    ev = evaluate([hp()], [pod_info(**pod_kwargs)], {}, NOW)
    (d,) = ev.directives
    assert d.action is Action.UNMANAGED
    assert reason in d.reason
    assert d.policy is None


def test_runtime_mismatch_is_named() -> None:
    ev = evaluate([hp(runtime="runsc", managed_pod=True)], [pod_info()], {}, NOW)
    assert "is for runtime runsc" in ev.directives[0].reason


def test_match_expressions() -> None:
    exprs = [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
    policy = hp(labels={}, match_expressions=exprs)
    yes = pod_info("p1", labels={"tier": "a"})
    no = pod_info("p2", labels={"tier": "c"})
    ev = evaluate([policy], [yes, no], {}, NOW)
    assert [d.action for d in ev.directives] == [Action.WAIT, Action.UNMANAGED]


def test_empty_selector_matches_nothing() -> None:
    ev = evaluate([hp(labels={})], [pod_info()], {}, NOW)
    assert ev.directives[0].action is Action.UNMANAGED


def test_deleted_pod_with_migration_policy_checkpoints() -> None:
    ev = evaluate([hp(), mp()], [pod_info(deleting=True)], {KEY: tel(DOWN)}, NOW)
    (d,) = ev.directives
    assert d.action is Action.CHECKPOINT_FOR_MIGRATION
    assert d.migration_policy == PolicyRef("MigrationPolicy", "default", "mp")
    assert "replacement pod" in d.reason


def test_deleted_pod_already_migrating_waits() -> None:
    ev = evaluate([mp()], [pod_info(deleting=True)], {KEY: tel(ContainerState.MIGRATING)}, NOW)
    assert ev.directives[0].action is Action.WAIT


def test_deleted_pod_without_migration_policy_lets_go() -> None:
    ev = evaluate([hp()], [pod_info(deleting=True)], {KEY: tel()}, NOW)
    (d,) = ev.directives
    assert d.action is Action.NONE
    assert "not kept" in d.reason


def test_migration_only_container() -> None:
    ev = evaluate([mp()], [pod_info()], {KEY: tel()}, NOW)
    (d,) = ev.directives
    assert d.action is Action.NONE
    assert d.migration_policy is not None and "only migrates" in d.reason


def test_a_hibernated_migration_only_container_is_woken() -> None:
    # Restored hibernated after a migration (the seed's default), with no
    # HibernationPolicy nothing would wake it on demand: it is woken now.
    ev = evaluate([mp()], [pod_info()], {KEY: tel(DOWN)}, NOW)
    (d,) = ev.directives
    assert d.action is Action.WAKE and d.wake_reason is WakeReason.NO_HIBERNATION_POLICY
    assert d.migration_policy is not None and "no HibernationPolicy" in d.reason
    assert d in ev.actionable()
    # With a HibernationPolicy its own wake triggers decide: it stays hibernated.
    ev = evaluate([hp(), mp()], [pod_info()], {KEY: tel(DOWN)}, NOW)
    assert ev.directives[0].action is Action.STAY_HIBERNATED


def test_migration_conflicts_are_reported() -> None:
    ev = evaluate([mp("a"), mp("b", priority=2)], [pod_info(deleting=True)], {KEY: tel()}, NOW)
    (c,) = ev.conflicts
    assert (c.winner.name, c.loser.name) == ("b", "a")
    assert ev.directives[0].migration_policy == PolicyRef("MigrationPolicy", "default", "b")


def test_runsc_managed_pod_is_pod_scoped_and_not_idle_hibernated() -> None:
    policy = hp(runtime="runsc", managed_pod=True)
    p = pod_info(runtime_class="runsc-architect", containers=("a", "b"))
    key = ContainerKey("default", "web-1", POD_SCOPE)
    ev = evaluate([policy, mp(runtime="runsc", containers=[])], [p], {key: tel(active=9999)}, NOW)
    (d,) = ev.directives
    assert d.key == key
    assert d.action is Action.STAY_AWAKE
    assert "PersistentCheckpoint" in d.reason
    ev = evaluate(
        [policy, mp(runtime="runsc", containers=[])],
        [pod_info("web-1", runtime_class="runsc-architect", deleting=True)],
        {},
        NOW,
    )
    assert ev.directives[0].action is Action.CHECKPOINT_FOR_MIGRATION


def test_stats_count_pods_and_hibernated() -> None:
    pods = [pod_info("p1"), pod_info("p2"), pod_info("p3", labels={"app": "x"})]
    t = {
        ContainerKey("default", "p1", "app"): tel(DOWN),
        ContainerKey("default", "p2", "app"): tel(active=1),
    }
    ev = evaluate([hp()], pods, t, NOW)
    s = ev.stats[PolicyRef("HibernationPolicy", "default", "hp")]
    assert (s.matched_pods, s.hibernated_containers) == (2, 1)


def test_deterministic_and_ordered() -> None:
    pods = [pod_info(f"p{i}") for i in range(20)]
    t = {ContainerKey("default", f"p{i}", "app"): tel(active=i * 3) for i in range(20)}
    a = evaluate([hp("x"), hp("y", priority=1)], pods, t, NOW)
    b = evaluate([hp("y", priority=1), hp("x")], list(pods), dict(reversed(t.items())), NOW)
    assert a == b
    assert [d.key.pod for d in a.directives] == [f"p{i}" for i in range(20)]


def test_now_is_the_only_clock() -> None:
    t = {KEY: tel(active=10)}
    assert evaluate([hp()], [pod_info()], t, NOW).directives[0].action is Action.STAY_AWAKE
    later = NOW + timedelta(seconds=20)
    assert evaluate([hp()], [pod_info()], t, later).directives[0].action is Action.HIBERNATE
    assert ago(0) == NOW
