"""Migrate-on-stop's decision window (runtime/shim/stopwindow.py) and its use by Kill.

Pure: which containers expect a decision, the window's outcome with the decision
arriving before, during and after it, the control requests that carry it, and
Kill serving the real control socket while it waits (runc and CRIU replaced by
recorders: what runs after the decision is covered on the e2e node by
e2e/tests/cluster/test_shim_stop_race.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from architect.policy import annotations as keys
from architect.runtime.shim import control, plan, process, service, stopwindow
from architect.runtime.shim.events import Publisher, PublishTarget
from architect.runtime.shim.pb import shim_pb2
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.stopwindow import Outcome, StopDecision
from architect.runtime.shim.ttrpc import TtrpcError

MANAGED = {
    plan.CRI_CONTAINER_NAME: "app",
    keys.MANAGED_CONTAINERS: '["app", "side"]',
    keys.TEMPLATE_HASH_LABEL: "5d8f7c",
}

# -- which containers expect a decision ------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({plan.CRI_CONTAINER_NAME: "side"}, True),
        ({plan.CRI_CONTAINER_NAME: "other"}, False),  # not a managed container
        ({plan.CRI_CONTAINER_NAME: None}, False),  # the sandbox (pause) container
        ({keys.TEMPLATE_HASH_LABEL: None}, False),  # no replacement could find it
        ({keys.TEMPLATE_HASH_LABEL: ""}, False),
        ({keys.MANAGED_CONTAINERS: None}, False),
        ({keys.MANAGED_CONTAINERS: "[]"}, False),
    ],
)
def test_migration_expected_from_annotations(
    change: dict[str, str | None], expected: bool
) -> None:
    ann = {**MANAGED, **change}
    assert plan.migration_expected({k: v for k, v in ann.items() if v is not None}) is expected


@pytest.mark.parametrize("raw", ["app", '{"app": true}', '["app", 3]', '"app"'])
def test_malformed_managed_containers_is_named(raw: str) -> None:
    with pytest.raises(plan.PlanError) as e:
        plan.migration_expected({**MANAGED, keys.MANAGED_CONTAINERS: raw})
    assert keys.MANAGED_CONTAINERS in str(e.value) and repr(raw) in str(e.value)
    assert keys.Shape.CONTAINER_LIST.value in str(e.value)


@pytest.mark.parametrize(
    ("raw", "seconds"), [(None, 2.0), ("", 2.0), ("500ms", 0.5), ("0s", 0.0), ("30s", 30.0)]
)
def test_window_setting(raw: str | None, seconds: float) -> None:
    assert stopwindow.parse_window(raw) == seconds


@pytest.mark.parametrize(("raw", "why"), [("2", "not a duration"), ("-1s", "want 0s to 30s"),
                                          ("1m", "want 0s to 30s")])
def test_bad_window_setting_is_named(raw: str, why: str) -> None:
    with pytest.raises(stopwindow.WindowError) as e:
        stopwindow.parse_window(raw)
    assert str(e.value).startswith(f"{stopwindow.WINDOW_ENV}: value {raw!r}") and why in str(e.value)


# -- the window's outcome ---------------------------------------------------------------


async def _decide_later(d: StopDecision, delay: float, enabled: bool) -> None:
    await asyncio.sleep(delay)
    d.decide(enabled)


async def test_decision_before_the_kill_is_taken_at_once() -> None:
    for enabled, outcome in ((True, Outcome.ARMED), (False, Outcome.DISARMED)):
        d = StopDecision(expected=True)
        d.decide(enabled)
        assert await d.wait(5.0) == (outcome, 0.0)


@pytest.mark.parametrize(("enabled", "outcome"), [(True, Outcome.ARMED),
                                                   (False, Outcome.DISARMED)])
async def test_decision_during_the_window_ends_the_wait(enabled: bool, outcome: Outcome) -> None:
    d = StopDecision(expected=True)
    later = asyncio.create_task(_decide_later(d, 0.05, enabled))
    got, waited = await d.wait(5.0)
    await later
    assert got is outcome
    assert 0.04 <= waited < 2.0  # woken by the decision, not by the window


async def test_decision_after_the_window_is_a_timeout() -> None:
    d = StopDecision(expected=True)
    later = asyncio.create_task(_decide_later(d, 0.5, True))
    got, waited = await d.wait(0.1)
    assert got is Outcome.TIMEOUT and 0.09 <= waited < 0.5
    await later
    assert d.armed  # a late decision still counts for a later signal


async def test_not_expected_never_waits() -> None:
    d = StopDecision()
    assert await d.wait(5.0) == (Outcome.NOT_EXPECTED, 0.0)


async def test_a_second_kill_shares_the_first_ones_deadline() -> None:
    now = [100.0]
    d = StopDecision(expected=True)
    first = asyncio.create_task(d.wait(0.2, clock=lambda: now[0]))
    await asyncio.sleep(0)  # the first Kill fixes the deadline at 100.2
    now[0] = 100.15
    second = await d.wait(0.2, clock=lambda: now[0])  # waits the 0.05 s left only
    assert second[0] is Outcome.TIMEOUT
    now[0] = 100.3
    assert await d.wait(0.2, clock=lambda: now[0]) == (Outcome.TIMEOUT, 0.0)
    assert (await first)[0] is Outcome.TIMEOUT


# -- control requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "message"),
    [
        ({"enabled": "yes"}, "'migrate-on-stop': 'enabled' 'yes': want true or false"),
        ({"enabled": 1}, "'enabled' 1: want true or false"),
        ({"armed": True}, "unknown field(s) armed; want op, id, enabled"),
        ({"op": "expect-migrate-on-stop", "enabled": True},
         "'expect-migrate-on-stop': unknown field(s) enabled; want op, id"),
        ({"op": "expect-migrate-on-stop", "id": 7}, "needs a string 'id'"),
    ],
)
def test_migrate_on_stop_request_errors(req: dict[str, Any], message: str) -> None:
    line = json.dumps({"op": "migrate-on-stop", "id": "c", **req}).encode()
    with pytest.raises(control.RequestError) as e:
        control.parse_request(line)
    assert message in str(e.value)


@pytest.mark.parametrize("req", [{}, {"enabled": True}, {"enabled": False},
                                 {"op": "expect-migrate-on-stop"}])
def test_migrate_on_stop_requests_ok(req: dict[str, Any]) -> None:
    line = json.dumps({"op": "migrate-on-stop", "id": "c", **req}).encode()
    assert control.parse_request(line) == {"op": "migrate-on-stop", "id": "c", **req}


# -- Kill waits, the control socket decides --------------------------------------------


class Recorder:
    """Stands in for runc (Kill's signal) and CRIU (the migration checkpoint)."""

    gvisor = False  # as runc's

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def kill(self, cid: str, sig: int, all_: bool) -> None:
        self.calls.append(f"signal {cid} {signal.Signals(sig).name}")


def _service(tmp_path: Path, window: float, ann: dict[str, str], rec: Recorder,
             monkeypatch: pytest.MonkeyPatch) -> tuple[service.TaskService, process.Container]:
    reaper = Reaper()
    svc = service.TaskService(reaper, Publisher(reaper, PublishTarget("true", "", "k8s.io")),
                              "k8s.io", tmp_path / "state", tmp_path / "runc",
                              stop_window=window)
    init = process.Proc("", "", "", "", False, pid=4242, status=process.RUNNING)
    c = process.Container("c1", tmp_path / "bundle", rec, ann, init, tmp_path / "c1")
    c.stop.expected = plan.migration_expected(ann)
    svc.containers[c.id] = c

    async def checkpoint(c: process.Container) -> None:
        rec.calls.append(f"checkpoint {c.id}")
        c.hibernated = True  # as the real one leaves it: processes gone, image kept

    monkeypatch.setattr(svc.lifecycle, "checkpoint_for_migration", checkpoint)
    return svc, c


async def _kill(svc: service.TaskService, sig: int) -> float:
    t0 = time.monotonic()
    await svc.kill(shim_pb2.KillRequest(id="c1", signal=sig))
    return time.monotonic() - t0


async def _control_later(sock: Path, delay: float, req: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(delay)
    return await control.request(sock, req, timeout=5)


@pytest.mark.parametrize(
    ("decision", "calls"),
    [
        ({"enabled": True}, ["checkpoint c1"]),
        ({"enabled": False}, ["signal c1 SIGTERM"]),
    ],
)
async def test_kill_waits_for_the_decision_served_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decision: dict[str, Any], calls: list[str]
) -> None:
    rec = Recorder()
    svc, c = _service(tmp_path, 5.0, MANAGED, rec, monkeypatch)
    server = control.ControlServer(svc, tmp_path / "control.sock")
    await server.start()
    try:
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        svc.watchers.append(events)
        answer = asyncio.create_task(_control_later(
            server.path, 0.2, {"op": "migrate-on-stop", "id": "c1", **decision}))
        took = await _kill(svc, signal.SIGTERM)
        assert (await answer)["ok"]
    finally:
        await server.close()
    assert rec.calls == calls
    assert 0.15 <= took < 4.0, took  # released by the request, well before the window
    assert 0.15 <= c.timings["stop_window"] < 4.0
    waiting, decided = events.get_nowait(), events.get_nowait()
    assert waiting == {"event": "stop-waiting", "id": "c1", "signal": "SIGTERM", "window": 5.0}
    assert decided["event"] == "stop-decision" and decided["id"] == "c1"
    assert decided["outcome"] == ("armed" if decision["enabled"] else "disarmed")
    if decision["enabled"]:  # checkpointed: the exit is reported without a signal
        assert c.init.status == process.STOPPED and c.init.exit_status == 128 + signal.SIGTERM


async def test_kill_without_a_decision_delivers_after_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    svc, c = _service(tmp_path, 0.3, MANAGED, rec, monkeypatch)
    took = await _kill(svc, signal.SIGTERM)
    assert rec.calls == ["signal c1 SIGTERM"]
    assert 0.25 <= took < 3.0, took
    assert 0.25 <= c.timings["stop_window"] < 3.0
    # The SIGKILL after the grace period does not wait a second window.
    took = await _kill(svc, signal.SIGKILL)
    assert rec.calls[-1] == "signal c1 SIGKILL" and took < 0.25, took


async def test_unexpected_container_and_other_signals_never_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    plain = {k: v for k, v in MANAGED.items() if k != keys.MANAGED_CONTAINERS}
    svc, c = _service(tmp_path, 30.0, plain, rec, monkeypatch)
    await asyncio.wait_for(_kill(svc, signal.SIGTERM), 5)
    assert "stop_window" not in c.timings
    svc, c = _service(tmp_path, 30.0, MANAGED, rec, monkeypatch)
    await asyncio.wait_for(_kill(svc, signal.SIGHUP), 5)
    assert "stop_window" not in c.timings
    assert rec.calls == ["signal c1 SIGTERM", "signal c1 SIGHUP"]


async def test_daemons_expect_makes_any_container_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    svc, c = _service(tmp_path, 0.2, {plan.CRI_CONTAINER_NAME: "app"}, rec, monkeypatch)
    resp = await control.ControlServer(svc, tmp_path / "s").handle(
        {"op": "expect-migrate-on-stop", "id": "c1"})
    assert resp == {"ok": True, "id": "c1", "migrate_on_stop": False, "migration_expected": True}
    took = await _kill(svc, signal.SIGTERM)
    assert rec.calls == ["signal c1 SIGTERM"] and took >= 0.15
    assert c.timings["stop_window"] >= 0.15


async def test_exit_during_the_wait_is_no_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    svc, c = _service(tmp_path, 0.2, MANAGED, rec, monkeypatch)

    async def exit_soon() -> None:
        await asyncio.sleep(0.05)
        c.init.status = process.STOPPED

    task = asyncio.create_task(exit_soon())
    with pytest.raises(TtrpcError, match="already finished"):
        await _kill(svc, signal.SIGTERM)
    await task
    assert rec.calls == []


def test_a_new_container_starts_disarmed(tmp_path: Path) -> None:
    """Create builds a fresh Container, so one restored from a handover is not armed."""
    init = process.Proc("", "", "", "", False)
    c = process.Container("c2", tmp_path, Recorder(), dict(MANAGED), init, tmp_path / "c2")
    assert not c.migrate_on_stop and c.stop.enabled is None and not c.stop.expected
