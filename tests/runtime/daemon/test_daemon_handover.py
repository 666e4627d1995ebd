"""The daemon's Checkpoint decisions (pure) and their sequencing (fakes of the API)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane.coordinate import grant_name
from architect.engine.controlplane.phases import OBSERVED_PHASE, TRANSITIONS
from architect.engine.controlplane.transfer import (
    Grant,
    Ticket,
    TransferError,
    grant_data,
    issue,
)
from architect.errors import UsageError
from architect.policy.annotations import TEMPLATE_HASH_LABEL
from architect.policy.models import Checkpoint
from architect.runtime.daemon.checkpointobjects import (
    Written,
    checkpoint_body,
    checkpoint_name,
    consumed_checkpoint,
    incoming_handover,
    outgoing_to_drop,
    report_outcome,
    start_outcome,
    transfer_retryable,
    written_status,
)
from architect.runtime.daemon.config import parse_args
from architect.runtime.daemon.grants import Grants, decode_grant
from architect.runtime.daemon.migrations import Migrations, NodeImages
from architect.runtime.daemon.store import JsonStore
from tests.runtime.daemon.fakes import IMAGE, FakeApi, FakeImages

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NODE = "node-a"
W = Written("shop", "web-abc", "main", "h1", NODE)
HANDOVER = "/var/lib/architect/shim/handover/h1/main"
DIGEST = "sha256:" + "a" * 64


def ck(name: str = "web-abc-main", phase: str | None = "Ready", *, node: str = NODE,
       consumed_by: str = "", created: str = "2026-11-23T11:59:00Z",
       annotations: Mapping[str, str] | None = None, source_pod: str = "web-abc",
       ) -> dict[str, Any]:
    body = checkpoint_body(Written("shop", source_pod, "main", "h1", node), IMAGE)
    body["metadata"].update(name=name, creationTimestamp=created, uid="u-" + name,
                            annotations=dict(annotations or {}))
    if phase is not None:
        body["status"] = {"phase": phase, "consumedBy": consumed_by}
    return body


# --- the object ------------------------------------------------------------------


def test_body_validates_against_the_crd_model_and_is_labelled() -> None:
    body = checkpoint_body(W, IMAGE)
    parsed = Checkpoint.model_validate(body)
    assert parsed.spec.reason == "Migration" and parsed.spec.source_node == NODE
    assert parsed.spec.image is not None and parsed.spec.image.size_bytes == 10
    labels = body["metadata"]["labels"]
    assert labels[TEMPLATE_HASH_LABEL] == "h1"
    assert labels["architect.loopholelabs.io/node"] == NODE
    assert "image" not in checkpoint_body(W, None)["spec"]


def test_name_is_stable_and_bounded() -> None:
    assert checkpoint_name("web-abc", "main") == "web-abc-main"
    assert checkpoint_name("web-abc", "main") == checkpoint_name("web-abc", "main")
    long = checkpoint_name("p" * 250, "c" * 60)
    assert len(long) <= 253 and long != checkpoint_name("p" * 250, "d" * 60)


@pytest.mark.parametrize(
    ("existing", "ok", "want"),
    [
        (None, True, "Ready"),
        (None, False, "Failed"),
        ({"status": {"phase": "Pending"}}, True, "Ready"),
        ({}, True, "Ready"),  # no status yet: Pending
        ({"status": {"phase": "Restoring"}}, True, None),  # moved on: a restart, not ours
        ({"status": {"phase": "Ready"}}, False, None),
    ],
)
def test_written_status(existing: dict[str, Any] | None, ok: bool, want: str | None) -> None:
    patch = written_status(existing, ok=ok, message="m")
    assert (patch["status"]["phase"] if patch else None) == want
    if want:
        assert want in TRANSITIONS["Pending"]  # the status webhook allows it


# --- the replacement's start -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason", "want"),
    [
        ("restore", "handover checkpoint for h1/main", "restored"),
        ("restore", "handover checkpoint for h1/main pending", "restored"),
        ("restore", "handover checkpoint for h2/main", None),
        ("restore", "own hibernation image", None),
        ("fresh", f"restore from {HANDOVER} failed: criu said no", "fresh"),
        ("fresh", f"scaleup-timeout passed waiting for {HANDOVER}", "fresh"),
        ("fresh", f"handover {HANDOVER} withdrawn", "fresh"),
        ("fresh", "no checkpoint for h1/main", None),
        ("fresh", "restore from /x/persistent/shop/p failed: no", None),
        ("fresh", "", None),
    ],
)
def test_start_outcome(path: str, reason: str, want: str | None) -> None:
    assert start_outcome(path, reason, "h1", "main") == want


def test_consumed_checkpoint_picks_this_nodes_newest_for_the_pod() -> None:
    old = ck("old", created="2026-11-23T11:00:00Z")
    new = ck("new", created="2026-11-23T11:59:00Z")
    other_node = ck("remote", node="node-b", created="2026-11-23T11:59:30Z")
    for_other = ck("other", "Restoring", consumed_by="web-zzz", created="2026-11-23T11:59:40Z")
    done = ck("done", "Consumed", created="2026-11-23T11:59:50Z")
    own = ck("own", created="2026-11-23T11:59:55Z", source_pod="web-new")

    def pick(*cs: dict[str, Any]) -> str | None:
        got = consumed_checkpoint(cs, namespace="shop", template_hash="h1", container="main",
                                  pod="web-new", node=NODE)
        return None if got is None else str(got["metadata"]["name"])

    assert pick(old, new, other_node, for_other, done, own) == "new"
    assert pick(ck("mine", "Restoring", consumed_by="web-new"), old) == "mine"
    assert pick(other_node, done) is None


def test_consumed_checkpoint_of_two_replicas_is_the_one_the_shim_took(tmp_path: Path) -> None:
    """Two pods of one template deleted on this node: each replacement's start
    names the handover it claimed, and that source pod's Checkpoint is the one."""
    from architect.runtime.daemon.checkpointobjects import taken_slot
    from architect.runtime.shim import plan

    a = ck("web-a-main", created="2026-11-23T11:59:00Z", source_pod="web-a")
    b = ck("web-b-main", created="2026-11-23T11:59:30Z", source_pod="web-b")
    d = plan.handover_dir(tmp_path, "h1", "main", plan.source_slot("shop", "web-a"))
    d.mkdir(parents=True)
    (d / plan.NAMESPACE_MARK).write_text("shop")
    (d / plan.READY_MARK).touch()
    reason = plan.plan_start("runc", {
        plan.ANN_TEMPLATE_HASH: "h1", plan.CRI_CONTAINER_NAME: "main",
        plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: "web-new"},
        tmp_path, None).reason
    assert start_outcome("restore", reason, "h1", "main") == "restored"
    assert taken_slot(reason) == "from_shop_web-a" and taken_slot("no checkpoint") == ""
    got = consumed_checkpoint([a, b], namespace="shop", template_hash="h1", container="main",
                              pod="web-new", node=NODE, slot=taken_slot(reason))
    assert got is not None and got["metadata"]["name"] == "web-a-main"  # not the newest


