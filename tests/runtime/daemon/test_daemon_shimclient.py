"""The daemon's shim client against the shim's real control server (no containerd):
the requests it sends are the ones the shim accepts, and they set what Kill reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from architect.runtime.daemon.ports import ShimError
from architect.runtime.daemon.shimclient import ShimClient
from architect.runtime.shim import plan, process, service
from architect.runtime.shim.control import ControlServer
from architect.runtime.shim.events import Publisher, PublishTarget
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runtimeconfig import RuntimeConfig

CID = "0123456789abcdef"


def _service(tmp_path: Path) -> service.TaskService:
    reaper = Reaper()
    return service.TaskService(reaper, Publisher(reaper, PublishTarget("true", "", "k8s.io")),
                               "k8s.io", tmp_path / "state", tmp_path / "runc")


def _pod_annotations(pod: str) -> dict[str, str]:
    return {plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: pod,
            plan.CRI_CONTAINER_NAME: "main"}


async def test_expect_then_decide_reach_the_shims_stop_decision(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    init = process.Proc("", "", "", "", False, pid=4242, status=process.RUNNING)
    c = process.Container(CID, tmp_path / "bundle", svc.runc(RuntimeConfig()), {}, init,
                          tmp_path / "c")
    svc.containers[CID] = c
    server = ControlServer(svc, tmp_path / "control.sock")
    await server.start()
    run = tmp_path / "run"
    (run / "k8s.io").mkdir(parents=True)
    (run / "k8s.io" / CID).symlink_to(server.path)
    client = ShimClient(run, tmp_path / "state", timeout=5)
    try:
        await client.expect_migration(CID)
        assert c.stop.expected and c.stop.enabled is None and not c.migrate_on_stop
        await client.migrate_on_stop(CID, False)
        assert c.stop.enabled is False
        await client.migrate_on_stop(CID, True)
        assert c.migrate_on_stop
        with pytest.raises(ShimError, match="container 'other': not found"):
            (run / "k8s.io" / "other").symlink_to(server.path)
            await client.expect_migration("other")
    finally:
        await server.close()


async def test_a_create_kept_hibernated_waits_for_the_daemons_hold(tmp_path: Path) -> None:
    # The shim's side names the container by pod; the daemon's client reads it and
    # answers "held" over the real control socket, which ends the shim's wait.
    svc = _service(tmp_path)
    ann = _pod_annotations("web-7d9f.x")
    init = process.Proc("", "", "", "", False, status=process.RUNNING)
    c = process.Container(CID, tmp_path / "bundle", svc.runc(RuntimeConfig()), ann, init,
                          tmp_path / "c", hibernated=True)
    svc.containers[CID] = c
    run = tmp_path / "run"
    svc.run_dir, svc.hold_wait = run, 10.0
    server = ControlServer(svc, tmp_path / "control.sock")
    await server.start()
    (run / "k8s.io").mkdir(parents=True)
    (run / "k8s.io" / CID).symlink_to(server.path)
    client = ShimClient(run, tmp_path / "state", timeout=5)
    try:
        waiting = asyncio.create_task(svc._await_hold(c))
        for _ in range(100):  # bounded: the marker lands at once
            if client.waiting("shop", "web-7d9f.x", "main"):
                break
            await asyncio.sleep(0.01)
        assert client.waiting("shop", "web-7d9f.x", "main") == CID
        assert client.waiting("shop", "web-7d9f.x", "other") is None
        assert not waiting.done()
        await client.held(CID)
        await asyncio.wait_for(waiting, 5)
        assert client.waiting("shop", "web-7d9f.x", "main") is None  # marker removed
        assert c.timings["hold_wait"] < 5
    finally:
        await server.close()


async def test_without_a_daemon_the_create_goes_on_after_its_bound(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    ann = _pod_annotations("web")
    c = process.Container(CID, tmp_path / "bundle", svc.runc(RuntimeConfig()), ann,
                          process.Proc("", "", "", "", False), tmp_path / "c", hibernated=True)
    svc.run_dir, svc.hold_wait = tmp_path / "run", 0.2
    await asyncio.wait_for(svc._await_hold(c), 5)
    assert c.timings["hold_wait"] >= 0.2
    assert not (tmp_path / "run" / plan.HOLDS_DIR / "shop_web_main").exists()
