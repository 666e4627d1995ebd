"""The handover a Failed migration leaves on its source node is withdrawn
(withdrawn_handovers, pure; Migrations.reconcile with fakes; NodeImages on a
temporary directory), so the next pod of the template there starts fresh instead
of restoring state older than what the fresh-started replacement ran since."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from architect.runtime.daemon import migrations as migrations_module
from architect.runtime.daemon.checkpointobjects import (
    HANDOVER_DIGEST,
    WITHDRAW_CLAIM,
    HandoverSlot,
    Written,
    checkpoint_body,
    withdrawn_handovers,
)
from architect.runtime.daemon.migrations import Migrations, NodeImages
from architect.runtime.daemon.store import JsonStore
from architect.runtime.shim.plan import (
    CLAIMED_MARK,
    NAMESPACE_MARK,
    PENDING_MARK,
    READY_MARK,
    claim_local,
    handover_dir,
)
from architect.runtime.transfer.images import scratch_dirs
from tests.runtime.daemon.fakes import IMAGE, FakeApi, FakeImages

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
NODE = "node-a"
W = Written("shop", "web-abc", "main", "h1", NODE)
SLOT = W.slot  # from_shop_web-abc
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def ck(phase: str, *, digest: str | None = D1, node: str = NODE, pod: str = "web-abc",
       namespace: str = "shop") -> dict[str, Any]:
    body = checkpoint_body(Written(namespace, pod, "main", "h1", node), IMAGE, digest)
    body["metadata"]["name"] = f"{pod}-main"
    body["status"] = {"phase": phase}
    return body


def slot(age: float = 1.0, *, digest: str = D1, claimed: str = "", name: str = SLOT
         ) -> HandoverSlot:
    return HandoverSlot("h1", "main", name, digest, age, claimed)


FAILED = "Checkpoint shop/web-abc-main Failed"
UNNAMED = "no live Checkpoint names it after 60s"


@pytest.mark.parametrize(("slots", "cks", "keep", "want"), [
    # A Failed migration: at once, whatever its age.
    ([slot(1)], [ck("Failed")], [], FAILED),
    # A replacement on this node claimed it first: it restores it, never pulled.
    ([slot(1, claimed="web-new")], [ck("Failed")], [], None),
    ([slot(900, claimed="web-new")], [], [], None),
    # Live: a replacement may still take it, however old.
    ([slot(900)], [ck("Ready")], [], None),
    ([slot(900)], [ck("Pending")], [], None),
    ([slot(900)], [ck("Restoring")], [], None),
    ([slot(900)], [ck("Ready", digest=None)], [], None),  # an older daemon's object
    # Another image in the slot (a newer pod of that name): not the Failed one's.
    ([slot(1, digest=D2)], [ck("Failed")], [], None),
    ([slot(900, digest=D2)], [ck("Failed")], [], UNNAMED),
    ([slot(900, digest=D2)], [ck("Failed"), ck("Ready", digest=D2)], [], None),
    # Nothing names it (collected, deleted, never created): after the grace only.
    ([slot(30)], [], [], None),
    ([slot(60)], [], [], UNNAMED),
    ([slot(60)], [ck("Consumed")], [], UNNAMED),
    ([slot(30)], [ck("Failed", digest=None)], [], None),  # which image failed: unknown
    ([slot(60)], [ck("Failed", digest=None)], [], UNNAMED),
    # ...unless armed (a restarted daemon creates its Checkpoint) or just written.
    ([slot(900)], [], [("h1", "main", SLOT)], None),
    ([slot(1)], [ck("Failed")], [("h1", "main", SLOT)], FAILED),
    # Only this node's Checkpoints speak for this node's handovers.
    ([slot(1)], [ck("Failed", node="node-b")], [], None),
    ([slot(900)], [ck("Ready", node="node-b")], [], UNNAMED),
    # Same pod name, another namespace: another slot.
    ([slot(1)], [ck("Failed", namespace="other")], [], None),
    # A withdrawal the daemon claimed and did not finish (stopped): finished...
    ([slot(1, claimed=WITHDRAW_CLAIM)], [], [], "withdrawal resumed"),
    # ...but not while a live Checkpoint names it.
    ([slot(1, claimed=WITHDRAW_CLAIM)], [ck("Ready")], [], None),
    # The destination's slots are the grants' (discard_ready), never these.
    ([slot(900, name="to_shop_web-new")], [ck("Failed")], [], None),
])
def test_withdrawn_handovers(
    slots: list[HandoverSlot], cks: list[dict[str, Any]], keep: list[tuple[str, str, str]],
    want: str | None,
) -> None:
    got = withdrawn_handovers(slots, cks, node=NODE, keep=keep)
    assert got == ([] if want is None else [(*_where(slots[0]), slots[0].digest, want)])


def _where(s: HandoverSlot) -> tuple[str, str, str]:
    return s.template_hash, s.container, s.slot


def test_two_replicas_only_the_failed_ones_handover_goes() -> None:
    other = HandoverSlot("h1", "main", "from_shop_web-def", D2, 1.0)
    cks = [ck("Failed"), ck("Ready", digest=D2, pod="web-def")]
    assert withdrawn_handovers([slot(1), other], cks, node=NODE) == [
        ("h1", "main", SLOT, D1, FAILED)]


# --- Migrations.reconcile with fakes ----------------------------------------------


def rig(tmp_path: Path | None = None) -> tuple[Migrations, FakeApi, FakeImages]:
    api, images = FakeApi(), FakeImages()
    store = JsonStore(tmp_path / "m.json" if tmp_path else None)
    return Migrations(api, images, NODE, store), api, images


async def _written(m: Migrations, images: FakeImages) -> None:
    images.handovers[("h1", "main", SLOT)] = D1
    m.armed("cid", W)
    await m.written("cid", ok=True)


async def test_a_failed_migrations_handover_and_image_go_on_the_next_tick() -> None:
    m, api, images = rig()
    await _written(m, images)
    obj = api.objects[("shop", "web-abc-main")]
    assert obj["metadata"]["annotations"][HANDOVER_DIGEST] == D1
    assert await m.reconcile(NOW) == []  # Ready: a replacement may take it
    obj["status"].update(phase="Failed", message="web-new: digest mismatch")  # node B refused it
    done = await m.reconcile(NOW)
    assert done == ["dropped outgoing/h1/main/aaaaaaaaaaaa",
                    f"withdrew handover/h1/main/{SLOT}: {FAILED}"]
    assert images.handovers == {} and images.packed == []
    assert await m.reconcile(NOW) == []


async def test_a_handover_a_local_replacement_claimed_is_left_to_it() -> None:
    m, api, images = rig()
    await _written(m, images)
    images.claims[("h1", "main", SLOT)] = "web-new"
    api.objects[("shop", "web-abc-main")]["status"]["phase"] = "Failed"
    assert not any("withdrew" in d for d in await m.reconcile(NOW))
    assert images.handovers == {("h1", "main", SLOT): D1}


class LaggingApi(FakeApi):
    """The watch has not delivered this daemon's own create yet."""

    def checkpoints(self) -> list[dict[str, Any]]:
        return []