def test_report_ready_then_restoring_then_consumed() -> None:
    r = report_outcome(ck(phase="Ready"), pod="web-new", outcome="restored", reason="", now=NOW)
    assert not r.done and r.patch is not None
    assert r.patch[0] == {"op": "test", "path": "/status/phase", "value": "Ready"}
    assert {"op": "replace", "path": "/status/consumedBy", "value": "web-new"} in r.patch
    # Claimed (by the daemon or the control plane): Consumed once the control
    # plane has recorded Restoring...
    claimed = ck(phase="Restoring", consumed_by="web-new")
    wait = report_outcome(claimed, pod="web-new", outcome="restored", reason="", now=NOW,
                          restoring_since=NOW - timedelta(seconds=1))
    assert wait.patch is None and not wait.done
    seen = ck(phase="Restoring", consumed_by="web-new", annotations={OBSERVED_PHASE: "Restoring"})
    r = report_outcome(seen, pod="web-new", outcome="restored", reason="", now=NOW)
    assert r.done and r.patch is not None
    assert {"op": "replace", "path": "/status/phase", "value": "Consumed"} in r.patch
    assert {"op": "test", "path": "/status/consumedBy", "value": "web-new"} in r.patch
    # ... or after the grace, with no operator to record it.
    late = report_outcome(claimed, pod="web-new", outcome="restored", reason="",
                          now=NOW + timedelta(seconds=10), restoring_since=NOW)
    assert late.done and late.patch is not None


def test_report_fresh_fails_only_its_own_claim() -> None:
    mine = ck(phase="Restoring", consumed_by="web-new")
    r = report_outcome(mine, pod="web-new", outcome="fresh", reason="withdrawn", now=NOW)
    assert r.done and r.patch is not None
    assert {"op": "replace", "path": "/status/phase", "value": "Failed"} in r.patch
    assert "started fresh: withdrawn" in r.patch[4]["value"]
    r = report_outcome(ck(phase="Ready"), pod="web-new", outcome="fresh", reason="x", now=NOW)
    assert r.done and r.patch is None
    other = ck(phase="Restoring", consumed_by="web-zzz")
    r = report_outcome(other, pod="web-new", outcome="restored", reason="", now=NOW)
    assert r.done and r.patch is None


def test_outgoing_dropped_once_no_live_checkpoint_needs_it() -> None:
    d = IMAGE["digest"]
    entries = [("h1", "main", d, 120.0), ("h2", "main", d, 1.0), ("h3", "main", d, 5.0),
               ("h4", "main", d, 120.0)]
    cks = [ck(phase="Ready"),  # h1 live
           {**ck(phase="Consumed"), "spec": {**ck()["spec"], "templateHash": "h2"}},
           {**ck(phase="Ready", node="node-b"), "spec": {**ck()["spec"], "templateHash": "h4",
                                                          "sourceNode": "node-b"}}]
    # h2 Consumed (at once), h3 too young (its Checkpoint may not exist yet), h4 not
    # ours and old.
    assert outgoing_to_drop(entries, cks, node=NODE) == [("h2", "main", d), ("h4", "main", d)]


def test_a_second_replicas_image_outlives_the_first_ones_consumed_checkpoint() -> None:
    """A drain under a PodDisruptionBudget: the first replica's Checkpoint is
    Consumed while the second one's image is packed but its Checkpoint not created
    yet (or not in the snapshot): only the first one's image goes."""
    first, second = IMAGE["digest"], "sha256:" + "b" * 64
    entries = [("h1", "main", first, 30.0), ("h1", "main", second, 0.5)]
    assert outgoing_to_drop(entries, [ck(phase="Consumed")], node=NODE) == [
        ("h1", "main", first)]
    live = {**ck("web-def-main", "Ready", source_pod="web-def")}
    live["spec"] = {**live["spec"], "image": {**IMAGE, "digest": second}}
    old = [(h, c, d, 600.0) for h, c, d, _ in entries]
    assert outgoing_to_drop(old, [ck(phase="Consumed"), live], node=NODE) == [
        ("h1", "main", first)]


async def test_reconcile_keeps_the_image_a_second_replica_packed_meanwhile() -> None:
    m, api, images = rig()
    m.armed("cid", W)
    await m.written("cid", ok=True)
    obj = api.objects[("shop", "web-abc-main")]
    obj["status"].update(phase="Consumed", consumedBy="web-new")
    images.digest = "sha256:" + "b" * 64
    images.export("h1", "main", "from_shop_web-def")  # its Checkpoint not created yet
    assert await m.reconcile(NOW) == ["dropped outgoing/h1/main/aaaaaaaaaaaa"]
    assert [p[2] for p in images.outgoing()] == [images.digest]


