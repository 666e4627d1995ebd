"""The evaluator: (policies, pods, telemetry, now) -> directives.

Pure and deterministic: no I/O, no clock (``now`` is an argument), the same
inputs always give the same directives in the same order. Policies are indexed
by namespace and pre-sorted by precedence once per call, and which policy wins
each container is worked out once per distinct (matching policies, containers)
combination, so pods of one workload share the work.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from architect.engine.directives import (
    Action,
    Conflict,
    Directive,
    Evaluation,
    InvalidPolicy,
    PolicyRef,
    PolicyStats,
    ResizeTarget,
    WakeReason,
)
from architect.engine.labels import Matcher, compile_selector
from architect.engine.pods import POD_SCOPE, PodInfo
from architect.engine.telemetry import (
    BUSY_CPU_MILLICORES,
    TRANSITIONAL,
    ContainerKey,
    ContainerState,
    ContainerTelemetry,
)
from architect.policy.annotations import COMPILED_FROM_ANNOTATIONS, COMPILED_LABEL
from architect.policy.durations import parse_positive_duration
from architect.policy.models import HibernationPolicy, MigrationPolicy

HP_KIND = "HibernationPolicy"

_RUNNING = ContainerState.RUNNING
_DOWN = ContainerState.SCALED_DOWN


@dataclass(frozen=True, slots=True)
class Settings:
    """Knobs of the evaluator that are not per policy."""

    # A running container using at least this much CPU is busy, not idle, even
    # without network activity (telemetry.BUSY_CPU_MILLICORES says why 50m).
    busy_cpu_millicores: float = BUSY_CPU_MILLICORES


@dataclass(frozen=True, slots=True)
class _HibernateRules:
    scaledown_after: timedelta
    auto_scaledown: bool
    network: str
    exec_wakes: bool

    def wake_text(self) -> str:
        parts = [self.network] if self.network != "none" else []
        if self.exec_wakes:
            parts.append("exec")
        return " or ".join(parts) if parts else "nothing (no wake trigger configured)"


# eq=False: compiled policies are compared and hashed by identity (cache keys).
@dataclass(slots=True, eq=False)
class _Compiled:
    ref: PolicyRef
    match: Matcher
    runtime: str
    priority: int
    compiled: bool
    pod_scoped: bool
    hibernate: dict[str, _HibernateRules] = field(default_factory=dict)
    migrate: frozenset[str] = frozenset()
    matched_pods: int = 0
    hibernated: int = 0


@dataclass(frozen=True, slots=True)
class _Plan:
    """Who governs one unit of a pod, the same for every pod with the same candidates."""

    unit: str
    hp: _Compiled | None
    rules: _HibernateRules | None
    mp: PolicyRef | None
    losers: tuple[tuple[PolicyRef, PolicyRef, str], ...]
    unmanaged: str  # reason when neither kind governs


def _ref(policy: HibernationPolicy | MigrationPolicy) -> PolicyRef:
    meta = policy.metadata
    return PolicyRef(policy.kind, meta.namespace or "default", meta.name or "")


def _is_compiled(policy: HibernationPolicy | MigrationPolicy) -> bool:
    labels = policy.metadata.labels or {}
    return labels.get(COMPILED_LABEL) == COMPILED_FROM_ANNOTATIONS


def _precedence(p: _Compiled) -> tuple[int, int, str]:
    return (-p.priority, 0 if p.compiled else 1, p.ref.name)


def _compile(
    policies: Iterable[HibernationPolicy | MigrationPolicy],
) -> tuple[dict[str, list[_Compiled]], list[InvalidPolicy]]:
    by_ns: dict[str, list[_Compiled]] = defaultdict(list)
    invalid: list[InvalidPolicy] = []
    for policy in policies:
        ref = _ref(policy)
        spec = policy.spec
        c = _Compiled(
            ref=ref,
            match=compile_selector(spec.selector),
            runtime=spec.runtime,
            priority=spec.priority,
            compiled=_is_compiled(policy),
            pod_scoped=False,
        )
        if isinstance(policy, HibernationPolicy):
            c.pod_scoped = policy.spec.managed_pod
            try:
                for ct in policy.spec.containers:
                    c.hibernate[ct.name] = _HibernateRules(
                        parse_positive_duration(ct.scaledown_after),
                        ct.auto_scaledown,
                        ct.wake_on.network,
                        ct.wake_on.exec,
                    )
            except ValueError as err:
                invalid.append(InvalidPolicy(ref, f"spec.containers: {err}"))
                continue
            if c.pod_scoped:
                # runsc pods are checkpointed on request (PersistentCheckpoint) or
                # for migration (seed: "created explicitly"); on idle only when the
                # policy gives the pod an idle rule. No network wake: exec only.
                rule = policy.spec.pod
                try:
                    after = parse_positive_duration(rule.scaledown_after) if rule else timedelta(0)
                except ValueError as err:
                    invalid.append(InvalidPolicy(ref, f"spec.pod: {err}"))
                    continue
                auto = rule is not None and rule.auto_scaledown
                c.hibernate[POD_SCOPE] = _HibernateRules(after, auto, "none", True)
        else:
            c.pod_scoped = spec.runtime == "runsc"
            c.migrate = frozenset(ct.name for ct in policy.spec.containers)
        by_ns[ref.namespace].append(c)
    for lst in by_ns.values():
        lst.sort(key=_precedence)
    return by_ns, invalid


def _why(winner: _Compiled, loser: _Compiled) -> str:
    if winner.priority != loser.priority:
        return f"higher priority ({winner.priority} > {loser.priority})"
    if winner.compiled != loser.compiled:
        return "compiled from annotations, which wins at equal priority"
    return "first by name at equal priority"


def _plan(
    pod: PodInfo, unit: str, candidates: Sequence[_Compiled], matching: Sequence[_Compiled]
) -> _Plan:
    hgov = [p for p in candidates if p.ref.kind == HP_KIND and unit in p.hibernate]
    mgov = [
        p
        for p in candidates
        if p.ref.kind != HP_KIND and (p.pod_scoped if unit == POD_SCOPE else unit in p.migrate)
    ]
    losers = tuple(
        (loser.ref, gov[0].ref, _why(gov[0], loser)) for gov in (hgov, mgov) for loser in gov[1:]
    )
    hp = hgov[0] if hgov else None
    return _Plan(
        unit=unit,
        hp=hp,
        rules=hp.hibernate[unit] if hp else None,
        mp=mgov[0].ref if mgov else None,
        losers=losers,
        unmanaged="" if hgov or mgov else _unmanaged_reason(pod, unit, matching),
    )


def _decide(
    key: ContainerKey,
    rules: _HibernateRules,
    policy: PolicyRef,
    migration: PolicyRef | None,
    t: ContainerTelemetry | None,
    now: datetime,
    settings: Settings,
) -> Directive:
    if t is None:
        return Directive(key, Action.WAIT, "no telemetry sample yet", policy, migration)
    state = t.state
    if state is _DOWN:
        if rules.exec_wakes and t.exec_sessions > 0:
            return Directive(
                key,
                Action.WAKE,
                "kubectl exec waiting ({} session(s))",
                policy,
                migration,
                args=(t.exec_sessions,),
                wake_reason=WakeReason.EXEC,
            )
        if rules.network != "none" and t.held_packets > 0:
            return Directive(
                key,
                Action.WAKE,
                "{} packet(s) held since hibernation (wakeOn.network {})",
                policy,
                migration,
                args=(t.held_packets, rules.network),
                wake_reason=WakeReason.PACKET,
            )
        if rules.network == "connections" and t.open_connections > 0:
            return Directive(
                key,
                Action.WAKE,
                "{} TCP connection(s) open (wakeOn.network connections)",
                policy,
                migration,
                args=(t.open_connections,),
                wake_reason=WakeReason.CONNECTION,
            )
        if not t.resources_reduced:
            return Directive(
                key,
                Action.RESIZE,
                "hibernated, but the pod still holds its running resources",
                policy,
                migration,
                resize_to=ResizeTarget.HIBERNATED,
            )
        return Directive(
            key,
            Action.STAY_HIBERNATED,
            "hibernated since {}; wakes on {}",
            policy,
            migration,
            args=(t.state_since, rules.wake_text()),
        )
    if state in TRANSITIONAL:
        return Directive(
            key, Action.WAIT, "{} since {}", policy, migration, args=(state.value, t.state_since)
        )
    # RUNNING
    if t.resources_reduced:
        return Directive(
            key,
            Action.RESIZE,
            "running on hibernated (zero) resources",
            policy,
            migration,
            resize_to=ResizeTarget.ORIGINAL,
        )
    if not rules.auto_scaledown:
        why = (
            "gVisor (runsc) pod with no idle rule (spec.pod absent or its autoScaledown "
            "false): checkpointed by PersistentCheckpoint, not on idle"
            if key.container == POD_SCOPE
            else "autoScaledown is false: never hibernates on idle (still migrates)"
        )
        return Directive(key, Action.STAY_AWAKE, why, policy, migration)
    if t.exec_sessions > 0:
        return Directive(
            key,
            Action.STAY_AWAKE,
            "{} exec session(s) open",
            policy,
            migration,
            args=(t.exec_sessions,),
        )
    if rules.network == "connections" and t.open_connections > 0:
        return Directive(
            key,
            Action.STAY_AWAKE,
            "{} TCP connection(s) open (wakeOn.network connections)",
            policy,
            migration,
            args=(t.open_connections,),
        )
    if t.cpu_millicores >= settings.busy_cpu_millicores:
        return Directive(
            key,
            Action.STAY_AWAKE,
            "busy: {:.0f}m CPU (at least {:.0f}m counts as activity)",
            policy,
            migration,
            args=(t.cpu_millicores, settings.busy_cpu_millicores),
        )
    idle_since = t.state_since
    if t.last_activity is not None and t.last_activity > idle_since:
        idle_since = t.last_activity
    due = idle_since + rules.scaledown_after
    if now >= due:
        return Directive(
            key,
            Action.HIBERNATE,
            "idle since {} ({} idle, scaledownAfter {})",
            policy,
            migration,
            args=(idle_since, now - idle_since, rules.scaledown_after),
        )
    return Directive(
        key,
        Action.STAY_AWAKE,
        "last active {}; hibernates at {} if idle until then",
        policy,
        migration,
        next_at=due,
        args=(idle_since, due),
    )


def evaluate(
    policies: Iterable[HibernationPolicy | MigrationPolicy],
    pods: Iterable[PodInfo],
    telemetry: Mapping[ContainerKey, ContainerTelemetry],
    now: datetime,
    settings: Settings = Settings(),
) -> Evaluation:
    """Decide, for every container of every pod, what happens now and why."""
    # Every object made here lives until the return; cyclic GC passes over them
    # would find nothing to free, so they are skipped for the call.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _evaluate(policies, pods, telemetry, now, settings)
    finally:
        if was_enabled:
            gc.enable()


def _evaluate(
    policies: Iterable[HibernationPolicy | MigrationPolicy],
    pods: Iterable[PodInfo],
    telemetry: Mapping[ContainerKey, ContainerTelemetry],
    now: datetime,
    settings: Settings,
) -> Evaluation:
    by_ns, invalid = _compile(policies)
    directives: list[Directive] = []
    conflicts: list[Conflict] = []
    empty: list[_Compiled] = []
    plans: dict[tuple[object, ...], tuple[_Plan, ...]] = {}
    get_t = telemetry.get
    add = directives.append
    for pod in pods:
        runtime = pod.runtime
        ns, name = pod.namespace, pod.name
        if runtime is None:
            why = "runtime class {} is not an Architect runtime class"
            args = (pod.runtime_class or "(none)",)
            for c in pod.containers:
                add(Directive(ContainerKey(ns, name, c), Action.UNMANAGED, why, args=args))
            continue
        in_ns = by_ns.get(ns, empty)
        labels = pod.labels
        matching = tuple(p for p in in_ns if p.match(labels))
        candidates = tuple(p for p in matching if p.runtime == runtime)
        for p in candidates:
            p.matched_pods += 1
        units = (POD_SCOPE,) if runtime == "runsc" else pod.containers
        # Everything a plan depends on (near misses included) is in this key.
        cache_key = (matching, units, runtime)
        plan = plans.get(cache_key)
        if plan is None:
            plan = tuple(_plan(pod, u, candidates, matching) for u in units)
            plans[cache_key] = plan
        for pl in plan:
            key = ContainerKey(ns, name, pl.unit)
            for loser, winner, why in pl.losers:
                conflicts.append(Conflict(key, loser, winner, why))
            hp = pl.hp
            hp_ref = hp.ref if hp is not None else None
            t = get_t(key)
            if pod.deleting:
                add(_deleting(key, hp_ref, pl.mp, t))
            elif hp is None or pl.rules is None:
                if pl.mp is not None and t is not None and t.state is _DOWN:
                    why = ("hibernated, and no HibernationPolicy selects this container "
                           "to wake it on demand (only migrates)")
                    add(Directive(key, Action.WAKE, why, None, pl.mp,
                                  wake_reason=WakeReason.NO_HIBERNATION_POLICY))
                elif pl.mp is not None:
                    why = "no HibernationPolicy selects this container (only migrates)"
                    add(Directive(key, Action.NONE, why, None, pl.mp))
                else:
                    add(Directive(key, Action.UNMANAGED, pl.unmanaged))
            else:
                add(_decide(key, pl.rules, hp.ref, pl.mp, t, now, settings))
                if t is not None and t.state is _DOWN:
                    hp.hibernated += 1
    stats = {
        p.ref: PolicyStats(p.matched_pods, p.hibernated) for lst in by_ns.values() for p in lst
    }
    return Evaluation(tuple(directives), tuple(conflicts), stats, tuple(invalid))


def _deleting(
    key: ContainerKey,
    hp: PolicyRef | None,
    mp: PolicyRef | None,
    t: ContainerTelemetry | None,
) -> Directive:
    if mp is None:
        return Directive(
            key,
            Action.NONE,
            "pod is being deleted and no MigrationPolicy governs it: its state is not kept",
            hp,
        )
    if t is not None and t.state in (ContainerState.CHECKPOINTING, ContainerState.MIGRATING):
        return Directive(
            key, Action.WAIT, "{} since {}", hp, mp, args=(t.state.value, t.state_since)
        )
    return Directive(
        key,
        Action.CHECKPOINT_FOR_MIGRATION,
        "pod is being deleted; {} moves its state to the replacement pod",
        hp,
        mp,
        args=(mp,),
    )


def _unmanaged_reason(pod: PodInfo, unit: str, policies: Sequence[_Compiled]) -> str:
    """Explain why nothing governs: the near misses (policies whose selector
    matches the pod) are what a user needs to see."""
    near = []
    for p in policies:
        if p.runtime != pod.runtime:
            near.append(f"{p.ref} matches but is for runtime {p.runtime}")
        elif p.ref.kind == HP_KIND and not p.pod_scoped:
            near.append(f"{p.ref} matches the pod but does not list container {unit}")
    if near:
        return "not governed: " + "; ".join(near)
    return "no HibernationPolicy or MigrationPolicy selects this pod"
