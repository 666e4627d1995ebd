"""One replacement restores one Checkpoint: only the one whose image it took is
Consumed, any other claimed for it is handed back (the destination's grants and
the source node's own reports); and a handover a local replacement claimed but
never restored (its pod went first) is released, not kept forever."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane.transfer import Grant, Ticket, grant_data, issue
from architect.runtime.daemon.checkpointobjects import (
    CLAIM_GRACE_S,
    UNNAMED_CLAIM,
    Written,
    checkpoint_body,
    claimant_gone,
    stale_claim_candidates,
    taken_handover,
    taken_slot,
    what_was_taken,
)
from architect.runtime.daemon.grants import Grants
from architect.runtime.daemon.migrations import Migrations, NodeImages
from tests.runtime.daemon.fakes import IMAGE, FakeApi, FakeImages

NODE = "node-a"
DIGEST = "sha256:" + "a" * 64
KEY = b"k" * 32


def ticket_grant(checkpoint: str, pod: str = "web-new") -> Grant:
    t = Ticket("shop", checkpoint, "u-" + checkpoint, DIGEST, 10, "node-a", "node-b", pod,
               int(time.time() + 600))
    return Grant("https://127.0.0.1:9447", issue(t, KEY), "h1", "main")


def secret(g: Grant, uid: str) -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in grant_data(g).items()}
    return {"metadata": {"name": "g-" + uid, "uid": uid, "namespace": "architect-system"},
            "data": data}


class Rig:
    """A destination node (node-b): the fetch, the status writes, the start record."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.start: tuple[Any, str] | None = None

        async def fetch(g: Grant) -> Path:
            self.calls.append(f"fetch {g.ticket.name}")
            await asyncio.sleep(0.05)
            return Path("/nonexistent/architect-grant-test")

        async def patch(ns: str, name: str, body: list[dict[str, Any]]) -> Any:
            self.patches.append((name, body))
            return {}

        self.grants = Grants(
            "node-b", fetch, patch, lambda h, c, s: self.calls.append(f"pending {s}"),
            lambda h, c, s: True, lambda ns, p, c: self.start, lambda h, c, s: False,
            lambda h, c, s: self.calls.append(f"discard {s}"),
        )

    def outcome(self, name: str) -> tuple[str, str]:
        body = next(b for n, b in self.patches if n == name)
        ops = {op["path"]: op["value"] for op in body if op["op"] == "replace"}
        return str(ops["/status/phase"]), str(ops["/status/message"])

    async def finish(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.grants.tasks), 5)


RESTORED_FETCHED = "handover checkpoint for h1/main [to_shop_web-new]"


async def test_two_grants_for_one_pod_fetch_once_and_only_the_taken_one_is_consumed() -> None:
    """Two Checkpoints claimed for one replacement (the control plane's snapshot
    behind its own claim): they share its slot, so the second neither fetches
    over the first nor is Consumed; it is handed back naming the one taken."""
    r = Rig()
    r.start = ("restored", RESTORED_FETCHED)
    assert r.grants.consider([secret(ticket_grant("web-a-main"), "s1"),
                              secret(ticket_grant("web-b-main"), "s2")]) == 2
    await r.finish()
    assert [c for c in r.calls if c.startswith("fetch")] == ["fetch web-a-main"]
    assert r.outcome("web-a-main")[0] == "Consumed"
    phase, message = r.outcome("web-b-main")
    assert phase == "Ready", message  # for another replacement
    assert "Checkpoint shop/web-a-main" in message and "handed back" in message
    assert "/status/transfer" in [op["path"] for _, b in r.patches for op in b]


async def test_a_second_grant_after_a_fresh_start_is_handed_back_not_failed() -> None:
    r = Rig()
    r.start = ("fresh", "scaleup-timeout passed waiting for /s/handover/h1/main/to_shop_web-new")
    r.grants.consider([secret(ticket_grant("web-a-main"), "s1"),
                       secret(ticket_grant("web-b-main"), "s2")])
    await r.finish()
    assert r.outcome("web-a-main")[0] == "Failed"  # its own: state older than what ran
    phase, message = r.outcome("web-b-main")
    assert phase == "Ready" and "started fresh" in message
    assert [c for c in r.calls if c.startswith("fetch")] == ["fetch web-a-main"]


async def test_a_grant_arriving_after_its_pod_started_marks_no_slot() -> None:
    r = Rig()
    r.start = ("restored", RESTORED_FETCHED)
    r.grants.consider([secret(ticket_grant("web-a-main"), "s1")])
    await r.finish()
    r.grants.consider([secret(ticket_grant("web-b-main"), "s2")])
    await r.finish()
    assert r.calls.count("pending to_shop_web-new") == 1  # no mark outliving the pod
    assert r.outcome("web-b-main")[0] == "Ready"


