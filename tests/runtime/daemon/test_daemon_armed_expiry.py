"""Armed migrate-on-stop records the shim never reported on are not kept forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from architect.runtime.daemon.checkpointobjects import Written
from architect.runtime.daemon.migrations import ARMED_AT, MAX_ARMED_S
from architect.runtime.daemon.store import JsonStore
from tests.runtime.daemon.test_daemon_handover import NODE, W, rig

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LATE = T0 + timedelta(seconds=MAX_ARMED_S + 1)


async def test_a_fresh_record_is_kept_and_an_old_one_dropped(tmp_path: Path) -> None:
    m, api, images = rig(tmp_path)
    images.ready = False
    m.armed("cid", W, now=T0)
    assert await m.reconcile(T0 + timedelta(minutes=5)) == []
    assert m.armed_for("cid") == W  # the timestamp does not leak into the record
    done = await m.reconcile(LATE)
    assert done == ["shop/web-abc: stale armed record dropped"]
    assert JsonStore(tmp_path / "m.json").data == {} and not api.objects


async def test_an_old_record_with_a_ready_handover_is_finished() -> None:
    m, api, images = rig()
    images.ready = True
    m.armed("cid", W, now=T0)
    assert await m.reconcile(LATE) == ["shop/web-abc: late handover finished"]
    assert api.objects[("shop", "web-abc-main")]["status"]["phase"] == "Ready"
    assert m.store.data == {}


async def test_a_record_without_a_timestamp_ages_from_when_it_is_first_seen(
    tmp_path: Path,
) -> None:
    m, _, images = rig(tmp_path)
    images.ready = False
    other = Written("shop", "web-def", "main", "h1", NODE)
    m.store.put_key("old", {"namespace": "shop", "pod": "web-def", "container": "main",
                            "template_hash": "h1", "node": NODE})  # an older daemon's
    assert await m.reconcile(T0) == []
    assert m.store.data["old"][ARMED_AT] == T0.isoformat() and m.armed_for("old") == other
    assert await m.reconcile(LATE) == ["shop/web-def: stale armed record dropped"]