@pytest.mark.parametrize(
    ("message", "retry"),
    [
        ("transfer of a/b from https://x failed: [Errno 111] Connection refused", True),
        ("https://x closed the connection without answering", True),
        ("transfer of a/b from https://x timed out", True),
        ("https://x refused a/b: 403 ticket for a/b has expired", True),
        ("digest mismatch: got sha256:1, expected sha256:2", False),
        ("image is 3 bytes, expected 4", False),
        ("image of a/b: file pages-1.img: digest mismatch", False),
        ("a/b: bad manifest from https://x: no payload", False),
    ],
)
def test_transfer_retryable(message: str, retry: bool) -> None:
    assert transfer_retryable(message) is retry


# --- Migrations with a fake API -------------------------------------------------


def rig(tmp_path: Path | None = None) -> tuple[Migrations, FakeApi, FakeImages]:
    api, images = FakeApi(), FakeImages()
    store = JsonStore(tmp_path / "m.json" if tmp_path else None)
    return Migrations(api, images, NODE, store), api, images


async def test_written_creates_ready_checkpoint_once(tmp_path: Path) -> None:
    m, api, _ = rig(tmp_path)
    assert await m.written("cid", ok=True) is None  # never armed here: not ours
    m.armed("cid", W)
    assert await m.written("cid", ok=True) == "web-abc-main"
    obj = api.objects[("shop", "web-abc-main")]
    assert obj["spec"]["image"] == IMAGE and obj["status"]["phase"] == "Ready"
    assert api.calls == ["create web-abc-main", "status web-abc-main Ready"]
    # A second event (or a restarted daemon) for the same handover: no second object.
    m.armed("cid", W)
    await m.written("cid", ok=True)
    assert api.calls[-1] == "create web-abc-main" and len(api.objects) == 1


async def test_failed_checkpoint_or_export_is_failed_with_the_message() -> None:
    m, api, images = rig()
    m.armed("c1", W)
    await m.written("c1", ok=False, error="criu dump: no space")
    obj = api.objects[("shop", "web-abc-main")]
    assert obj["status"]["phase"] == "Failed"
    assert "criu dump: no space" in obj["status"]["message"] and "image" not in obj["spec"]
    images.fail = "no ready handover image in /x"
    m.armed("c2", Written("shop", "web-def", "main", "h1", NODE))
    await m.written("c2", ok=True)
    obj = api.objects[("shop", "web-def-main")]
    assert obj["status"]["phase"] == "Failed" and "no ready handover" in obj["status"]["message"]


async def test_armed_record_survives_a_restart_and_is_finished(tmp_path: Path) -> None:
    m, api, images = rig(tmp_path)
    m.armed("cid", W)
    # The daemon died before the shim's event; the new one finishes from the record.
    m2 = Migrations(api, images, NODE, JsonStore(tmp_path / "m.json"))
    images.ready = False
    assert await m2.recover() == 0 and not api.objects  # handover not written yet
    images.ready = True
    assert await m2.recover() == 1
    assert api.objects[("shop", "web-abc-main")]["status"]["phase"] == "Ready"
    assert JsonStore(tmp_path / "m.json").data == {}
    m.store.put_key("broken", {"nope": "x"})
    assert m.armed_for("broken") is None