async def test_a_grant_whose_pod_took_a_local_handover_is_handed_back_and_its_copy_goes(
) -> None:
    """The slot was still pending when the Create looked, and a pod of the template
    deleted on this node had left a handover (plan.claim_local goes first)."""
    r = Rig()
    r.start = ("restored", "handover checkpoint for h1/main [from_shop_web-old]")
    r.grants.consider([secret(ticket_grant("web-a-main"), "s1")])
    await r.finish()
    phase, message = r.outcome("web-a-main")
    assert phase == "Ready", message
    assert "Checkpoint shop/web-old-main" in message
    assert "discard to_shop_web-new" in r.calls  # fetched for nobody now


def test_the_taken_handover_is_named_by_the_start_reason() -> None:
    assert taken_handover(RESTORED_FETCHED) == "to_shop_web-new"
    assert taken_slot(RESTORED_FETCHED) == ""  # not a local one
    assert taken_handover("handover checkpoint for h1/main [from_shop_web-1] pending") == \
        "from_shop_web-1"
    assert taken_handover("handover checkpoint for h1/main") == ""  # an older shim's
    assert what_was_taken("shop", "main", "from_shop_web-1").startswith(
        "Checkpoint shop/web-1-main")
    assert "fetched" in what_was_taken("shop", "main", "to_shop_web-new")


# --- the same node: the Checkpoints of this node -----------------------------------


def time_now() -> datetime:
    return datetime.now(UTC)


def local_ck(source_pod: str, phase: str, consumed_by: str = "") -> dict[str, Any]:
    body = checkpoint_body(Written("shop", source_pod, "main", "h1", NODE), IMAGE)
    body["metadata"].update(creationTimestamp="2026-11-23T11:59:00Z", uid="u-" + source_pod,
                            annotations={})
    body["status"] = {"phase": phase, "consumedBy": consumed_by}
    return body


def migrations(*cks: dict[str, Any]) -> tuple[Migrations, FakeApi, FakeImages]:
    api, images = FakeApi(), FakeImages()
    for c in cks:
        api.objects[("shop", c["metadata"]["name"])] = c
    images.handovers = {}
    return Migrations(api, images, NODE), api, images


def status(api: FakeApi, name: str) -> dict[str, Any]:
    return dict(api.objects[("shop", name)]["status"])


async def test_a_second_local_checkpoint_claimed_for_the_pod_is_handed_back() -> None:
    m, api, images = migrations(local_ck("web-1", "Ready"),
                                local_ck("web-2", "Restoring", "web-new"))
    images.handovers[("h1", "main", "from_shop_web-2")] = "sha256:d2"  # still here, free
    m.started("shop", "web-new", "main", "h1", "restore",
              "handover checkpoint for h1/main [from_shop_web-1]")
    await m.reconcile(time_now())
    assert status(api, "web-1-main")["consumedBy"] == "web-new"  # the one it took
    other = status(api, "web-2-main")
    assert other["phase"] == "Ready" and other["consumedBy"] == ""
    assert "Checkpoint shop/web-1-main" in other["message"]


async def test_a_claimed_checkpoint_whose_handover_another_pod_took_is_not_handed_back(
) -> None:
    """Its handover is gone or claimed by another local replacement: that pod
    claims it (report_outcome's reclaim); Ready it could go to a third pod."""
    m, api, images = migrations(local_ck("web-1", "Ready"),
                                local_ck("web-2", "Restoring", "web-new"))
    images.handovers[("h1", "main", "from_shop_web-2")] = "sha256:d2"
    images.claims[("h1", "main", "from_shop_web-2")] = "web-other"
    m.started("shop", "web-new", "main", "h1", "restore",
              "handover checkpoint for h1/main [from_shop_web-1]")
    await m.reconcile(time_now())
    assert status(api, "web-2-main")["phase"] == "Restoring"
    del images.handovers[("h1", "main", "from_shop_web-2")]  # taken and removed
    await m.reconcile(time_now())
    assert status(api, "web-2-main")["phase"] == "Restoring"


async def test_a_pod_restored_from_its_fetched_image_takes_no_local_checkpoint() -> None:
    """It restored from the image a grant fetched for it ([to_*]): a Ready
    Checkpoint of this node is not its, and one claimed for it goes back."""
    m, api, images = migrations(local_ck("web-1", "Ready"),
                                local_ck("web-2", "Restoring", "web-new"))
    images.handovers[("h1", "main", "from_shop_web-1")] = "sha256:d1"
    images.handovers[("h1", "main", "from_shop_web-2")] = "sha256:d2"
    m.started("shop", "web-new", "main", "h1", "restore", RESTORED_FETCHED)
    await m.reconcile(time_now())
    assert status(api, "web-1-main") == {"phase": "Ready", "consumedBy": ""}
    assert status(api, "web-2-main")["phase"] == "Ready"
    assert "fetched" in status(api, "web-2-main")["message"]
    assert ("shop", "web-new", "main") in m.pending  # the grant reads it (start_of)


