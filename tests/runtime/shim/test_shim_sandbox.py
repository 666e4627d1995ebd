"""A runsc pod's sandbox hibernates as one (runtime/shim/sandbox.py, lifecycle's
hibernate_pod/wake_pod): membership, the netns put back, and the order of the
engine calls, with a fake runsc backend (the real one runs on the e2e cluster:
e2e/tests/cluster/test_runsc_hibernate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from architect.runtime.checkpoint import (
    CheckpointOptions,
    RestoreFailed,
    RestoreOptions,
    RestoreResult,
)
from architect.runtime.checkpoint import Container as CkptContainer
from architect.runtime.shim import plan, sandbox
from architect.runtime.shim.lifecycle import Lifecycle
from architect.runtime.shim.oom import OomWatcher
from architect.runtime.shim.process import RUNNING, STOPPED, Container, Proc
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runc import Runc
from architect.runtime.shim.stdio import PipeIO
from architect.runtime.shim.ttrpc import TtrpcError


def _runsc(tmp: Path) -> Runc:
    return Runc(Reaper(), tmp / "root", "runsc")


def _container(tmp: Path, cid: str, kind: str, sid: str, r: Runc | None = None) -> Container:
    ann = {plan.CRI_CONTAINER_TYPE: kind, plan.CRI_SANDBOX_ID: sid} if kind else {}
    init = Proc("", "", "", "", False, pid=100, status=RUNNING)
    return Container(cid, tmp / cid, r or _runsc(tmp), ann, init, tmp / "state" / cid)


def test_members_are_the_sandbox_then_its_containers(tmp_path: Path) -> None:
    r = _runsc(tmp_path)
    pause = _container(tmp_path, "s1", "sandbox", "s1", r)
    b = _container(tmp_path, "b", "container", "s1", r)
    a = _container(tmp_path, "a", "container", "s1", r)
    other = _container(tmp_path, "x", "container", "s2", r)
    lone = _container(tmp_path, "ctr", "", "", r)  # run by ctr: no sandbox annotations
    every = [b, other, pause, a, lone]
    assert sandbox.members(a, every) == [pause, a, b]
    assert sandbox.members(pause, every) == [pause, a, b]
    assert sandbox.members(other, every) == []  # its sandbox is not in this shim
    assert not sandbox.pod_scoped(lone)
    runc = _container(tmp_path, "rc", "container", "s1", Runc(Reaper(), tmp_path, "runc"))
    assert not sandbox.pod_scoped(runc)


ADDRS = json.dumps([
    {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifname": "eth0", "addr_info": [
        {"local": "10.244.0.7", "prefixlen": 24, "scope": "global"},
        {"local": "fe80::1", "prefixlen": 64, "scope": "link"},
    ]},
])
ROUTES = json.dumps([
    {"dst": "default", "gateway": "10.244.0.1", "dev": "eth0", "flags": []},
    {"dst": "10.244.0.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link",
     "prefsrc": "10.244.0.7", "flags": []},
    {"dst": "10.96.0.0/12", "dev": "eth0", "scope": "link", "flags": ["onlink"]},
])


def test_netns_commands_put_back_what_the_sandbox_took() -> None:
    assert sandbox.address_commands(ADDRS) == [
        ["address", "replace", "10.244.0.7/24", "dev", "eth0"]]
    # The kernel's connected route comes back with the address; link routes
    # before gateway routes.
    assert sandbox.route_commands(ROUTES) == [
        ["route", "replace", "10.96.0.0/12", "dev", "eth0", "scope", "link", "onlink"],
        ["route", "replace", "default", "via", "10.244.0.1", "dev", "eth0"],
    ]
    assert sandbox.address_commands("not json") == []
    assert sandbox.route_commands("{}") == []


class FakeRunsc:
    """The backend's calls, in order; ``fail_restore`` names a container whose
    restore fails."""

    name = "runsc"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Path]] = []
        self.fail_restore = ""
        self.next_pid = 500

    async def checkpoint(self, c: CkptContainer, image: Path, o: CheckpointOptions) -> None:
        assert not o.leave_running
        image.mkdir(parents=True)
        (image / "manifest.json").write_text("{}")
        self.calls.append(("checkpoint", c.id, image))

    async def restore(
        self, c: CkptContainer, image: Path, o: RestoreOptions
    ) -> RestoreResult:
        assert not o.empty_dirs and image.is_dir()
        self.calls.append(("restore", c.id, image))
        if c.id == self.fail_restore:
            raise RestoreFailed(c.id, "runsc restore failed (exit 1)")
        self.next_pid += 1
        return RestoreResult(c.id, self.next_pid, None, 0.1, {"engine_restore": 0.1})  # type: ignore[arg-type]


def _pod(tmp: Path) -> tuple[Lifecycle, FakeRunsc, list[Container], list[Any]]:
    r = _runsc(tmp)
    fake = FakeRunsc()
    r.__dict__["backend"] = fake  # the cached_property's slot

    async def delete(cid: str, force: bool = False) -> None:
        fake.calls.append(("delete", cid, Path()))

    r.delete = delete  # type: ignore[method-assign]
    pause = _container(tmp, "s1", "sandbox", "s1", r)
    app = _container(tmp, "a1", "container", "s1", r)
    for c in (pause, app):
        c.init.io = PipeIO("", "", "")  # needs the running loop
        c.bundle.mkdir(parents=True)
        (c.bundle / "config.json").write_text("{}")
    exits: list[Any] = []
    events: list[Any] = []

    async def exited(c: Container, p: Proc, code: int) -> None:
        p.status = STOPPED
        exits.append((c.id, code))

    lc = Lifecycle(Reaper(), tmp / "state", OomWatcher(lambda cid: None), events.append,
                   exited, lambda c: None)
    lc.members = lambda c: sandbox.members(c, [pause, app])
    return lc, fake, [pause, app], exits


async def test_the_pod_hibernates_as_one_and_wakes_in_order(tmp_path: Path) -> None:
    lc, fake, (pause, app), exits = _pod(tmp_path)
    out = await lc.hibernate(app)
    assert out["containers"] == ["s1", "a1"]
    # One checkpoint of the sandbox; its container's runsc record goes with it.
    assert fake.calls == [("checkpoint", "s1", pause.image), ("delete", "a1", Path())]
    assert pause.hibernated and app.hibernated and (pause.image / plan.READY_MARK).exists()
    assert pause.init.status == RUNNING and app.init.status == RUNNING  # no exit reported
    assert (await lc.hibernate(pause))["seconds"] == 0.0  # already: nothing again

    await lc.wake(app, "request")
    # The sandbox first, then its container, both from the sandbox's one image.
    assert fake.calls[2:] == [("restore", "s1", pause.image), ("restore", "a1", pause.image)]
    assert not pause.hibernated and not app.hibernated and not exits
    assert (pause.init.pid, app.init.pid) == (501, 502)
    assert not pause.image.exists()


async def test_a_half_restored_pod_reports_its_exits(tmp_path: Path) -> None:
    lc, fake, (pause, _app), exits = _pod(tmp_path)
    await lc.hibernate(pause)
    fake.fail_restore = "a1"
    with pytest.raises(TtrpcError, match="wake sandbox s1"):
        await lc.wake(pause, "request")
    # The sandbox restored but its container did not: the kubelet must recreate it.
    assert sorted(exits) == [("a1", 255), ("s1", 255)]
    assert not pause.image.exists()


async def test_a_failed_first_restore_keeps_the_image_for_a_retry(tmp_path: Path) -> None:
    lc, fake, (pause, app), exits = _pod(tmp_path)
    await lc.hibernate(app)
    fake.fail_restore = "s1"
    with pytest.raises(TtrpcError):
        await lc.wake(app, "request")
    assert pause.hibernated and app.hibernated and pause.image.exists() and not exits
    fake.fail_restore = ""
    await lc.wake(app, "request")
    assert not app.hibernated


async def test_a_pod_with_a_running_exec_is_refused(tmp_path: Path) -> None:
    lc, fake, (pause, app), _ = _pod(tmp_path)
    app.execs["e1"] = Proc("e1", "", "", "", False, pid=9, status=RUNNING)
    with pytest.raises(TtrpcError, match="running execs"):
        await lc.hibernate(pause)
    assert not fake.calls and not pause.hibernated


async def test_a_netns_that_cannot_be_read_fails_nothing(tmp_path: Path) -> None:
    # No such netns: the snapshot records nothing usable and put_back says why.
    await sandbox.snapshot(str(tmp_path / "no-netns"), tmp_path / "st", None)
    got = json.loads((tmp_path / "st" / sandbox.NETNS_FILE).read_text())
    assert got["addresses"] == "[]"
    assert await sandbox.put_back(tmp_path / "st", None) == [
        f"netns {str(tmp_path / 'no-netns')!r} is gone"]
    assert await sandbox.put_back(tmp_path / "nothing", None) == []  # no snapshot