async def test_handover_of_a_deleted_namespace_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A namespace deletion took the pod: no Checkpoint can be made there, and a
    restarted daemon must not crash-loop on the record (seen on the e2e node)."""
    m, api, images = rig(tmp_path)
    images.handovers[(W.template_hash, "main", W.slot)] = "sha256:d1"
    m.armed("cid", W)
    m.armed("other", Written("live", "web-x", "main", "h2", NODE))
    api.gone.add("shop")
    m2 = Migrations(api, images, NODE, JsonStore(tmp_path / "m.json"))
    assert await m2.recover() == 2  # both done: the live one finished, the gone one dropped
    assert ("shop", "web-abc-main") not in api.objects
    assert api.objects[("live", "web-x-main")]["status"]["phase"] == "Ready"
    assert (W.template_hash, "main", IMAGE["digest"]) in images.dropped
    # Its handover directory too: a pod of the same template in another
    # namespace would find it there, ready but not its own.
    assert (W.template_hash, "main") not in images.handovers
    assert JsonStore(tmp_path / "m.json").data == {}


async def test_recover_survives_a_record_that_fails(tmp_path: Path) -> None:
    m, api, _ = rig(tmp_path)
    m.armed("cid", W)
    api.fail_create = True
    m2 = Migrations(api, FakeImages(), NODE, JsonStore(tmp_path / "m.json"))
    assert await m2.recover() == 0  # logged, kept for the next start
    assert "cid" in JsonStore(tmp_path / "m.json").data


async def test_same_node_replacement_claims_then_consumes_then_drops() -> None:
    m, api, images = rig()
    # The replacement restored before the Checkpoint existed (the shim does not wait).
    assert m.started("shop", "web-new", "main", "h1", "restore",
                     "handover checkpoint for h1/main pending") == "restored"
    assert await m.reconcile(NOW) == []
    m.armed("cid", W)
    await m.written("cid", ok=True)
    done = await m.reconcile(NOW)
    assert done == ["shop/web-abc-main: claimed by web-new"]
    obj = api.objects[("shop", "web-abc-main")]
    assert obj["status"]["consumedBy"] == "web-new" and obj["status"]["phase"] == "Restoring"
    assert await m.reconcile(NOW) == []  # the control plane has not recorded the claim
    assert await m.reconcile(NOW + timedelta(seconds=1)) == []
    obj["metadata"]["annotations"] = {OBSERVED_PHASE: "Restoring"}
    # Consumed; the packed image goes once nothing live needs it.
    assert await m.reconcile(NOW) == ["shop/web-abc-main: consumed by web-new",
                                      "dropped outgoing/h1/main/aaaaaaaaaaaa"]
    assert obj["status"]["phase"] == "Consumed" and not m.pending
    assert await m.reconcile(NOW) == []
    assert images.dropped == [("h1", "main", IMAGE["digest"])]


async def test_two_replicas_replacements_that_took_each_others_claims_swap_them() -> None:
    """Both pods of a template deleted on this node; the control plane claimed
    web-a's Checkpoint for new-2 and web-b's for new-1, but new-1's shim took
    web-a's handover (its start reason names the slot): the claims follow the
    shim, each Checkpoint Consumed by the pod that has its state."""
    m, api, _ = rig()
    for cid, pod in (("ca", "web-a"), ("cb", "web-b")):
        m.armed(cid, Written("shop", pod, "main", "h1", NODE))
        await m.written(cid, ok=True)
    api.objects[("shop", "web-a-main")]["status"].update(phase="Restoring", consumedBy="new-2")
    api.objects[("shop", "web-b-main")]["status"].update(phase="Restoring", consumedBy="new-1")
    m.started("shop", "new-1", "main", "h1", "restore",
              "handover checkpoint for h1/main [from_shop_web-a]")
    m.started("shop", "new-2", "main", "h1", "restore",
              "handover checkpoint for h1/main [from_shop_web-b] pending")
    done = await m.reconcile(NOW)
    assert sorted(done) == ["shop/web-a-main: claimed (from new-2) by new-1",
                            "shop/web-b-main: claimed (from new-1) by new-2"]
    for name in ("web-a-main", "web-b-main"):
        api.objects[("shop", name)]["metadata"]["annotations"] = {OBSERVED_PHASE: "Restoring"}
    done = await m.reconcile(NOW)
    assert sorted(d for d in done if "consumed" in d) == [
        "shop/web-a-main: consumed by new-1", "shop/web-b-main: consumed by new-2"]
    assert api.objects[("shop", "web-a-main")]["status"]["consumedBy"] == "new-1"
    assert not m.pending


async def test_control_plane_claim_for_another_pod_is_left_alone() -> None:
    m, api, _ = rig()
    m.armed("cid", W)
    await m.written("cid", ok=True)
    api.objects[("shop", "web-abc-main")]["status"].update(phase="Restoring",
                                                           consumedBy="web-zzz")
    m.started("shop", "web-new", "main", "h1", "fresh",
              f"handover {HANDOVER} withdrawn")
    assert await m.reconcile(NOW) == []
    assert api.objects[("shop", "web-abc-main")]["status"]["phase"] == "Restoring"


async def test_fresh_start_fails_its_claim() -> None:
    m, api, _ = rig()
    m.armed("cid", W)
    await m.written("cid", ok=True)
    api.objects[("shop", "web-abc-main")]["status"].update(phase="Restoring",
                                                           consumedBy="web-new")
    m.started("shop", "web-new", "main", "h1", "fresh",
              f"restore from {HANDOVER} failed: criu")
    assert await m.reconcile(NOW) == ["shop/web-abc-main: failed by web-new",
                                      "dropped outgoing/h1/main/aaaaaaaaaaaa"]
    st = api.objects[("shop", "web-abc-main")]["status"]
    assert st["phase"] == "Failed" and "criu" in st["message"]


def test_node_images_export_survives_the_restore_removing_the_handover(
    tmp_path: Path
) -> None:
    from architect.runtime.shim.plan import READY_MARK
    from architect.runtime.transfer.images import image_ref, outgoing_dir

    d = tmp_path / "handover" / "h1" / "main" / W.slot
    d.mkdir(parents=True)
    (d / "pages-1.img").write_bytes(b"p" * 4096)
    (d / READY_MARK).touch()
    images = NodeImages(tmp_path, NODE)
    assert images.handover_ready("h1", "main", W.slot)
    spec = images.export("h1", "main", W.slot)
    out = outgoing_dir(tmp_path, "h1", "main", spec["digest"])
    assert spec == image_ref(out, spec["location"]).as_spec()
    assert spec["location"] == f"node://node-a/outgoing/h1/main/{out.name}"
    assert (d / "pages-1.img").read_bytes() == b"p" * 4096  # the handover is untouched
    # no snapshot left
    assert [(h, c, g) for h, c, g, _ in images.outgoing()] == [("h1", "main", spec["digest"])]
    # A second replica's handover of the same template: packed beside the first.
    d2 = tmp_path / "handover" / "h1" / "main" / "from_shop_web-def"
    d2.mkdir()
    (d2 / "pages-1.img").write_bytes(b"q" * 4096)
    (d2 / READY_MARK).touch()
    second = images.export("h1", "main", "from_shop_web-def")
    assert second["digest"] != spec["digest"] and out.is_dir()
    assert sorted(g for _, _, g, _ in images.outgoing()) == sorted(
        [spec["digest"], second["digest"]])
    images.drop("h1", "main", spec["digest"])
    assert [g for _, _, g, _ in images.outgoing()] == [second["digest"]]
    images.drop("h1", "main", second["digest"])
    assert images.outgoing() == [] and not (tmp_path / "outgoing" / "h1").exists()



async def test_a_restarted_daemon_removes_what_its_killed_predecessor_half_wrote(
    tmp_path: Path
) -> None:
    """Killed mid-fetch (node B) or mid-pack (node A): the scratch directories
    stay (no except clause ran); the next daemon's recover removes those, and
    only those, before it finishes any handover."""
    from architect.runtime.shim.plan import PENDING_MARK, READY_MARK

    handover = tmp_path / "handover" / "h1" / "main"
    (handover / "to_shop_web-new").mkdir(parents=True)
    # the fetch's mark: a grant seen again refills it
    (handover / "to_shop_web-new" / PENDING_MARK).touch()
    fetch = handover / ".to_shop_web-new.incoming-0a1b2c3d"
    (fetch / "image").mkdir(parents=True)
    (fetch / "image" / "payload.tar.zst").write_bytes(b"x" * 65536)
    older = tmp_path / "handover" / "h1" / ".main.incoming-0a1b2c3d"  # before slots
    older.mkdir()
    ready = tmp_path / "handover" / "h2" / "main" / "from_shop_web-abc"
    ready.mkdir(parents=True)
    (ready / READY_MARK).touch()
    # the shim's, in flight
    shims = tmp_path / "handover" / "h2" / "main" / ".from_shop_web-abc.repack-0a1b2c3d"
    shims.mkdir()
    snap = tmp_path / "outgoing" / ".snap-0a1b2c3d" / "handover" / "h2" / "main"
    snap.mkdir(parents=True)
    export = tmp_path / "outgoing" / "h2" / ".main.export-0a1b2c3d"
    export.mkdir(parents=True)
    packed = tmp_path / "outgoing" / "h3" / "main" / ("c" * 64)
    packed.mkdir(parents=True)
    images = NodeImages(tmp_path, NODE)
    m = Migrations(FakeApi(), images, NODE, JsonStore(tmp_path / "m.json"))
    assert await m.recover() == 0
    assert not fetch.exists() and not older.exists() and not export.exists()
    assert not (tmp_path / "outgoing" / ".snap-0a1b2c3d").exists()
    assert (handover / "to_shop_web-new" / PENDING_MARK).exists()
    assert (ready / READY_MARK).exists()
    assert shims.is_dir() and packed.is_dir()
    assert [(h, c, g) for h, c, g, _ in images.outgoing()] == [("h3", "main", "sha256:" + "c" * 64)]
    assert images.sweep() == []  # nothing left to remove


async def test_recover_sweeps_before_finishing_and_survives_a_failed_sweep(
    tmp_path: Path
) -> None:
    m, api, images = rig(tmp_path)
    m.armed("cid", W)
    m2 = Migrations(api, images, NODE, JsonStore(tmp_path / "m.json"))

    def broken() -> list[str]:
        raise PermissionError("read-only")
    images.sweep = broken  # type: ignore[method-assign]
    assert await m2.recover() == 1  # the handover is finished all the same
    assert api.objects[("shop", "web-abc-main")]["status"]["phase"] == "Ready"


# --- grants (destination) ---------------------------------------------------------

KEY = b"k" * 32


def grant(dest: str = "node-b", expires: float | None = None) -> Grant:
    t = Ticket("shop", "web-abc-main", "u1", DIGEST, 10, NODE, dest, "web-new",
               int(expires if expires is not None else time.time() + 600))
    return Grant("https://127.0.0.1:9447", issue(t, KEY), "h1", "main")


def secret(g: Grant, uid: str = "s1") -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in grant_data(g).items()}
    return {"metadata": {"name": grant_name({"metadata": {"namespace": "shop"}}), "uid": uid,
                         "namespace": "architect-system"}, "data": data}


class GrantRig:
    def __init__(self, *, fetch_error: str = "", handover: bool = True) -> None:
        self.calls: list[str] = []
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.fetch_error = fetch_error
        self.handover = handover
        self.start: tuple[Any, str] | None = None

        async def fetch(g: Grant) -> Path:
            self.calls.append("fetch")
            if self.fetch_error:
                raise TransferError(self.fetch_error)
            return Path("/nonexistent/architect-grant-test")

        async def patch(ns: str, name: str, body: list[dict[str, Any]]) -> Any:
            self.patches.append((name, body))
            return {}

        self.ready = False
        self.grants = Grants(
            "node-b", fetch, patch, lambda h, c, s: self.calls.append(f"pending {h}/{c}/{s}"),
            lambda h, c, s: self.handover, lambda ns, p, c: self.start,
            lambda h, c, s: self.ready,
            lambda h, c, s: self.calls.append(f"discard {h}/{c}/{s}"),
        )

    def phase(self) -> str:
        body = self.patches[-1][1]
        return str(next(op["value"] for op in body if op["path"] == "/status/phase"
                        and op["op"] == "replace"))

    async def finish(self) -> list[str]:
        await asyncio.wait_for(asyncio.gather(*self.grants.tasks), 5)
        return self.grants.results


async def test_grant_marks_pending_first_fetches_and_reports_consumed(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("architect.runtime.daemon.grants.START_GRACE_S", 0.0)
    r = GrantRig(handover=False)  # the shim took the image
    assert r.grants.consider([secret(grant())]) == 1
    assert r.grants.consider([secret(grant())]) == 0  # once per Secret
    assert r.calls[0] == "pending h1/main/to_shop_web-new"  # the replacement's, first
    assert await r.finish() == [r.grants.results[0]]
    assert "consumed by web-new" in r.grants.results[0]
    assert r.patches[0][0] == "web-abc-main" and r.phase() == "Consumed"


async def test_grant_fetched_before_a_restart_is_not_fetched_again() -> None:
    r = GrantRig(handover=True)
    r.ready = True
    r.start = ("restored", "handover checkpoint for h1/main")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.calls == [] and r.phase() == "Consumed"


async def test_grant_start_record_decides() -> None:
    r = GrantRig(handover=True)
    r.start = ("fresh", "scaleup-timeout passed")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Failed" and "started fresh" in r.patches[0][1][4]["value"]
    r = GrantRig(handover=True)
    r.start = ("restored", "handover checkpoint for h1/main")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Consumed"


@pytest.mark.parametrize("before_restart", [False, True])
async def test_an_image_fetched_for_a_fresh_start_is_not_left_ready(before_restart: bool) -> None:
    """The replacement gave up waiting (its daemon was down, or the transfer
    slower than scaleup-timeout) and the image still arrived, now or before this
    daemon restarted: this node's copy goes; a restore keeps it."""
    r = GrantRig(handover=True)
    r.ready = before_restart
    r.start = ("fresh", "scaleup-timeout passed waiting for /s/handover/h1/main")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Failed" and r.calls[-1] == "discard h1/main/to_shop_web-new"
    r = GrantRig(handover=True)
    r.ready = before_restart
    r.start = ("restored", "handover checkpoint for h1/main")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Consumed" and not any(c.startswith("discard") for c in r.calls)