# --- a claim whose pod went before it restored -----------------------------------


def claimant(name: str, *, node: str = NODE, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "main"}]}}


SLOT = ("h1", "main", "from_shop_web-1")


def claimed_rig(age: float, claimed_by: str = "web-2",
                *cks: dict[str, Any]) -> tuple[Migrations, FakeApi, FakeImages]:
    m, api, images = migrations(*cks)
    images.handovers[SLOT] = "sha256:d1"
    images.ages[SLOT] = age
    images.claims[SLOT] = claimed_by
    images.claim_ages[SLOT] = age
    return m, api, images


async def test_a_claim_whose_pod_is_gone_is_released_and_the_handover_withdrawn() -> None:
    m, _, images = claimed_rig(CLAIM_GRACE_S + 1)
    done = await m.reconcile(time_now())
    assert ("released", "h1/main/from_shop_web-1") in images.dropped
    # Nothing names it any more: withdrawn in the same pass.
    assert ("withdrawn", "h1/main/from_shop_web-1") in images.dropped
    assert any("pod shop/web-2 is gone" in d for d in done), done


async def test_a_released_claim_keeps_a_handover_a_live_checkpoint_names() -> None:
    m, api, images = claimed_rig(CLAIM_GRACE_S + 1, "web-2", local_ck("web-1", "Ready"))
    api.pods = [claimant("web-2", deleting=True)]
    await m.reconcile(time_now())
    assert SLOT not in images.claims and SLOT in images.handovers  # takeable again


@pytest.mark.parametrize("pods, age, who", [
    ([claimant("web-2")], CLAIM_GRACE_S + 1, "web-2"),  # it exists here: starting
    ([], CLAIM_GRACE_S - 1, "web-2"),  # too recent to look
    ([], CLAIM_GRACE_S + 999, UNNAMED_CLAIM),  # nobody's name: left
])
async def test_a_claim_is_kept_while_its_pod_may_restore(
    pods: list[dict[str, Any]], age: float, who: str
) -> None:
    m, api, images = claimed_rig(age, who)
    api.pods = pods
    await m.reconcile(time_now())
    assert images.claims.get(SLOT) == who and SLOT in images.handovers


async def test_a_claimant_is_looked_up_once_a_grace() -> None:
    m, api, images = claimed_rig(CLAIM_GRACE_S + 1)
    api.pods = [claimant("web-2")]
    for _ in range(3):
        await m.reconcile(time_now())
    assert api.calls.count("of-template shop h1") == 1
    api.fail_create = True  # an API error: kept, tried after the grace
    m.claims_checked.clear()
    await m.reconcile(time_now())
    assert images.claims.get(SLOT) == "web-2"


def test_claimant_gone_and_candidates() -> None:
    assert claimant_gone([], namespace="shop", pod="p", node=NODE) == "pod shop/p is gone"
    assert claimant_gone([claimant("p")], namespace="shop", pod="p", node=NODE) is None
    unbound = claimant("p", node="")
    assert claimant_gone([unbound], namespace="shop", pod="p", node=NODE) is None
    assert "node-b" in str(claimant_gone([claimant("p", node="node-b")], namespace="shop",
                                         pod="p", node=NODE))
    assert "being deleted" in str(claimant_gone([claimant("p", deleting=True)],
                                                namespace="shop", pod="p", node=NODE))


def test_node_images_report_claim_age_and_release_only_the_named_claim(tmp_path: Path) -> None:
    from architect.runtime.shim import plan

    d = plan.handover_dir(tmp_path, *SLOT)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{}")
    (d / plan.READY_MARK).touch()
    images = NodeImages(tmp_path, NODE)
    assert plan.claim_slot(d, "web-2")
    old = time.time() - 120
    os.utime(d / plan.CLAIMED_MARK, (old, old))
    [s] = images.ready_handovers()
    assert s.claimed_by == "web-2" and s.claimed_age_s >= 119
    assert [x.slot for x in stale_claim_candidates([s])] == ["from_shop_web-1"]
    assert not images.release_claim(*SLOT, "web-3") and (d / plan.CLAIMED_MARK).exists()
    assert images.release_claim(*SLOT, "web-2") and not (d / plan.CLAIMED_MARK).exists()
    assert plan.claim_slot(d, "web-3")  # takeable again
    (d / plan.CLAIMED_MARK).write_text("")  # an empty mark: nobody's
    [s] = images.ready_handovers()
    assert s.claimed_by == UNNAMED_CLAIM and not stale_claim_candidates([s])
