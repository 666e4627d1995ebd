"""The reconcile loop's core: telemetry -> ``engine.evaluate`` -> directives carried out.

Driven through the ``ports`` protocols only, so ordering and failure handling are
tested with fakes. The rules it keeps:

- Hibernate: the packet hold goes in FIRST, then the shim checkpoints; when the
  checkpoint fails the hold is removed (fail open) and the container is RUNNING.
- Wake (first held packet, a WAKE directive, or an exec the shim reports): the
  shim restores, THEN the held packets are released, THEN the status and Event
  are written (API round trips stay out of the client's wait; the RESTORING
  status goes out beside the restore, not before it). A failed or timed-out
  wake releases them all the same (the client gets the application's or the
  kernel's own answer, never a silent drop), and a fresh hold is armed.
- One action at a time per container (a lock): a packet that arrives while the
  checkpoint runs waits for it, then wakes the container.
- Every transition is written to the pod's status annotation, the health-proxy
  status file, an Event and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from architect.engine.directives import (
    Action,
    Directive,
    Evaluation,
    PolicyRef,
    ResizeTarget,
    WakeReason,
)
from architect.engine.evaluate import evaluate
from architect.engine.pods import POD_SCOPE, pod_info
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.policy.annotations import TEMPLATE_HASH_LABEL
from architect.policy.models import HibernationPolicy, MigrationPolicy
from architect.runtime.daemon import metrics
from architect.runtime.daemon.checkpointobjects import Written
from architect.runtime.daemon.migrations import Migrations
from architect.runtime.daemon.ports import Network, Reporter, Shim, ShimError
from architect.runtime.daemon.store import RequestsStore
from architect.runtime.daemon.targets import (
    Target,
    annotated_states,
    build_target,
    container_ids,
    handover_key,
    index_policies,
    pod_idle_rule,
    status_annotation,
)
from architect.runtime.daemon.tracker import Tracker, adopted_state
from architect.runtime.daemon.usage import Usage, UsageSampler, sandbox_cgroup
from architect.runtime.shim.plan import destination_slot, source_slot

log = logging.getLogger("architect.daemon")

Clock = Callable[[], datetime]
PodKey = tuple[str, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _pod_key(pod: Mapping[str, Any]) -> PodKey:
    meta = pod.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _name(key: ContainerKey) -> str:
    return key.container or "the pod"


def _unit(key: ContainerKey) -> str:
    if key.container == POD_SCOPE:
        return f"pod {key.namespace}/{key.pod} (gVisor sandbox)"
    return f"container {key.container} of pod {key.namespace}/{key.pod}"


class Controller:
    def __init__(
        self,
        shim: Shim,
        net: Network,
        reporter: Reporter,
        *,
        wake_timeout: float = 30.0,
        resize: bool = False,
        clock: Clock = utcnow,
        originals: RequestsStore | None = None,
        migrations: Migrations | None = None,
        node: str = "",
        usage: UsageSampler | None = None,
    ) -> None:
        self.shim, self.net, self.reporter = shim, net, reporter
        # CPU and exec sessions of every running container (network-monitor or not).
        self.usage = usage if usage is not None else UsageSampler()
        self.wake_timeout, self.resize_enabled, self.clock = wake_timeout, resize, clock
        self.tracker = Tracker()
        self.originals = originals if originals is not None else RequestsStore(None)
        self.migrations = migrations  # None: no Checkpoint objects (tests, no API)
        self.node = node
        self.targets: dict[ContainerKey, Target] = {}
        self.pods: dict[PodKey, Mapping[str, Any]] = {}
        self.ignored: dict[ContainerKey, str] = {}  # why a governed container is not driven
        self._locks: dict[ContainerKey, asyncio.Lock] = {}
        self._published: dict[PodKey, str] = {}
        self._by_id: dict[str, ContainerKey] = {}
        self._held: set[ContainerKey] = set()
        self._swept: set[ContainerKey] = set()
        # Replacements checked for a handover from another node; those it is
        # expected for, with what said so.
        self._incoming_checked: set[ContainerKey] = set()
        self._incoming: dict[ContainerKey, str] = {}
        # Replacements whose slot this daemon marked pending: container -> template hash.
        self._marked: dict[ContainerKey, str] = {}
        # "nothing comes" marks of this pass, written after its actions (tick).
        self._nothing: list[tuple[str, str, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.last: Evaluation | None = None

    def _lock(self, key: ContainerKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # --- the tick ---------------------------------------------------------------

    async def tick(
        self,
        pods: Sequence[Mapping[str, Any]],
        policies: Sequence[HibernationPolicy | MigrationPolicy],
    ) -> Evaluation:
        """One reconcile pass: sample, evaluate, adopt/forget, act, publish."""
        self.pods = {_pod_key(p): p for p in pods}
        for k in [k for k in self._incoming_checked if (k.namespace, k.pod) not in self.pods]:
            self._incoming_checked.discard(k)
            self._incoming.pop(k, None)
        for k in [k for k in self._marked if (k.namespace, k.pod) not in self.pods]:
            # Gone before its container started: nobody takes the slot.
            with contextlib.suppress(OSError):
                await self.shim.clear_pending(self._marked.pop(k), k.container,
                                              destination_slot(k.namespace, k.pod))
        await self._sample()
        if not self.resize_enabled:
            # Without resize nothing is given back, so nothing is owed: keep the
            # evaluator from asking for a Resize it will not get.
            for t in self.tracker.items.values():
                t.resources_reduced = t.state is ContainerState.SCALED_DOWN
        now = self.clock()
        ev = evaluate(policies, [pod_info(p) for p in pods], self.tracker.telemetry(), now)
        self.last = ev
        refs = index_policies(policies)
        governed: list[Directive] = [
            d
            for d in ev.directives
            if (d.policy is not None or d.migration_policy is not None)
            and (d.key.container != POD_SCOPE or self._pod_driven(d, refs))
        ]
        for key in self.tracker.stale(d.key for d in governed):
            await self._forget(key)
        for d in governed:
            if d.key not in self.tracker and d.key not in self.ignored:
                pod = self.pods[(d.key.namespace, d.key.pod)]
                hp = refs.get(d.policy) if d.policy is not None else None
                # A runsc pod migrates by PersistentCheckpoint only (seed: no
                # template-hash path): no stop decision for its shim to wait on.
                await self._adopt(pod, d.key, hp if isinstance(hp, HibernationPolicy) else None,
                                  migrating=d.migration_policy is not None
                                  and d.key.container != POD_SCOPE)
        for d in ev.directives:
            if d.action is Action.UNMANAGED and d.key not in self._swept:
                await self._sweep(d.key)
        for d in ev.actionable():
            if d.key in self.tracker and not self._lock(d.key).locked():
                await self._act(d)
        for thash, container, slot in self._nothing:
            with contextlib.suppress(OSError):
                await self.shim.nothing_coming(thash, container, slot)
        self._nothing.clear()
        for pk, states in self.tracker.by_pod().items():
            await self._publish(pk, states)
        if self.migrations is not None:
            try:
                for what in await self.migrations.reconcile(now):
                    log.info("checkpoint report: %s", what)
            except Exception as e:  # the API may be away: next tick
                log.warning("checkpoint reports failed: %s", e)
        metrics.set_states(self.tracker.counts())
        metrics.HELD.set(sum(t.held_packets for t in self.tracker.items.values()))
        return ev

    @staticmethod
    def _pod_driven(d: Directive, refs: Mapping[PolicyRef, Any]) -> bool:
        """A runsc pod unit is driven only when its HibernationPolicy gives it an idle rule."""
        hp = refs.get(d.policy) if d.policy is not None else None
        return isinstance(hp, HibernationPolicy) and pod_idle_rule(hp)

    async def _sample(self) -> None:
        keys = [
            k
            for k, t in self.tracker.items.items()
            if self.targets[k].mode != "none"
            and not self._lock(k).locked()
            and t.state is not ContainerState.MIGRATING  # its namespace is going away
        ]
        used = [
            k
            for k, t in self.tracker.items.items()
            if t.state is ContainerState.RUNNING and k in self.usage and not self._lock(k).locked()
        ]
        if not keys and not used:
            return
        now = self.clock()

        def sample_all() -> tuple[list[tuple[ContainerKey, Any]], list[tuple[ContainerKey, Usage]]]:
            out, usages = [], []
            for k in keys:
                try:
                    out.append((k, self.net.sample(k, now)))
                except Exception as e:  # a vanished namespace: the pod is going away
                    log.warning("%s: activity sample failed: %s", _unit(k), e)
            for k in used:
                u = self.usage.sample(k, now)
                if u is not None:
                    usages.append((k, u))
            return out, usages

        acts, usages = await asyncio.to_thread(sample_all)
        for k, act in acts:
            if act is not None and k in self.tracker:
                self.tracker.observe(k, act.last_packet_at, act.open_connections, act.held_packets)
        for k, u in usages:
            sessions = u.exec_sessions
            if k.container == POD_SCOPE:
                # gVisor runs an exec inside the sandbox, in no host cgroup
                # (usage.sandbox_cgroup): the shim's count is the pod's sessions.
                sessions = max(sessions, await self._pod_execs(k))
            self.tracker.observe_usage(k, u.cpu_millicores, sessions, now)

    async def _act(self, d: Directive) -> None:
        if d.action is Action.HIBERNATE:
            await self.hibernate(d.key, d.reason)
        elif d.action is Action.WAKE:
            # The metric label and Event: a directive's exec wake has always counted as
            # "packet" (the shim reports the exec wakes it does itself as "exec").
            if d.wake_reason is WakeReason.NO_HIBERNATION_POLICY:
                await self.wake(d.key, d.wake_reason.value)
            else:
                conn = d.wake_reason is WakeReason.CONNECTION
                await self.wake(d.key, "connection" if conn else "packet")
        elif d.action is Action.RESIZE and d.resize_to is not None:
            await self.resize(d.key, d.resize_to)
        elif d.action is Action.CHECKPOINT_FOR_MIGRATION and d.key.container != POD_SCOPE:
            await self.migrate(d.key, d.reason)

    # --- adoption ---------------------------------------------------------------

    async def _adopt(
        self,
        pod: Mapping[str, Any],
        key: ContainerKey,
        policy: HibernationPolicy | None,
        *,
        migrating: bool = False,
    ) -> None:
        """Start driving a governed container, or pick it up again after a restart:
        the shim's word decides its state; a hibernated one gets its hold back.
        ``migrating`` (a MigrationPolicy governs it): the shim is told a
        migrate-on-stop decision will come, so a kubelet stop that beats it waits."""
        target = build_target(pod, key, policy)
        cid = target.container_id
        # Created hibernated, its Create waits for the hold before the kubelet
        # sees it start (and writes its ID in the pod status): its shim names it.
        waiting = cid is None
        if cid is None:
            cid = self.shim.waiting(key.namespace, key.pod, key.container)
            if cid is None:
                if migrating:
                    await self._expect_incoming(pod, key)
                return  # not started yet: next tick
            target = dataclasses.replace(target, container_id=cid)
        saved = self.originals.get(target.pod_uid, key.container)
        if saved is not None:  # running on hibernated requests since before a restart
            target = dataclasses.replace(target, requests=tuple(sorted(saved.items())))
        try:
            found = await self.shim.find(cid)
        except ShimError as e:
            log.warning("%s: shim status failed: %s", _unit(key), e)
            return
        if found is None:
            self.ignored[key] = "not run by Architect's shim (no control socket)"
            log.warning("%s: %s", _unit(key), self.ignored[key])
            return
        now = self.clock()
        state = adopted_state(found.status, annotated_states(pod).get(key.container))
        if target.mode != "none":
            if found.netns is None:
                self.ignored[key] = "its OCI spec names no network namespace"
                log.warning("%s: %s", _unit(key), self.ignored[key])
                return
            try:
                await self.net.setup(target, found.netns)
            except Exception as e:
                log.warning("%s: network setup failed (retried next tick): %s", _unit(key), e)
                return
        self.targets[key] = target
        cgroup = found.cgroup
        if key.container == POD_SCOPE and cgroup:  # gVisor: the app's cgroup stays empty
            cgroup = sandbox_cgroup(cgroup)
        self.usage.add(key, cgroup)
        if target.note:
            log.warning("%s: %s", _unit(key), target.note)
        self._by_id[cid] = key
        self.tracker.add(key, state, now)
        self.tracker.set_reduced(key, saved is not None)
        self.shim.watch(found.socket, self.on_shim_event)
        log.info("%s: adopted as %s (shim: %s)", _unit(key), state.value, found.status)
        if migrating:
            try:
                await self.shim.expect_migration(cid)
            except ShimError as e:  # the shim then delivers stop signals at once
                log.warning("%s: shim not told to expect a migration decision: %s",
                            _unit(key), e)
        thash = handover_key(pod)
        expected = self._incoming.pop(key, None)
        if self.migrations is not None and thash is not None and found.start_path:
            outcome = self.migrations.started(key.namespace, key.pod, key.container, thash,
                                              found.start_path, found.start_reason)
            if outcome is not None:
                log.info("%s: started %s from the handover of %s", _unit(key),
                         "restored" if outcome == "restored" else "fresh", thash)
            if outcome is None and expected is not None and found.start_path == "fresh":
                # Its handover was withdrawn before its Create looked (a transfer
                # that failed at once): still a fresh start instead of one.
                outcome = "fresh"
                found = dataclasses.replace(
                    found, start_reason=f"{found.start_reason} (expected: {expected})")
            if outcome == "fresh":  # the user sees why the state did not come
                await self._transition_event(
                    key, "Warning", "StartedFresh",
                    f"{key.container} started fresh instead of from the handover of "
                    f"{thash}: {found.start_reason}")
            marked = self._marked.pop(key, None) is not None  # popped whatever is expected
            if expected is not None or marked:
                # Started (restored from it, the slot is gone; or not): nobody
                # waits on this pod's slot any more. A ready image stays (the
                # grant's, which removes it when nobody took it).
                with contextlib.suppress(OSError):
                    await self.shim.clear_pending(thash, key.container,
                                                  destination_slot(key.namespace, key.pod))
        if state is ContainerState.SCALED_DOWN and target.mode != "none":
            await self._arm(key)
        if waiting:
            try:
                await self.shim.held(cid)
            except ShimError as e:  # its Create goes on after its bound all the same
                log.warning("%s: shim not told its hold is armed: %s", _unit(key), e)

    async def _expect_incoming(self, pod: Mapping[str, Any], key: ContainerKey) -> None:
        """A replacement of a pod migrating from another node, seen before its
        container starts: mark its handover pending now, so its Create waits
        (up to its scaleup-timeout) for the image. The grant marks it too, but
        only once the source's checkpoint is Ready and claimed: on a drain the
        kubelet creates the container earlier. Asked once per container."""
        thash = handover_key(pod)
        if self.migrations is None or thash is None or key in self._incoming_checked:
            return
        slot = destination_slot(key.namespace, key.pod)
        if key not in self._marked:
            # First, before asking the API: the kubelet's Create may come any
            # moment and must find the mark (two replacements of a drain at once
            # lost that race by the answer's round trips). Nothing coming: the
            # Create is told so at once (nothing_coming), no StartedFresh.
            try:
                await self.shim.mark_pending(thash, key.container, slot)
                self._marked[key] = thash
            except OSError as e:
                log.warning("%s: handover not marked pending: %s", _unit(key), e)
        try:
            what = await self.migrations.incoming(key.namespace, key.pod, key.container, thash)
        except Exception as e:  # the API may be away: next tick (the mark stays)
            log.warning("%s: incoming handover not checked: %s", _unit(key), e)
            return
        self._incoming_checked.add(key)
        if what is None:
            if key in self._marked:
                # Written after this pass's actions: a pod of the template being
                # deleted here gets its own slot marked by migrate() first, so the
                # Create told "nothing" finds that local handover on its way.
                self._nothing.append((thash, key.container, slot))
            return
        self._incoming[key] = what
        log.info("%s: handover of %s/%s expected (%s): marked pending", _unit(key), thash,
                 key.container, what)

    async def _sweep(self, key: ContainerKey) -> None:
        """Once per unmanaged runc-architect container: remove rules a previous
        daemon left for it (its policy went away while no daemon ran)."""
        self._swept.add(key)
        pod = self.pods.get((key.namespace, key.pod))
        if pod is None or pod_info(pod).runtime != "runc":
            return
        target = build_target(pod, key, None)
        if target.container_id is None:
            self._swept.discard(key)  # not started yet: look again later
            return
        try:
            found = await self.shim.find(target.container_id)
            if found is not None and found.netns is not None:
                removed = await self.net.sweep(found.netns, target.index)
                if removed:
                    log.info("%s: unmanaged, removed stale %s", _unit(key), ", ".join(removed))
        except Exception as e:
            log.warning("%s: stale rule check failed: %s", _unit(key), e)

    async def _forget(self, key: ContainerKey) -> None:
        """Nothing governs the container any more: wake it if its pod lives on
        (fail open), then remove its rules."""
        t = self.tracker.get(key)
        pod_alive = (key.namespace, key.pod) in self.pods
        if t is not None and pod_alive and t.state is ContainerState.SCALED_DOWN:
            await self.wake(key, "unmanaged")
        async with self._lock(key):
            if key in self._held:
                self._held.discard(key)
            with contextlib.suppress(Exception):  # the namespace may be gone with the pod
                await self.net.teardown(key)
            self.tracker.drop(key)
            self.usage.drop(key)
            self._swept.add(key)  # just torn down: no sweep needed
            target = self.targets.pop(key, None)
            if target is not None and not pod_alive:
                self.originals.drop(target.pod_uid, key.container)
            if target is not None and target.container_id is not None:
                self._by_id.pop(target.container_id, None)
        self._locks.pop(key, None)
        if not pod_alive:
            self._published.pop((key.namespace, key.pod), None)
        log.info("%s: no longer managed", _unit(key))

    # --- hibernate --------------------------------------------------------------

    async def hibernate(self, key: ContainerKey, why: str) -> None:
        async with self._lock(key):
            t, target = self.tracker.get(key), self.targets.get(key)
            if t is None or target is None or target.container_id is None:
                return
            if t.state is not ContainerState.RUNNING:
                return
            self.tracker.begin_hibernate(key, self.clock())
            await self._publish_key(key)
            if target.mode != "none":
                try:
                    await self._arm(key)
                except Exception as e:
                    self.tracker.hibernate_failed(key, self.clock())
                    await self._transition_event(key, "Warning", "HibernateFailed",
                                                 f"packet hold not installed: {e}")
                    return
            t0 = time.monotonic()
            try:
                seconds = await self.shim.hibernate(target.container_id)
            except Exception as e:
                # Fail open: the container runs on, its traffic must flow.
                await self._disarm(key)
                self.tracker.hibernate_failed(key, self.clock())
                await self._transition_event(key, "Warning", "HibernateFailed", str(e))
                return
            if target.mode != "none":
                try:
                    await self.net.after_checkpoint(key)
                except Exception as e:  # packets meet CRIU's lock: SYNs retry, no wake
                    log.warning("%s: hold not moved above CRIU's lock: %s", _unit(key), e)
            self.tracker.hibernated(key, self.clock())
            runtime = "runsc" if key.container == POD_SCOPE else "runc"
            metrics.CHECKPOINT_SECONDS.labels(runtime=runtime, reason="hibernate").observe(
                seconds or time.monotonic() - t0
            )
            await self._transition_event(
                key, "Normal", "Hibernated", f"{_name(key)} hibernated in {seconds:.2f}s: {why}",
            )

    async def _pod_execs(self, key: ContainerKey) -> int:
        """Running execs of a runsc pod's containers, as their shim counts them (a
        failed status counts none: the shim refuses a checkpoint with execs anyway)."""
        pod = self.pods.get((key.namespace, key.pod)) or {}
        total = 0
        for cid in container_ids(pod).values():
            try:
                found = await self.shim.find(cid)
            except ShimError as e:
                log.debug("%s: exec count of %s not read: %s", _unit(key), cid[:12], e)
                continue
            total += found.execs if found is not None else 0
        return total

    # --- wake -------------------------------------------------------------------

    async def _arm(self, key: ContainerKey) -> None:
        reason = "connection" if self.targets[key].mode == "connections" else "packet"

        async def on_first_packet() -> None:
            await self.wake(key, reason, from_hold=True)

        await self.net.hold(key, on_first_packet)
        self._held.add(key)

    async def _disarm(self, key: ContainerKey) -> None:
        if key in self._held:
            self._held.discard(key)
            try:
                await self.net.release(key)
            except Exception as e:
                log.warning("%s: removing the hold failed: %s", _unit(key), e)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wake(self, key: ContainerKey, reason: str, *, from_hold: bool = False) -> None:
        """Restore, then release, then report. Called by the hold's first packet
        (``from_hold``: the hold releases its packets itself when this returns), a
        WAKE directive, or ``_forget``."""
        ok = False
        t_enter = time.monotonic()
        async with self._lock(key):
            t, target = self.tracker.get(key), self.targets.get(key)
            if t is None or target is None or target.container_id is None:
                return
            if not self.tracker.begin_wake(key, self.clock(), reason):
                return
            # RESTORING is written while the shim restores (its states taken now),
            # and awaited before anything later is written.
            pk = (key.namespace, key.pod)
            restoring = asyncio.ensure_future(
                self._publish(pk, dict(self.tracker.pod_states(*pk))))
            t_call = time.monotonic()
            try:
                seconds = await asyncio.wait_for(
                    self.shim.wake(target.container_id), self.wake_timeout
                )
                ok = True
            except TimeoutError:
                error = f"no answer from the shim within {self.wake_timeout}s"
            except Exception as e:
                error = str(e)
            if ok:
                self.tracker.woken(key, self.clock())
                metrics.RESTORE_SECONDS.labels(runtime="runc").observe(seconds)
                metrics.WAKES.labels(reason=reason).inc()
                metrics.observe_wake_phases({
                    "decision": t_call - t_enter, "restore": time.monotonic() - t_call,
                })  # fmt: skip
                event = ("Normal", "Woken",
                         f"{_name(key)} woken by {reason} in {seconds:.2f}s")  # fmt: skip
            else:
                self.tracker.wake_failed(key, self.clock())
                event = ("Warning", "WakeFailed",
                         f"wake by {reason} failed: {error}; held packets released")  # fmt: skip
        # The hold lets its packets go when this returns; after it, the hold is
        # removed (a container still hibernated gets a fresh one), then reported.
        self._spawn(self._after_wake(key, rearm=not ok, restoring=restoring, event=event))

    async def _after_wake(
        self,
        key: ContainerKey,
        *,
        rearm: bool,
        restoring: asyncio.Future[None] | None = None,
        event: tuple[str, str, str] | None = None,
    ) -> None:
        async with self._lock(key):
            await self._disarm(key)  # waits for the hold's own release, if it is releasing
            t = self.tracker.get(key)
            if rearm and t is not None and t.state is ContainerState.SCALED_DOWN:
                try:
                    await self._arm(key)
                except Exception as e:
                    log.warning("%s: re-arming the hold failed: %s", _unit(key), e)
            if event is None:
                return
            t_report = time.monotonic()
            if restoring is not None:
                await restoring  # never raises: _publish logs its own failures
            await self._transition_event(key, *event)
            if not rearm:  # a wake that worked: its report phase (metrics.py)
                metrics.observe_wake_phases({"report": time.monotonic() - t_report})

    def on_shim_event(self, event: Mapping[str, Any]) -> None:
        """A line of a shim's watch stream (called on the loop)."""
        key = self._by_id.get(str(event.get("id") or ""))
        if event.get("event") in ("migrated", "migrate-failed"):
            # By container id: the pod may be gone from the watch already.
            self._spawn(self._handover_written(
                key, str(event.get("id")), event.get("event") == "migrated",
                str(event.get("error") or "")))
        if key is None:
            return
        if event.get("event") == "woken" and event.get("reason") != "request":
            self._spawn(self._woken_by_shim(key, str(event.get("reason") or "exec")))

    async def _handover_written(
        self, key: ContainerKey | None, cid: str, ok: bool, error: str
    ) -> None:
        """The shim wrote (or failed) the handover: the Checkpoint object follows."""
        if self.migrations is None:
            return
        try:
            name = await self.migrations.written(cid, ok=ok, error=error)
        except Exception as e:  # the record stays: a restarted daemon finishes it
            log.warning("container %s: Checkpoint not written: %s", cid[:12], e)
            return
        if name is not None and key is not None:
            await self._transition_event(
                key, "Normal" if ok else "Warning", "CheckpointCreated" if ok else "MigrationFailed",
                f"Checkpoint {name}: " + ("handover written" if ok else f"checkpoint failed: {error}"))

    async def _woken_by_shim(self, key: ContainerKey, reason: str) -> None:
        """The shim woke the container itself (kubectl exec): follow, release."""
        async with self._lock(key):
            t = self.tracker.get(key)
            if t is None or t.state is not ContainerState.SCALED_DOWN:
                return
            self.tracker.woken(key, self.clock())
            metrics.WAKES.labels(reason=reason).inc()
            await self._disarm(key)
            await self._transition_event(key, "Normal", "Woken",
                                         f"{_name(key)} woken by {reason}")

    # --- migration, resize ------------------------------------------------------

    async def migrate(self, key: ContainerKey, why: str) -> None:
        async with self._lock(key):
            t, target = self.tracker.get(key), self.targets.get(key)
            if t is None or target is None or target.container_id is None or t.migrate_armed:
                return
            pod = self.pods.get((key.namespace, key.pod))
            thash = handover_key(pod) if pod is not None else None
            if thash is None:
                # The handover is keyed by the template hash: without it no
                # replacement could ever find the checkpoint.
                t.migrate_armed = True
                log.info("%s: deleted, no %s annotation: state not kept", _unit(key),
                         TEMPLATE_HASH_LABEL)
                try:  # said, so the shim's stop does not wait out its window
                    await self.shim.migrate_on_stop(target.container_id, False)
                except ShimError as e:
                    log.warning("%s: shim not told migrate-on-stop false: %s", _unit(key), e)
                return
            if self.migrations is not None:  # before the shim can answer
                self.migrations.armed(target.container_id, Written(
                    key.namespace, key.pod, key.container, thash, self.node))
            try:
                # Pending first: the replacement may be created before the
                # kubelet stops this pod, and must wait for its checkpoint.
                await self.shim.mark_pending(thash, key.container,
                                             source_slot(key.namespace, key.pod))
                await self.shim.migrate_on_stop(target.container_id, True)
            except Exception as e:
                t.migrate_armed = True  # once: the pod is going away either way
                await self._transition_event(key, "Warning", "MigrationFailed", str(e))
                return
            await self._disarm(key)  # the pod is going away: let traffic fail fast
            self.tracker.begin_migrate(key, self.clock())
            await self._transition_event(
                key, "Normal", "CheckpointForMigration",
                f"{key.container} checkpoints on stop for its replacement: {why}"
            )

    async def resize(self, key: ContainerKey, to: ResizeTarget) -> None:
        if not self.resize_enabled:
            return
        async with self._lock(key):
            pod = self.pods.get((key.namespace, key.pod))
            target = self.targets.get(key)
            if pod is None or target is None or key not in self.tracker:
                return
            if not target.requests:  # nothing requested, nothing to give back
                self.tracker.set_reduced(key, to is ResizeTarget.HIBERNATED)
                return
            # Recorded as done even when it fails: one attempt per transition,
            # not one per tick; the Event says what went wrong.
            self.tracker.set_reduced(key, to is ResizeTarget.HIBERNATED)
            if to is ResizeTarget.HIBERNATED:  # before the spec forgets them
                self.originals.put(target.pod_uid, key.container, dict(target.requests))
            try:
                await self.reporter.resize(pod, key.container, to, dict(target.requests))
                if to is ResizeTarget.ORIGINAL:
                    self.originals.drop(target.pod_uid, key.container)
            except Exception as e:
                await self._transition_event(
                    key, "Warning", "ResizeFailed", f"resize to {to.value} requests failed: {e}"
                )
                return
            log.info("%s: requests resized to %s", _unit(key), to.value)

    # --- reporting --------------------------------------------------------------

    async def _transition_event(self, key: ContainerKey, etype: str, reason: str, msg: str) -> None:
        log.info("%s: %s: %s", _unit(key), reason, msg)
        await self._publish_key(key)
        pod = self.pods.get((key.namespace, key.pod))
        if pod is not None:
            try:
                await self.reporter.event(pod, etype, reason, msg)
            except Exception as e:
                log.warning("%s: event %s not posted: %s", _unit(key), reason, e)

    async def _publish_key(self, key: ContainerKey) -> None:
        await self._publish((key.namespace, key.pod))

    async def _publish(
        self, pk: PodKey, states: Mapping[str, ContainerState] | None = None
    ) -> None:
        pod = self.pods.get(pk)
        if states is None:
            states = self.tracker.pod_states(*pk)
        if pod is None or not states:
            return
        value = status_annotation(states)
        if self._published.get(pk) == value:
            return
        try:
            await self.reporter.set_status(pod, states)
        except Exception as e:  # retried on the next tick
            log.warning("pod %s/%s: status not written: %s", *pk, e)
            return
        self._published[pk] = value

    async def close(self) -> None:
        """Stop: release every hold (fail open); hibernated containers stay so."""
        for task in list(self._tasks):
            task.cancel()
        for key in list(self._held):
            await self._disarm(key)