def test_node_images_discard_ready_removes_only_a_ready_handover(tmp_path: Path) -> None:
    from architect.runtime.daemon.migrations import NodeImages
    from architect.runtime.shim.plan import PENDING_MARK, READY_MARK, handover_dir

    d = handover_dir(tmp_path, "h1", "main", "to_shop_web-new")
    d.mkdir(parents=True)
    (d / PENDING_MARK).touch()  # on its way: a fetch still writes it
    images = NodeImages(tmp_path, "node-b")
    assert not images.discard_ready("h1", "main", "to_shop_web-new") and d.exists()
    (d / READY_MARK).touch()
    other = handover_dir(tmp_path, "h1", "side", "to_shop_web-new")
    other.mkdir(parents=True)
    replica = handover_dir(tmp_path, "h1", "main", "to_shop_web-two")
    replica.mkdir(parents=True)
    (replica / READY_MARK).touch()
    assert images.discard_ready("h1", "main", "to_shop_web-new")
    # the pod's other container and another replica's keep their own
    assert not d.exists() and other.exists() and (replica / READY_MARK).exists()


async def test_grant_fetch_failure_reports_retry_or_final() -> None:
    r = GrantRig(fetch_error="transfer of shop/x from https://y failed: Connection refused")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Ready"  # handed back for another try
    r = GrantRig(fetch_error="digest mismatch: got sha256:1, expected sha256:2")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Failed"
    assert "digest mismatch" in r.patches[0][1][4]["value"]