async def test_an_unnamed_handover_goes_after_the_grace_unless_armed_or_just_written(
    tmp_path: Path,
) -> None:
    api, images = LaggingApi(), FakeImages()
    m = Migrations(api, images, NODE, JsonStore(tmp_path / "m.json"))
    await _written(m, images)
    images.ages[("h1", "main", SLOT)] = 300.0  # packing took that long
    assert await m.reconcile(NOW) == []  # its Checkpoint exists, not in the snapshot yet
    # Armed, never reported (a daemon restarted before the shim's event): kept too.
    other = Written("shop", "web-def", "main", "h1", NODE)
    images.handovers[("h1", "main", other.slot)] = D2
    images.ages[("h1", "main", other.slot)] = 300.0
    m.armed("cid2", other)
    assert await m.reconcile(NOW) == []
    m.wrote[("h1", "main", SLOT)] = time.monotonic() - 61  # the grace has passed
    assert await m.reconcile(NOW) == [f"withdrew handover/h1/main/{SLOT}: {UNNAMED}"]
    assert set(images.handovers) == {("h1", "main", other.slot)}


async def test_a_restarted_daemon_keeps_a_live_checkpoints_handover(tmp_path: Path) -> None:
    m, api, images = rig(tmp_path)
    await _written(m, images)
    images.ages[("h1", "main", SLOT)] = 3600.0
    m2 = Migrations(api, images, NODE, JsonStore(tmp_path / "m.json"))  # nothing in memory
    assert await m2.recover() == 0
    assert await m2.reconcile(NOW) == []
    assert images.handovers == {("h1", "main", SLOT): D1}
    del api.objects[("shop", "web-abc-main")]  # collected: never claimed
    assert await m2.reconcile(NOW) == [f"withdrew handover/h1/main/{SLOT}: {UNNAMED}"]


# --- NodeImages on a directory ------------------------------------------------------


