"""The shim's bounded wait for a PersistentCheckpoint the daemon pulls (image_ready)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from architect.runtime.shim import plan
from architect.runtime.shim.lifecycle import Lifecycle
from architect.runtime.shim.process import Container, Proc


def _container(tmp_path: Path, ns: str = "team-a") -> Container:
    ann = {plan.ANN_PERSISTENT: "warm", plan.CRI_SANDBOX_NAMESPACE: ns}
    runc: Any = None  # image_ready never runs a runtime
    return Container("c1", tmp_path / "b", runc, ann, Proc("", "", "", "", False), tmp_path / "s")


def _plan(tmp_path: Path, claim: float = 0.3) -> plan.StartPlan:
    d = plan.persistent_dir(tmp_path, "team-a", "warm")
    return plan.StartPlan("restore", "PersistentCheckpoint warm", d, 5.0, consume=False,
                          handover=True, claim_seconds=claim)


def _ready(tmp_path: Path, c: Container, p: plan.StartPlan, after: float,
           unavailable: str = "", grant_ns: str = "team-a") -> bool:
    lc: Any = Lifecycle.__new__(Lifecycle)
    assert p.image is not None
    d = p.image

    async def daemon() -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / plan.PENDING_MARK).touch()
        await asyncio.sleep(after)
        if unavailable:
            (d / plan.UNAVAILABLE_MARK).write_text(unavailable)
        else:
            (d / "manifest.json").write_text("{}")
            plan.write_grant(d, grant_ns, [], plan.manifest_digest(d))
            (d / plan.READY_MARK).touch()
        (d / plan.PENDING_MARK).unlink()

    async def go() -> bool:
        t = asyncio.create_task(daemon())
        ok = bool(await lc.image_ready(c, p))
        await t
        return ok

    return asyncio.run(go())


def test_nobody_claims_it_fresh_after_the_claim_window(tmp_path: Path) -> None:
    c, p = _container(tmp_path), _plan(tmp_path)
    t0 = time.monotonic()
    assert not asyncio.run(Lifecycle.image_ready(Lifecycle.__new__(Lifecycle), c, p))
    assert 0.3 <= time.monotonic() - t0 < 2
    assert c.start_reason == "PersistentCheckpoint warm not available on this node"


def test_pulled_while_waiting_restores(tmp_path: Path) -> None:
    c, p = _container(tmp_path), _plan(tmp_path)
    assert _ready(tmp_path, c, p, 0.6)  # longer than the claim window: pending holds it


def test_the_daemons_reason_is_the_pods(tmp_path: Path) -> None:
    c, p = _container(tmp_path), _plan(tmp_path)
    assert not _ready(tmp_path, c, p, 0.2, unavailable="pull failed: tag v2 not found")
    assert c.start_reason == "pull failed: tag v2 not found"


def test_the_grant_is_checked_after_the_pull(tmp_path: Path) -> None:
    c, p = _container(tmp_path, ns="team-c"), _plan(tmp_path)
    assert not _ready(tmp_path, c, p, 0.1, grant_ns="team-a")
    assert "does not list namespace team-c" in c.start_reason


def test_a_replacement_told_nothing_comes_starts_fresh_at_once(tmp_path: Path) -> None:
    """The daemon marked the slot pending before asking the API, then found no
    handover on its way: the Create stops waiting, and its reason is no
    StartedFresh (daemon/checkpointobjects.start_outcome)."""
    from architect.runtime.daemon.checkpointobjects import start_outcome

    ann = {plan.ANN_TEMPLATE_HASH: "h1", plan.CRI_CONTAINER_NAME: "main",
           plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: "web-2"}
    runc: Any = None
    c = Container("c2", tmp_path / "b", runc, ann, Proc("", "", "", "", False), tmp_path / "s")
    d = plan.handover_dir(tmp_path, "h1", "main", plan.destination_slot("shop", "web-2"))
    d.mkdir(parents=True)
    (d / plan.PENDING_MARK).touch()
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert (p.image, p.wait_seconds) == (d, plan.DEFAULT_SCALEUP_TIMEOUT)

    async def go() -> bool:
        async def daemon() -> None:
            await asyncio.sleep(0.3)
            (d / plan.NOTHING_MARK).touch()
            (d / plan.PENDING_MARK).unlink()

        t = asyncio.create_task(daemon())
        ok = bool(await Lifecycle.image_ready(Lifecycle.__new__(Lifecycle), c, p))
        await t
        return ok

    t0 = time.monotonic()
    assert not asyncio.run(go())
    assert time.monotonic() - t0 < 2
    assert c.start_reason == f"no handover on its way to {d}"
    assert start_outcome("fresh", c.start_reason, "h1", "main") is None


def _replacement(tmp_path: Path) -> tuple[Container, Path]:
    ann = {plan.ANN_TEMPLATE_HASH: "h1", plan.CRI_CONTAINER_NAME: "main",
           plan.ANN_MANAGED: '["main"]',
           plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: "web-3"}
    runc: Any = None
    c = Container("c3", tmp_path / "b", runc, ann, Proc("", "", "", "", False), tmp_path / "s")
    return c, plan.handover_dir(tmp_path, "h1", "main", plan.destination_slot("shop", "web-3"))


def test_a_migration_expected_create_before_the_daemons_mark_waits_for_it(
    tmp_path: Path,
) -> None:
    """The kubelet's Create came before the daemon's pass marked the slot (a drain
    on a busy node: the handover was on its way, the replacement started fresh).
    It waits for the daemon's word; the pending mark then holds it until ready."""
    c, d = _replacement(tmp_path)
    p = plan.plan_start("runc", c.annotations, tmp_path, None)
    assert (p.path, p.image, p.mark_seconds) == ("restore", d, plan.MARK_WAIT_S)

    async def go() -> bool:
        async def daemon() -> None:
            await asyncio.sleep(0.5)
            d.mkdir(parents=True)
            (d / plan.PENDING_MARK).touch()
            await asyncio.sleep(0.5)
            (d / plan.NAMESPACE_MARK).write_text("shop")
            (d / plan.READY_MARK).touch()
            (d / plan.PENDING_MARK).unlink()

        t = asyncio.create_task(daemon())
        ok = bool(await Lifecycle.image_ready(Lifecycle.__new__(Lifecycle), c, p))
        await t
        return ok

    assert asyncio.run(go()), c.start_reason