async def test_grant_fetch_failure_after_a_fresh_start_is_final() -> None:
    # The transfer hung past the replacement's scaleup-timeout: it started fresh
    # and will never take the image, so the checkpoint is not handed back.
    r = GrantRig(fetch_error="transfer of shop/x from https://y timed out")
    r.start = ("fresh", "scaleup-timeout passed waiting for /s/handover/h1/main")
    r.grants.consider([secret(grant())])
    await r.finish()
    assert r.phase() == "Failed" and "final" in r.grants.results[0]


async def test_grant_expiring_before_the_restore_hands_back() -> None:
    r = GrantRig(handover=True)
    r.grants.consider([secret(grant(expires=time.time() + 0.6))])
    await r.finish()
    assert r.phase() == "Ready" and "expired" in r.patches[0][1][4]["value"]


async def test_grants_for_other_nodes_and_bad_secrets_are_skipped() -> None:
    r = GrantRig()
    assert r.grants.consider([secret(grant(dest="node-c"), "s2")]) == 0
    bad = {"metadata": {"name": "g", "namespace": "ns", "uid": "s3"}, "data": {"ticket": "!!"}}
    assert r.grants.consider([bad]) == 0
    assert r.calls == [] and r.patches == []
    with pytest.raises(TransferError, match="grant Secret ns/g"):
        decode_grant({"metadata": {"name": "g", "namespace": "ns"}, "data": {}})


# --- flags ----------------------------------------------------------------------


def test_transfer_flags() -> None:
    cfg = parse_args(["--node", "n"], env={})
    assert (cfg.transfer_port, cfg.namespace, cfg.node_cert_dir) == (9447, "architect-system",
                                                                     None)
    cfg = parse_args(["--node", "n", "--transfer-port", "0", "--node-cert-dir", "/etc/x"],
                     env={"ARCHITECT_NAMESPACE": "arch"})
    assert (cfg.transfer_port, cfg.namespace, cfg.node_cert_dir) == (0, "arch", Path("/etc/x"))
    with pytest.raises(UsageError, match="--transfer-port '70000'"):
        parse_args(["--node", "n", "--transfer-port", "70000"], env={})
    with pytest.raises(UsageError, match=r"--transfer-port '1\.5'"):
        parse_args(["--node", "n", "--transfer-port", "1.5"], env={})


# --- through the controller -----------------------------------------------------


async def test_controller_turns_the_shims_events_into_checkpoints() -> None:
    from architect.policy.models import HibernationPolicy, MigrationPolicy
    from architect.runtime.daemon.controller import Controller
    from architect.runtime.daemon.ports import ShimContainer
    from tests.factories import NS, hibernation, migration, pod
    from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

    calls: list[str] = []
    shim, rep = FakeShim(calls), FakeReporter(calls)
    m = Migrations(FakeApi(), FakeImages(), NODE)
    ctl = Controller(shim, FakeNet(calls), rep, clock=Clock(), migrations=m, node=NODE)
    shim.add("web-main-id")
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await ctl.tick([pod(template_hash="h1")], policies)
    await ctl.tick([pod(template_hash="h1", deleting=True)], policies)
    assert m.armed_for("web-main-id") == Written(NS, "web", "main", "h1", NODE)
    # The shim's watch stream reports the handover written.
    shim.events[0]({"event": "migrated", "id": "web-main-id", "image": "/x"})
    await asyncio.wait_for(asyncio.gather(*ctl._tasks), 10)  # the Checkpoint's writes
    fake = m.api
    assert isinstance(fake, FakeApi)
    assert fake.objects[(NS, "web-main")]["status"]["phase"] == "Ready"
    assert ("Normal", "CheckpointCreated") in [(t, r) for t, r, _ in rep.events]
    # The replacement's container was started from the handover: recorded
    # from the shim's status at adoption, then written by the next ticks.
    shim.containers["new-id"] = ShimContainer(
        "new-id", "RUNNING", 7, "/proc/1/ns/net", "/sock/new", "restore",
        "handover checkpoint for h1/main pending")
    new = pod("web-2", template_hash="h1")
    new["status"]["containerStatuses"][0]["containerID"] = "containerd://new-id"
    await ctl.tick([new], policies)
    assert fake.objects[(NS, "web-main")]["status"]["phase"] == "Restoring"
    fake.objects[(NS, "web-main")]["metadata"]["annotations"] = {OBSERVED_PHASE: "Restoring"}
    await ctl.tick([new], policies)
    assert fake.objects[(NS, "web-main")]["status"]["phase"] == "Consumed"
    assert fake.objects[(NS, "web-main")]["status"]["consumedBy"] == "web-2"