def _handover(root: Path, name: str = SLOT, *, ready: bool = True, body: str = "1") -> Path:
    d = handover_dir(root, "h1", "main", name)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(f'{{"v": {body}}}')
    (d / "pages-1.img").write_bytes(b"x" * 10)
    (d / NAMESPACE_MARK).write_text("shop")
    (d / (READY_MARK if ready else PENDING_MARK)).touch()
    return d


def test_node_images_lists_the_ready_handovers_pods_left_here(tmp_path: Path) -> None:
    _handover(tmp_path)
    _handover(tmp_path, "to_shop_web-new")  # fetched for a replacement: not a source's
    _handover(tmp_path, "from_shop_web-def", ready=False)  # its checkpoint still runs
    (handover_dir(tmp_path, "h1", "main", ".from_shop_x.incoming-0123abcd")).mkdir()
    assert claim_local(tmp_path, "h1", "main", "shop", "web-new") is not None  # takes web-abc's
    images = NodeImages(tmp_path, NODE)
    (s,) = images.ready_handovers()
    assert (s.template_hash, s.container, s.slot, s.claimed_by) == ("h1", "main", SLOT, "web-new")
    assert s.digest == images.handover_digest("h1", "main", SLOT) and 0 <= s.age_s < 60
    assert NodeImages(tmp_path / "none", NODE).ready_handovers() == []


def test_node_images_withdraw_leaves_a_claimed_handover_and_another_image(
    tmp_path: Path,
) -> None:
    d = _handover(tmp_path)
    images = NodeImages(tmp_path, NODE)
    digest = images.handover_digest("h1", "main", SLOT)
    assert digest is not None
    assert not images.withdraw_handover("h1", "main", SLOT, D2)  # not the image decided on
    assert not (d / CLAIMED_MARK).exists()
    assert claim_local(tmp_path, "h1", "main", "shop", "web-new") == d
    assert not images.withdraw_handover("h1", "main", SLOT, digest)
    assert (d / CLAIMED_MARK).read_text() == "web-new" and (d / READY_MARK).exists()


def test_node_images_withdraw_claims_first_so_a_late_shim_starts_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shim's claim_local runs between the daemon's claim and its rename: it
    finds the handover taken (O_EXCL) and claims nothing."""
    _handover(tmp_path)
    images = NodeImages(tmp_path, NODE)
    digest = images.handover_digest("h1", "main", SLOT)
    assert digest is not None
    late: list[Path | None] = []
    rename = migrations_module.os.rename

    def racing_rename(src: Any, dst: Any) -> None:
        late.append(claim_local(tmp_path, "h1", "main", "shop", "web-new"))
        rename(src, dst)
    monkeypatch.setattr(migrations_module.os, "rename", racing_rename)
    assert images.withdraw_handover("h1", "main", SLOT, digest)
    assert late == [None]
    assert not (tmp_path / "handover" / "h1").exists()  # its empty parents went too


def test_node_images_withdraw_stopped_midway_is_finished_or_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = NodeImages(tmp_path, NODE)
    # Stopped after its claim: the claim keeps every shim off; the next pass finishes.
    d = _handover(tmp_path)
    (d / CLAIMED_MARK).write_text(WITHDRAW_CLAIM)
    assert claim_local(tmp_path, "h1", "main", "shop", "web-new") is None
    (s,) = images.ready_handovers()
    assert s.claimed_by == WITHDRAW_CLAIM
    assert images.withdraw_handover("h1", "main", SLOT, s.digest)
    assert not d.exists()
    # Stopped after the rename, mid-removal: a scratch name the daemon's start sweeps.
    d = _handover(tmp_path)
    digest = images.handover_digest("h1", "main", SLOT)
    assert digest is not None
    monkeypatch.setattr(migrations_module.shutil, "rmtree", lambda *a, **k: None)
    assert images.withdraw_handover("h1", "main", SLOT, digest)
    monkeypatch.undo()
    (left,) = scratch_dirs(tmp_path)
    assert left.parent == d.parent and left.name.startswith(f".{SLOT}.")
    assert images.ready_handovers() == []
    assert claim_local(tmp_path, "h1", "main", "shop", "web-new") is None
    assert images.sweep() == [str(left.relative_to(tmp_path))] and not left.exists()


def test_the_source_slot_prefix_is_plans() -> None:
    from architect.runtime.daemon.checkpointobjects import SOURCE_SLOT_PREFIX
    from architect.runtime.shim.plan import destination_slot, source_slot

    assert source_slot("shop", "web").startswith(SOURCE_SLOT_PREFIX)
    assert not destination_slot("shop", "web").startswith(SOURCE_SLOT_PREFIX)
