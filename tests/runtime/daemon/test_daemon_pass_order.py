"""The order of one daemon pass (controller.tick) that a same-node migration of two
replicas depends on (commit 1f66230): the pass's "nothing comes" marks are written
after its actions, so migrate() has marked a deleted pod's own handover slot
pending before a replacement of the same template on this node is told nothing
comes from another node. Its shim, on "nothing", plans once more and finds that
local handover on its way; the other order leaves it nothing to find (kuttl
migrate-two-replicas: a replacement started fresh, RUNNING without its state)."""

from __future__ import annotations

from architect.policy.models import HibernationPolicy, MigrationPolicy
from architect.runtime.daemon.controller import Controller
from architect.runtime.daemon.migrations import Migrations
from tests.factories import hibernation, migration, pod
from tests.runtime.daemon.fakes import Clock, FakeApi, FakeImages, FakeNet, FakeReporter, FakeShim


async def test_nothing_marks_of_a_pass_follow_its_migrate_marks() -> None:
    calls: list[str] = []
    shim = FakeShim(calls)
    ctl = Controller(shim, FakeNet(calls), FakeReporter(calls), clock=Clock(),
                     migrations=Migrations(FakeApi(), FakeImages(), "node-a"), node="node-a")
    policies: list[HibernationPolicy | MigrationPolicy] = [hibernation(), migration()]
    shim.add("web-main-id")
    old = pod("web", template_hash="h1")
    await ctl.tick([old], policies)  # adopted, running
    calls.clear()
    # One pass: the replica is deleted here and its replacement appears here, no
    # other node migrating anything (the API says nothing comes to web-2).
    deleting = pod("web", template_hash="h1", deleting=True)
    new = pod("web-2", template_hash="h1", started=False)
    await ctl.tick([deleting, new], policies)
    marks = [c for c in calls if c.startswith(("shim.pending", "shim.nothing"))]
    assert marks == [
        "shim.pending h1/main/to_shop_web-2",  # its own slot, before asking the API
        "shim.pending h1/main/from_shop_web",  # migrate(): the deleted pod's slot
        "shim.nothing h1/main/to_shop_web-2",  # after the pass's actions
    ], marks
    assert calls.index("shim.migrate-on-stop web-main-id True") < calls.index(
        "shim.nothing h1/main/to_shop_web-2")