async def test_a_replacement_that_started_fresh_gets_an_event_saying_why() -> None:
    """The shim could not restore the handover (a flipped byte, say): the pod's
    Events say so, whether or not the daemon had claimed the Checkpoint yet."""
    from architect.policy.models import HibernationPolicy, MigrationPolicy
    from architect.runtime.daemon.controller import Controller
    from architect.runtime.daemon.ports import ShimContainer
    from tests.factories import hibernation, migration, pod
    from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

    calls: list[str] = []
    shim, rep = FakeShim(calls), FakeReporter(calls)
    ctl = Controller(shim, FakeNet(calls), rep, clock=Clock(),
                     migrations=Migrations(FakeApi(), FakeImages(), NODE), node=NODE)
    why = "restore from /var/lib/architect/shim/handover/h1/main failed: digest mismatch"
    shim.containers["new-id"] = ShimContainer(
        "new-id", "RUNNING", 7, "/proc/1/ns/net", "/sock/new", "fresh", why)
    new = pod("web-2", template_hash="h1")
    new["status"]["containerStatuses"][0]["containerID"] = "containerd://new-id"
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await ctl.tick([new], policies)
    fresh = [(t, m) for t, r, m in rep.events if r == "StartedFresh"]
    assert len(fresh) == 1 and fresh[0][0] == "Warning" and "digest mismatch" in fresh[0][1]
    await ctl.tick([new], policies)
    assert len([r for _, r, _ in rep.events if r == "StartedFresh"]) == 1  # once


# --- a replacement on another node than the source: incoming_handover ------------


def _ck(phase: str | None, *, node: str = "node-a", by: str = "", thash: str = "h1",
        pod: str = "web-old") -> dict[str, Any]:
    c: dict[str, Any] = {
        "metadata": {"namespace": "shop", "name": f"{pod}-main"},
        "spec": {"templateHash": thash, "container": "main", "sourcePod": pod,
                 "sourceNode": node},
    }
    if phase is not None:
        c["status"] = {"phase": phase, "consumedBy": by}
    return c


def _pod(name: str, node: str, *, deleting: bool = True, thash: str = "h1") -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "shop", "name": name,
                            "annotations": {TEMPLATE_HASH_LABEL: thash}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "main"}]}}


def _incoming(cks: list[dict[str, Any]], pods: list[dict[str, Any]]) -> str | None:
    return incoming_handover(cks, pods, namespace="shop", template_hash="h1",
                             container="main", pod="web-new", node="node-b")


@pytest.mark.parametrize(("ck", "coming"), [
    (_ck(None), True),  # just created: Pending
    (_ck("Ready"), True),
    (_ck("Restoring", by="web-new"), True),
    (_ck("Restoring", by="web-other"), False),  # another replacement's
    (_ck("Consumed", by="web-other"), False),
    (_ck("Failed"), False),
    (_ck("Ready", node="node-b"), False),  # this node's own: its shim has the handover
    (_ck("Ready", thash="h2"), False),
    (_ck("Ready", pod="web-new"), False),
])
def test_incoming_handover_from_checkpoints(ck: dict[str, Any], coming: bool) -> None:
    assert (_incoming([ck], []) is not None) is coming


def test_incoming_handover_from_a_pod_being_deleted_on_another_node() -> None:
    what = _incoming([], [_pod("web-old", "node-a")])
    assert what == "pod shop/web-old being deleted on node-a"
    assert _incoming([], [_pod("web-old", "node-a", deleting=False)]) is None
    assert _incoming([], [_pod("web-old", "node-b")]) is None  # this node marks its own
    assert _incoming([], [_pod("web-old", "node-a", thash="h2")]) is None
    assert _incoming([], [_pod("web-new", "node-a")]) is None


def _rig_b() -> tuple[Any, Any, Any, Any]:
    from architect.runtime.daemon.controller import Controller
    from tests.runtime.daemon.fakes import Clock, FakeNet, FakeReporter, FakeShim

    calls: list[str] = []
    shim, rep, api = FakeShim(calls), FakeReporter(calls), FakeApi()
    ctl = Controller(shim, FakeNet(calls), rep, clock=Clock(),
                     migrations=Migrations(api, FakeImages(), "node-b"), node="node-b")
    return ctl, shim, rep, api


async def test_a_replacement_of_a_pod_draining_elsewhere_is_marked_pending_before_its_create(
) -> None:
    """Node B's replacement appears while node A's pod still checkpoints (no
    Checkpoint, no grant yet): its handover is marked pending at once, so its
    Create waits; once it started from it, its slot is cleared (the restore took
    the image: nothing left there) and no StartedFresh."""
    from architect.policy.models import HibernationPolicy, MigrationPolicy
    from architect.runtime.daemon.ports import ShimContainer
    from tests.factories import hibernation, migration, pod

    ctl, shim, rep, api = _rig_b()
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    old = pod("web-1", template_hash="h1", deleting=True)
    old["spec"]["nodeName"] = "node-a"
    api.pods = [old]
    new = pod("web-2", template_hash="h1", started=False)
    await ctl.tick([new], policies)
    await ctl.tick([new], policies)
    assert api.calls.count("of-template shop h1") == 1  # asked once
    assert shim.calls == ["shim.pending h1/main/to_shop_web-2"]  # its own slot
    shim.containers["new-id"] = ShimContainer(
        "new-id", "RUNNING", 7, "/proc/1/ns/net", "/sock/new", "restore",
        "handover checkpoint for h1/main pending")
    started = pod("web-2", template_hash="h1")
    started["status"]["containerStatuses"][0]["containerID"] = "containerd://new-id"
    await ctl.tick([started], policies)
    assert [c for c in shim.calls if "pending" in c] == [
        "shim.pending h1/main/to_shop_web-2", "shim.clear-pending h1/main/to_shop_web-2"]
    assert "StartedFresh" not in [r for _, r, _ in rep.events]