def test_no_word_from_the_daemon_starts_fresh_after_the_mark_wait(tmp_path: Path) -> None:
    c, _ = _replacement(tmp_path)
    p = dataclasses.replace(plan.plan_start("runc", c.annotations, tmp_path, None),
                            mark_seconds=0.3)
    t0 = time.monotonic()
    assert not asyncio.run(Lifecycle.image_ready(Lifecycle.__new__(Lifecycle), c, p))
    assert time.monotonic() - t0 < 2
    assert c.start_reason == "no checkpoint for h1/main: the daemon marked nothing within 0.3s"


def test_a_slot_marked_nothing_or_a_pod_not_migrating_plans_fresh(tmp_path: Path) -> None:
    c, d = _replacement(tmp_path)
    d.mkdir(parents=True)
    (d / plan.NOTHING_MARK).touch()
    assert plan.plan_start("runc", c.annotations, tmp_path, None).path == "fresh"
    (d / plan.NOTHING_MARK).unlink()
    unmanaged = {k: v for k, v in c.annotations.items() if k != plan.ANN_MANAGED}
    assert plan.plan_start("runc", unmanaged, tmp_path, None).path == "fresh"


def test_told_nothing_comes_it_takes_the_handover_a_pod_deleted_here_left(
    tmp_path: Path,
) -> None:
    """Two replicas deleted at once on one node: a replacement's Create waits on its
    own slot; the daemon's pass marks the deleted pod's slot here pending, then says
    nothing comes to this pod from another node. The Create takes the local one."""
    c, d = _replacement(tmp_path)
    d.mkdir(parents=True)
    (d / plan.PENDING_MARK).touch()
    p = plan.plan_start("runc", c.annotations, tmp_path, None)
    assert p.image == d
    local = plan.handover_dir(tmp_path, "h1", "main", plan.source_slot("shop", "web-old"))

    async def go() -> plan.StartPlan | None:
        async def daemon() -> None:
            await asyncio.sleep(0.3)
            local.mkdir(parents=True)
            (local / plan.PENDING_MARK).touch()  # migrate(): the old pod's slot
            (d / plan.NOTHING_MARK).touch()  # then: nothing from another node
            (d / plan.PENDING_MARK).unlink()
            await asyncio.sleep(0.3)
            (local / plan.NAMESPACE_MARK).write_text("shop")
            (local / plan.READY_MARK).touch()  # the old pod's checkpoint is written
            (local / plan.PENDING_MARK).unlink()

        t = asyncio.create_task(daemon())
        got = await Lifecycle.image_ready(Lifecycle.__new__(Lifecycle), c, p)
        await t
        return got

    got = asyncio.run(go())
    assert got is not None and got.image == local, c.start_reason
    assert (local / plan.CLAIMED_MARK).read_text() == "web-3"
    assert c.start_reason.startswith("handover checkpoint for h1/main [from_shop_web-old]")
