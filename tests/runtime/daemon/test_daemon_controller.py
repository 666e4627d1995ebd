"""The controller's decisions beyond the evaluator: adoption, hold/shim ordering,
fail-open, status bookkeeping, migration, resize (fakes of shim, network, API)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from architect.engine.telemetry import ContainerKey, ContainerState
from architect.policy.models import HibernationPolicy, MigrationPolicy
from architect.runtime.daemon.controller import Controller
from architect.runtime.daemon.ports import Activity
from architect.runtime.daemon.store import RequestsStore
from tests.factories import NS, hibernation, migration, pod
from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

KEY = ContainerKey(NS, "web", "main")
CID = "web-main-id"


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.calls: list[str] = []
        self.clock = Clock()
        self.shim = FakeShim(self.calls)
        self.net = FakeNet(self.calls)
        self.rep = FakeReporter(self.calls)
        self.ctl = Controller(self.shim, self.net, self.rep, clock=self.clock, **kw)

    async def settle(self) -> None:
        for _ in range(5):  # let spawned follow-up tasks run
            await asyncio.sleep(0)

    def state(self, key: ContainerKey = KEY) -> ContainerState:
        t = self.ctl.tracker.get(key)
        assert t is not None
        return t.state

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self.rep.events]


def idle(at: datetime | None = None) -> Activity:
    return Activity(at, 0, 0)


async def test_adopts_then_hibernates_with_the_hold_first() -> None:
    r = Rig()
    r.shim.add(CID)
    policies = [hibernation(after="3s")]
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.RUNNING
    assert r.calls[:2] == ["net.setup main /proc/1/ns/net", "status main=RUNNING"]
    r.clock.advance(2)
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.RUNNING  # not idle long enough
    r.clock.advance(2)
    r.calls.clear()
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.SCALED_DOWN
    assert r.calls == [
        "status main=CHECKPOINTING",
        "net.hold main",  # held before the process goes away
        f"shim.hibernate {CID}",
        "net.hold-first main",  # above CRIU's network lock
        "status main=SCALED_DOWN",
    ]
    assert r.reasons() == ["Hibernated"]


async def test_first_packet_wakes_then_releases_and_drops_the_hold() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    assert r.state() is ContainerState.SCALED_DOWN
    assert "net.hold main" in r.calls  # adoption re-armed the hold
    r.calls.clear()
    await r.net.first_packet(KEY)
    await r.settle()
    # The shim restored before any packet went through; the status follows the
    # release (RESTORING goes out beside the restore: where it lands among the
    # shim's calls is the event loop's business).
    assert [c for c in r.calls if c != "status main=RESTORING"] == [
        f"shim.wake {CID}",
        "hold.released main",
        "net.release main",
        "status main=RUNNING",
    ]
    assert r.calls.index("status main=RESTORING") < r.calls.index("status main=RUNNING")
    assert r.state() is ContainerState.RUNNING
    assert r.reasons() == ["Woken"]


@pytest.mark.parametrize("fails", [False, True], ids=["woken", "wake-failed"])
async def test_status_and_event_writes_never_hold_back_the_release(fails: bool) -> None:
    """An API server that takes its time: the restore starts and the held packets
    go before any status or Event write has finished; the writes then land in
    order (RESTORING, then the outcome) and the Event follows."""
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    if fails:
        r.shim.fail.add("wake")
    await r.ctl.tick([pod()], [hibernation()])
    gate = asyncio.Event()
    real_status, real_event = r.rep.set_status, r.rep.event

    async def slow_status(*a: Any) -> None:
        await gate.wait()
        await real_status(*a)

    async def slow_event(*a: Any) -> None:
        await gate.wait()
        await real_event(*a)

    r.rep.set_status = slow_status  # type: ignore[method-assign,assignment]
    r.rep.event = slow_event  # type: ignore[method-assign,assignment]
    r.calls.clear()
    await asyncio.wait_for(r.net.first_packet(KEY), 1)  # not waiting for the API
    await r.settle()
    assert r.calls[:3] == [f"shim.wake {CID}", "hold.released main", "net.release main"]
    assert r.rep.events == [] and not any(c.startswith("status") for c in r.calls)
    gate.set()
    for _ in range(5):
        await r.settle()
    outcome = "SCALED_DOWN" if fails else "RUNNING"
    statuses = [c for c in r.calls if c.startswith("status")]
    assert statuses == ["status main=RESTORING", f"status main={outcome}"]
    assert r.reasons() == (["WakeFailed"] if fails else ["Woken"])
    if fails:  # re-armed before the report: the next packet wakes again
        assert r.calls.index("net.hold main") < r.calls.index("status main=SCALED_DOWN")


async def test_failed_hibernate_fails_open() -> None:
    r = Rig()
    r.shim.add(CID)
    r.shim.fail.add("hibernate")
    await r.ctl.tick([pod()], [hibernation()])
    r.clock.advance(5)
    r.calls.clear()
    await r.ctl.tick([pod()], [hibernation()])
    assert r.calls == [
        "status main=CHECKPOINTING",
        "net.hold main",
        f"shim.hibernate {CID}",
        "net.release main",  # the hold goes: the container runs on
        "status main=RUNNING",
    ]
    assert r.reasons() == ["HibernateFailed"]
    # Idle time restarts at the failure: no retry on the very next tick.
    r.clock.advance(1)
    r.calls.clear()
    await r.ctl.tick([pod()], [hibernation()])
    assert f"shim.hibernate {CID}" not in r.calls


async def test_hold_that_cannot_be_installed_means_no_checkpoint() -> None:
    r = Rig()
    r.shim.add(CID)
    r.net.fail_hold = True
    await r.ctl.tick([pod()], [hibernation()])
    r.clock.advance(5)
    await r.ctl.tick([pod()], [hibernation()])
    assert not any(c.startswith("shim.hibernate") for c in r.calls)
    assert r.state() is ContainerState.RUNNING
    assert r.reasons() == ["HibernateFailed"]


async def test_failed_wake_releases_anyway_and_rearms() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    r.shim.fail.add("wake")
    await r.ctl.tick([pod()], [hibernation()])
    r.calls.clear()
    await r.net.first_packet(KEY)
    await r.settle()
    assert [c for c in r.calls if c != "status main=RESTORING"] == [
        f"shim.wake {CID}",
        "hold.released main",  # the client gets an answer, not silence
        "net.release main",
        "net.hold main",  # still hibernated: the next packet tries again
        "status main=SCALED_DOWN",
    ]
    assert r.calls.index("status main=RESTORING") < r.calls.index("status main=SCALED_DOWN")
    assert r.reasons() == ["WakeFailed"]


async def test_wake_timeout_releases() -> None:
    r = Rig(wake_timeout=0.05)
    r.shim.add(CID, status="SCALED_DOWN")
    r.shim.wake_delay = 1.0
    await r.ctl.tick([pod()], [hibernation()])
    await r.net.first_packet(KEY)
    await r.settle()
    assert r.state() is ContainerState.SCALED_DOWN
    assert "hold.released main" in r.calls
    assert r.rep.events[-1][1] == "WakeFailed" and "0.05s" in r.rep.events[-1][2]


async def test_packet_during_checkpoint_waits_for_it_then_wakes() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod()], [hibernation()])
    r.clock.advance(5)
    gate = asyncio.Event()
    real = r.shim.hibernate

    async def slow(cid: str) -> float:
        await gate.wait()
        return await real(cid)

    r.shim.hibernate = slow  # type: ignore[method-assign,assignment]
    tick = asyncio.create_task(r.ctl.tick([pod()], [hibernation()]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert KEY in r.net.wakes  # the hold is armed while the dump runs
    packet = asyncio.create_task(r.net.first_packet(KEY))
    await asyncio.sleep(0)
    assert not any(c.startswith("shim.wake") for c in r.calls)  # not before the dump ends
    gate.set()
    await tick
    await packet
    await r.settle()
    assert r.calls.index(f"shim.hibernate {CID}") < r.calls.index(f"shim.wake {CID}")
    assert r.state() is ContainerState.RUNNING


async def test_exec_wake_reported_by_the_shim_releases_the_hold() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    r.calls.clear()
    (on_event,) = r.shim.events
    on_event({"event": "woken", "id": CID, "reason": "exec"})
    await r.settle()
    assert r.state() is ContainerState.RUNNING
    assert r.calls == ["net.release main", "status main=RUNNING"]
    assert not any(c.startswith("shim.wake") for c in r.calls)
    # The daemon's own wakes come back as reason "request": ignored.
    on_event({"event": "woken", "id": CID, "reason": "request"})
    on_event({"event": "woken", "id": "someone-else", "reason": "exec"})
    await r.settle()
    assert r.reasons() == ["Woken"]


async def test_open_connections_keep_it_awake_in_connections_mode() -> None:
    r = Rig()
    r.shim.add(CID)
    policies = [hibernation(network="connections")]
    await r.ctl.tick([pod()], policies)
    r.net.activity[KEY] = Activity(None, 1, 0)
    r.clock.advance(10)
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.RUNNING
    r.net.activity[KEY] = Activity(None, 0, 0)
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.SCALED_DOWN


async def test_packets_count_as_activity() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod()], [hibernation(after="3s")])
    r.clock.advance(2)
    r.net.activity[KEY] = idle(r.clock.now)
    await r.ctl.tick([pod()], [hibernation(after="3s")])
    r.clock.advance(2)  # 4s since adoption, 2s since the last packet
    await r.ctl.tick([pod()], [hibernation(after="3s")])
    assert r.state() is ContainerState.RUNNING


async def test_container_not_run_by_the_shim_is_ignored_once() -> None:
    r = Rig()
    await r.ctl.tick([pod()], [hibernation()])
    await r.ctl.tick([pod()], [hibernation()])
    assert KEY not in r.ctl.tracker
    assert "no control socket" in r.ctl.ignored[KEY]
    assert r.calls == []


async def test_container_not_started_yet_is_picked_up_later() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod(started=False)], [hibernation()])
    assert KEY not in r.ctl.tracker
    await r.ctl.tick([pod()], [hibernation()])
    assert KEY in r.ctl.tracker


async def test_container_created_hibernated_is_held_before_its_pod_status_names_it() -> None:
    # A replacement kept hibernated: its shim's Create waits, naming the container,
    # and the kubelet has written no container ID yet.
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    r.shim.waits[(NS, "web", "main")] = CID
    await r.ctl.tick([pod(started=False)], [hibernation()])
    assert r.state() is ContainerState.SCALED_DOWN
    assert r.calls.index("net.hold main") < r.calls.index(f"shim.held {CID}")
    # Once the pod status has the ID, nothing is adopted or held twice.
    del r.shim.waits[(NS, "web", "main")]
    await r.ctl.tick([pod()], [hibernation()])
    assert r.calls.count("net.hold main") == 1 and r.calls.count(f"shim.held {CID}") == 1


async def test_a_shim_that_refuses_held_still_leaves_the_hold_armed() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    r.shim.waits[(NS, "web", "main")] = CID
    r.shim.fail.add("held")
    await r.ctl.tick([pod(started=False)], [hibernation()])
    assert r.state() is ContainerState.SCALED_DOWN and "net.hold main" in r.calls


async def test_unmanaged_and_other_runtime_pods_are_left_alone() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod(runtime_class="runc")], [hibernation()])
    assert r.calls == [] and not r.ctl.tracker.items  # not even swept: not our runtime
    await r.ctl.tick([pod("other", labels={"app": "other"})], [hibernation()])
    assert r.calls == [] and not r.ctl.tracker.items  # not run by our shim


async def test_policy_removed_wakes_and_tears_down() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    r.calls.clear()
    await r.ctl.tick([pod()], [])
    await r.settle()
    assert r.calls[:2] == ["status main=RESTORING", f"shim.wake {CID}"]
    assert "net.teardown main" in r.calls
    assert KEY not in r.ctl.tracker


async def test_pod_gone_forgets_without_waking() -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    r.calls.clear()
    await r.ctl.tick([], [hibernation()])
    assert not any(c.startswith("shim.wake") for c in r.calls)
    assert "net.teardown main" in r.calls
    assert not r.ctl.tracker.items


async def test_deleted_pod_with_migration_policy_arms_migrate_on_stop_once() -> None:
    r = Rig()
    r.shim.add(CID)
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await r.ctl.tick([pod(template_hash="abc123")], policies)
    r.calls.clear()
    await r.ctl.tick([pod(template_hash="abc123", deleting=True)], policies)
    await r.ctl.tick([pod(template_hash="abc123", deleting=True)], policies)
    assert r.calls.count(f"shim.migrate-on-stop {CID} True") == 1
    # The replacement's Create must wait for the checkpoint: pending first.
    assert r.calls.index("shim.pending abc123/main/from_shop_web") < r.calls.index(
        f"shim.migrate-on-stop {CID} True")
    assert r.state() is ContainerState.MIGRATING
    assert r.reasons() == ["CheckpointForMigration"]


async def test_deleted_pod_without_template_hash_is_not_checkpointed() -> None:
    r = Rig()
    r.shim.add(CID)
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await r.ctl.tick([pod()], policies)
    # A label is not enough: the shim only sees pod annotations.
    await r.ctl.tick([pod(deleting=True, labels={"app": "web", "pod-template-hash": "x"})],
                     policies)
    await r.ctl.tick([pod(deleting=True)], policies)
    assert not any(f"migrate-on-stop {CID} True" in c or "pending" in c for c in r.calls)
    # Said once, so the shim's stop does not wait out its decision window.
    assert r.calls.count(f"shim.migrate-on-stop {CID} False") == 1


async def test_adoption_under_a_migration_policy_tells_the_shim_to_expect_a_decision() -> None:
    r = Rig()
    r.shim.add(CID)
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await r.ctl.tick([pod(template_hash="abc123")], policies)
    await r.ctl.tick([pod(template_hash="abc123")], policies)
    assert r.calls.count(f"shim.expect-migration {CID}") == 1  # once, at adoption
    await r.ctl.tick([pod(template_hash="abc123", deleting=True)], policies)
    assert r.calls.index(f"shim.expect-migration {CID}") < r.calls.index(
        f"shim.migrate-on-stop {CID} True")


async def test_adoption_without_a_migration_policy_expects_nothing() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod(template_hash="abc123")], [hibernation()])
    await r.ctl.tick([pod(template_hash="abc123", deleting=True)], [hibernation()])
    assert r.state() is ContainerState.RUNNING
    assert not any("expect-migration" in c or "migrate-on-stop" in c for c in r.calls)


async def test_a_shim_that_refuses_expect_is_still_adopted() -> None:
    r = Rig()
    r.shim.add(CID)
    r.shim.fail.add("expect")  # e.g. a shim older than the stop window
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await r.ctl.tick([pod(template_hash="abc123")], policies)
    assert r.state() is ContainerState.RUNNING
    await r.ctl.tick([pod(template_hash="abc123", deleting=True)], policies)
    assert f"shim.migrate-on-stop {CID} True" in r.calls


async def test_adoption_trusts_the_shim_over_the_annotation() -> None:
    r = Rig()
    r.shim.add(CID, status="RUNNING")
    await r.ctl.tick([pod(status='{"main":"SCALED_DOWN"}')], [hibernation()])
    assert r.state() is ContainerState.RUNNING
    assert "net.hold main" not in r.calls
    assert r.rep.statuses[-1] == {"main": "RUNNING"}


async def test_status_is_retried_until_written_and_not_repeated() -> None:
    r = Rig()
    r.shim.add(CID)
    r.rep.fail_status = True
    await r.ctl.tick([pod()], [hibernation(after="1h")])
    assert r.rep.statuses == []
    r.rep.fail_status = False
    await r.ctl.tick([pod()], [hibernation(after="1h")])
    await r.ctl.tick([pod()], [hibernation(after="1h")])
    assert r.rep.statuses == [{"main": "RUNNING"}]


async def test_two_containers_one_pod_share_one_annotation() -> None:
    r = Rig()
    r.shim.add("web-a-id")
    r.shim.add("web-b-id")
    p = pod(containers=("a", "b"))
    two = [hibernation(containers=("a",), after="1s"),
           hibernation(containers=("b",), after="1h", name="b")]
    await r.ctl.tick([p], two)
    r.clock.advance(2)
    await r.ctl.tick([p], two)
    assert r.rep.statuses[-1] == {"a": "SCALED_DOWN", "b": "RUNNING"}
    # Each container has its own chains / queue: the index in spec.containers.
    assert [t.index for t in r.net.setups] == [0, 1]


@pytest.mark.parametrize("enabled", [True, False])
async def test_resize_only_when_enabled(enabled: bool) -> None:
    r = Rig(resize=enabled)
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    await r.ctl.tick([pod()], [hibernation()])
    resizes = [c for c in r.calls if c.startswith("resize")]
    if enabled:
        assert resizes == ["resize main Hibernated {'cpu': '250m', 'memory': '64Mi'}"]
    else:
        assert resizes == []


async def test_failed_resize_is_reported_once_not_every_tick() -> None:
    r = Rig(resize=True)
    r.rep.fail_resize = True
    r.shim.add(CID, status="SCALED_DOWN")
    for _ in range(3):
        await r.ctl.tick([pod()], [hibernation()])
    assert len([c for c in r.calls if c.startswith("resize")]) == 1
    assert r.reasons() == ["ResizeFailed"]


async def test_original_requests_survive_a_daemon_restart(tmp_path: Path) -> None:
    store = tmp_path / "requests.json"
    r = Rig(resize=True, originals=RequestsStore(store))
    r.shim.add(CID, status="SCALED_DOWN")
    await r.ctl.tick([pod()], [hibernation()])
    await r.ctl.tick([pod()], [hibernation()])
    assert "resize main Hibernated {'cpu': '250m', 'memory': '64Mi'}" in r.calls
    # A new daemon: the spec now shows the token requests, the store the originals.
    reduced = pod()
    reduced["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "1m", "memory": "1Mi"}
    r2 = Rig(resize=True, originals=RequestsStore(store))
    r2.shim.add(CID, status="RUNNING")  # woken meanwhile (an exec)
    await r2.ctl.tick([reduced], [hibernation()])
    await r2.ctl.tick([reduced], [hibernation()])
    assert "resize main Original {'cpu': '250m', 'memory': '64Mi'}" in r2.calls
    assert RequestsStore(store).data == {}


async def test_unmanaged_runc_architect_container_is_swept_once() -> None:
    r = Rig()
    r.shim.add(CID, netns="/proc/9/ns/net")
    await r.ctl.tick([pod()], [])  # no policy: nothing governs it
    await r.ctl.tick([pod()], [])
    assert r.calls == ["net.sweep /proc/9/ns/net c0"]
    assert KEY not in r.ctl.tracker


async def test_policy_removed_container_is_torn_down_not_swept() -> None:
    r = Rig()
    r.shim.add(CID)
    await r.ctl.tick([pod()], [hibernation()])
    await r.ctl.tick([pod()], [])
    assert "net.teardown main" in r.calls
    assert not any(c.startswith("net.sweep") for c in r.calls)


@pytest.mark.parametrize(
    ("network", "activity", "by"),
    [
        ("connections", Activity(None, 1, 0), "connection"),  # an open TCP connection
        ("packets", Activity(None, 0, 2), "packet"),  # packets held since hibernation
    ],
)
async def test_a_wake_directive_is_reported_by_its_typed_reason(
    network: str, activity: Activity, by: str
) -> None:
    r = Rig()
    r.shim.add(CID, status="SCALED_DOWN")
    policies = [hibernation(network=network)]
    await r.ctl.tick([pod()], policies)
    assert r.state() is ContainerState.SCALED_DOWN
    r.net.activity[KEY] = activity
    await r.ctl.tick([pod()], policies)
    await r.settle()
    assert r.state() is ContainerState.RUNNING
    _, reason, message = r.rep.events[-1]
    assert reason == "Woken" and f"main woken by {by} in" in message