async def test_an_expected_handover_that_never_came_is_a_fresh_start_with_an_event() -> None:
    """The transfer failed before the replacement's Create looked (the mark was
    withdrawn): a StartedFresh Event all the same, and no mark left for the next."""
    from architect.policy.models import HibernationPolicy, MigrationPolicy
    from architect.runtime.daemon.ports import ShimContainer
    from tests.factories import hibernation, migration, pod

    ctl, shim, rep, api = _rig_b()
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    ck = checkpoint_body(Written("shop", "web-1", "main", "h1", "node-a"), IMAGE)
    ck["status"] = {"phase": "Ready"}
    api.objects[("shop", "web-1-main")] = ck
    await ctl.tick([pod("web-2", template_hash="h1", started=False)], policies)
    assert "shim.pending h1/main/to_shop_web-2" in shim.calls
    shim.containers["new-id"] = ShimContainer(
        "new-id", "RUNNING", 7, "/proc/1/ns/net", "/sock/new", "fresh",
        "no checkpoint for h1/main")
    started = pod("web-2", template_hash="h1")
    started["status"]["containerStatuses"][0]["containerID"] = "containerd://new-id"
    await ctl.tick([started], policies)
    fresh = [m for _, r, m in rep.events if r == "StartedFresh"]
    assert len(fresh) == 1 and "Checkpoint shop/web-1-main Ready on node-a" in fresh[0], fresh
    assert "shim.clear-pending h1/main/to_shop_web-2" in shim.calls
    assert not ctl._marked  # forgotten with the start, expected or not


async def test_no_migration_elsewhere_marked_first_then_nothing_coming() -> None:
    """The mark comes before the API's answer (the Create may look first); the
    answer is nothing: the slot says so, a waiting Create starts fresh at once."""
    from architect.policy.models import HibernationPolicy, MigrationPolicy
    from tests.factories import hibernation, migration, pod

    ctl, shim, _, api = _rig_b()
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    await ctl.tick([pod("web-2", template_hash="h1", started=False)], policies)
    await ctl.tick([pod("web-2", template_hash="h1", started=False)], [hibernation()])
    assert api.calls == ["of-template shop h1"]
    assert shim.calls == ["shim.pending h1/main/to_shop_web-2", "shim.nothing h1/main/to_shop_web-2"]
    # An API error: asked again at the next tick.
    ctl2, _, _, api2 = _rig_b()
    api2.fail_create = True
    await ctl2.tick([pod("web-2", template_hash="h1", started=False)], policies)
    api2.fail_create = False
    await ctl2.tick([pod("web-2", template_hash="h1", started=False)], policies)
    assert api2.calls.count("of-template shop h1") == 2


# --- the source's handover once another node restored it: moved_handovers ---------


def _consumed(dest: str, digest: str = "sha256:d1", phase: str = "Consumed") -> dict[str, Any]:
    from architect.policy.annotations import DESTINATION_ANNOTATION

    body = checkpoint_body(W, IMAGE, digest)
    body["metadata"].setdefault("annotations", {})[DESTINATION_ANNOTATION] = dest
    body["status"] = {"phase": phase, "consumedBy": "web-new"}
    return body


@pytest.mark.parametrize(("ck", "moved"), [
    (_consumed("node-b"), [("h1", "main", "from_shop_web-abc", "sha256:d1")]),
    (_consumed(NODE), []),  # restored on this node: the shim removed it itself
    (_consumed("node-b", phase="Restoring"), []),  # not yet: a failed fetch retries
    (_consumed("node-b", phase="Failed"), []),
    (_consumed("node-b", digest=""), []),  # made by an older daemon: unknown image
])
def test_moved_handovers(ck: dict[str, Any], moved: list[tuple[str, str, str, str]]) -> None:
    from architect.runtime.daemon.checkpointobjects import moved_handovers

    assert moved_handovers([ck], node=NODE) == moved


async def test_a_handover_restored_on_another_node_is_dropped_here_once() -> None:
    """Its state runs on node B now: a later pod of the template on this node
    must not restore it again (two copies of one counter). A newer pod's
    handover in the same directory is kept."""
    from architect.runtime.daemon.checkpointobjects import HANDOVER_DIGEST

    m, api, images = rig()
    images.handovers[("h1", "main", W.slot)] = "sha256:d1"
    m.armed("cid", W)
    await m.written("cid", ok=True)
    obj = api.objects[("shop", "web-abc-main")]
    assert obj["metadata"]["annotations"][HANDOVER_DIGEST] == "sha256:d1"
    api.objects[("shop", "web-abc-main")] = _consumed("node-b")
    assert (f"dropped handover/h1/main/{W.slot}: restored on another node"
            in await m.reconcile(datetime(2026, 11, 23, 12, tzinfo=UTC)))
    assert ("h1", "main", W.slot) not in images.handovers
    images.handovers[("h1", "main", W.slot)] = "sha256:d2"  # not the image that moved
    await m.reconcile(datetime(2026, 11, 23, 12, tzinfo=UTC))
    assert images.handovers[("h1", "main", W.slot)] == "sha256:d2"


def test_node_images_drop_handover_only_the_same_image(tmp_path: Path) -> None:
    from architect.runtime.shim.plan import READY_MARK

    d = tmp_path / "handover" / "h1" / "main" / W.slot
    d.mkdir(parents=True)
    (d / "manifest.json").write_text('{"v": 1}')
    (d / READY_MARK).touch()
    images = NodeImages(tmp_path, NODE)
    digest = images.handover_digest("h1", "main", W.slot)
    assert digest is not None and digest.startswith("sha256:")
    assert not images.drop_handover("h1", "main", W.slot, "sha256:other") and d.exists()
    assert images.drop_handover("h1", "main", W.slot, digest)
    assert not (tmp_path / "handover" / "h1").exists()
    assert images.handover_digest("h1", "main", W.slot) is None
