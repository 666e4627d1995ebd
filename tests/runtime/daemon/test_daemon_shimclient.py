"""The daemon's shim client against the shim's real control server (no containerd):
the requests it sends are the ones the shim accepts, and they set what Kill reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from architect.runtime.daemon.ports import ShimError
from architect.runtime.daemon.shimclient import ShimClient
from architect.runtime.shim import process, service
from architect.runtime.shim.control import ControlServer
from architect.runtime.shim.events import Publisher, PublishTarget
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runtimeconfig import RuntimeConfig

CID = "0123456789abcdef"


async def test_expect_then_decide_reach_the_shims_stop_decision(tmp_path: Path) -> None:
    reaper = Reaper()
    svc = service.TaskService(reaper, Publisher(reaper, PublishTarget("true", "", "k8s.io")),
                              "k8s.io", tmp_path / "state", tmp_path / "runc")
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
