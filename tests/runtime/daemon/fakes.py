"""Fakes of the daemon's ports, all writing to one shared call log so tests can
assert ordering (hold before hibernate, wake before release), and of the
Checkpoint API and node images ``Migrations`` uses. mypy holds each fake to the
protocol it stands in for (see the end)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from architect.engine.controlplane.transfer import TransferError
from architect.engine.directives import ResizeTarget
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.runtime.daemon.checkpointobjects import WITHDRAW_CLAIM, HandoverSlot
from architect.runtime.daemon.migrations import NamespaceGone
from architect.runtime.daemon.ports import Activity, EventFn, ShimContainer, ShimError, WakeFn
from architect.runtime.daemon.targets import Target

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# The spec.image FakeImages.export packs.
IMAGE: dict[str, Any] = {"location": "node://node-a/outgoing/h1/main", "digest": "sha256:" + "a" * 64,
         "sizeBytes": 10}


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeShim:
    calls: list[str]
    containers: dict[str, ShimContainer] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)  # ops that raise ShimError
    wake_delay: float = 0.0
    events: list[EventFn] = field(default_factory=list)

    def add(self, cid: str, status: str = "RUNNING", netns: str | None = "/proc/1/ns/net") -> None:
        self.containers[cid] = ShimContainer(cid, status, 100, netns, f"/sock/{cid[:4]}")

    waits: dict[tuple[str, str, str], str] = field(default_factory=dict)

    async def find(self, container_id: str) -> ShimContainer | None:
        return self.containers.get(container_id)

    def waiting(self, namespace: str, pod: str, container: str) -> str | None:
        return self.waits.get((namespace, pod, container))

    async def held(self, container_id: str) -> None:
        self.calls.append(f"shim.held {container_id}")
        if "held" in self.fail:
            raise ShimError("no such container")

    async def hibernate(self, container_id: str) -> float:
        self.calls.append(f"shim.hibernate {container_id}")
        if "hibernate" in self.fail:
            raise ShimError("criu dump failed")
        c = self.containers[container_id]
        self.containers[container_id] = ShimContainer(c.id, "SCALED_DOWN", 0, c.netns, c.socket)
        return 0.4

    async def wake(self, container_id: str) -> float:
        self.calls.append(f"shim.wake {container_id}")
        if self.wake_delay:
            await asyncio.sleep(self.wake_delay)
        if "wake" in self.fail:
            raise ShimError("criu restore failed")
        c = self.containers[container_id]
        self.containers[container_id] = ShimContainer(c.id, "RUNNING", 101, c.netns, c.socket)
        return 0.3

    async def migrate_on_stop(self, container_id: str, enabled: bool) -> None:
        self.calls.append(f"shim.migrate-on-stop {container_id} {enabled}")
        if "migrate" in self.fail:
            raise ShimError("no such container")

    async def expect_migration(self, container_id: str) -> None:
        self.calls.append(f"shim.expect-migration {container_id}")
        if "expect" in self.fail:
            raise ShimError("no such container")

    async def mark_pending(self, template_hash: str, container: str, slot: str) -> None:
        self.calls.append(f"shim.pending {template_hash}/{container}/{slot}")

    async def nothing_coming(self, template_hash: str, container: str, slot: str) -> None:
        self.calls.append(f"shim.nothing {template_hash}/{container}/{slot}")

    async def clear_pending(self, template_hash: str, container: str, slot: str) -> None:
        self.calls.append(f"shim.clear-pending {template_hash}/{container}/{slot}")

    def watch(self, socket: str, on_event: EventFn) -> None:
        if on_event not in self.events:
            self.events.append(on_event)

    async def close(self) -> None:
        pass


@dataclass
class FakeNet:
    calls: list[str]
    activity: dict[ContainerKey, Activity] = field(default_factory=dict)
    wakes: dict[ContainerKey, WakeFn] = field(default_factory=dict)
    fail_hold: bool = False
    setups: list[Target] = field(default_factory=list)

    async def setup(self, target: Target, netns: str) -> None:
        self.calls.append(f"net.setup {target.key.container} {netns}")
        self.setups.append(target)

    async def hold(self, key: ContainerKey, wake: WakeFn) -> None:
        self.calls.append(f"net.hold {key.container}")
        if self.fail_hold:
            raise OSError("NFQUEUE 0 busy")
        self.wakes[key] = wake

    async def after_checkpoint(self, key: ContainerKey) -> None:
        self.calls.append(f"net.hold-first {key.container}")

    async def release(self, key: ContainerKey) -> None:
        self.calls.append(f"net.release {key.container}")
        self.wakes.pop(key, None)

    async def teardown(self, key: ContainerKey) -> None:
        self.calls.append(f"net.teardown {key.container}")

    async def sweep(self, netns: str, index: int) -> list[str]:
        self.calls.append(f"net.sweep {netns} c{index}")
        return [f"ARCHITECT-HOLD-c{index}"]

    def sample(self, key: ContainerKey, now: datetime) -> Activity | None:
        return self.activity.get(key)

    async def first_packet(self, key: ContainerKey) -> None:
        """What PacketHold does: call the wake, release once it returns or fails."""
        wake = self.wakes[key]
        try:
            await wake()
        finally:
            self.calls.append(f"hold.released {key.container}")


@dataclass
class FakeReporter:
    calls: list[str]
    statuses: list[dict[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    fail_status: bool = False
    fail_resize: bool = False

    async def set_status(self, pod: Mapping[str, Any], states: Mapping[str, ContainerState]) -> None:
        if self.fail_status:
            raise OSError("API server unreachable")
        self.statuses.append({k: v.value for k, v in states.items()})
        self.calls.append("status " + ",".join(f"{k}={v.value}" for k, v in sorted(states.items())))

    async def event(self, pod: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        self.events.append((etype, reason, message))

    async def resize(
        self, pod: Mapping[str, Any], container: str, to: ResizeTarget, original: Mapping[str, str]
    ) -> None:
        self.calls.append(f"resize {container} {to.value} {dict(original)}")
        if self.fail_resize:
            raise OSError("pods/resize: 403")


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail_create = False
        self.gone: set[str] = set()  # namespaces deleted meanwhile
        self.pods: list[dict[str, Any]] = []  # other nodes' pods, for of_template

    async def create_checkpoint(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        if self.fail_create:
            raise OSError("API server unreachable")
        if body["metadata"]["namespace"] in self.gone:
            raise NamespaceGone(f"namespace {body['metadata']['namespace']}: Not Found")
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.calls.append(f"create {key[1]}")
        if key in self.objects:
            return None
        obj = {**dict(body), "metadata": {**body["metadata"], "creationTimestamp":
                                          "2026-11-23T11:59:00Z", "uid": "u1"}}
        self.objects[key] = obj
        return obj

    async def get_checkpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    async def patch_checkpoint_status(
        self, namespace: str, name: str, patch: Any
    ) -> dict[str, Any] | None:
        obj = self.objects.get((namespace, name))
        if obj is None:
            return None
        status = obj.setdefault("status", {})
        if isinstance(patch, dict):
            status.update(patch["status"])
            self.calls.append(f"status {name} {status['phase']}")
            return obj
        for op in patch:  # enough of RFC 6902 for these patches
            field = op["path"].rsplit("/", 1)[1]
            if op["op"] == "test" and status.get(field, "") != op["value"]:
                self.calls.append(f"status {name} conflict")
                return None
        for op in patch:
            if op["op"] in ("replace", "add"):
                status[op["path"].rsplit("/", 1)[1]] = op["value"]
        self.calls.append(f"status {name} {status['phase']}")
        return obj

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    async def of_template(
        self, namespace: str, template_hash: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.calls.append(f"of-template {namespace} {template_hash}")
        if self.fail_create:
            raise OSError("API server unreachable")
        cks = [o for o in self.objects.values() if o["metadata"]["namespace"] == namespace
               and o["spec"].get("templateHash") == template_hash]
        pods = [p for p in self.pods if p["metadata"]["namespace"] == namespace]
        return cks, pods


class FakeImages:
    def __init__(self) -> None:
        self.fail: str = ""
        self.ready = True
        self.packed: list[tuple[str, str, str, float]] = []
        self.dropped: list[tuple[str, ...]] = []
        self.digest = IMAGE["digest"]  # of the next image export packs
        self.handovers: dict[tuple[str, str, str], str] = {}  # ready handover -> digest
        self.ages: dict[tuple[str, str, str], float] = {}  # seconds ready (default 0)
        self.claims: dict[tuple[str, str, str], str] = {}  # its claimed mark
        self.claim_ages: dict[tuple[str, str, str], float] = {}  # seconds claimed (default 0)
        self.swept = 0

    def export(self, template_hash: str, container: str, slot: str) -> dict[str, Any]:
        if self.fail:
            raise TransferError(self.fail)
        self.packed.append((template_hash, container, self.digest, 1.0))
        return {**IMAGE, "digest": self.digest}

    def handover_ready(self, template_hash: str, container: str, slot: str) -> bool:
        return self.ready

    def outgoing(self) -> list[tuple[str, str, str, float]]:
        return list(self.packed)

    def drop(self, template_hash: str, container: str, digest: str) -> None:
        self.dropped.append((template_hash, container, digest))
        self.packed = [p for p in self.packed if p[:3] != (template_hash, container, digest)]

    def handover_digest(self, template_hash: str, container: str, slot: str) -> str | None:
        return self.handovers.get((template_hash, container, slot))

    def drop_handover(self, template_hash: str, container: str, slot: str, digest: str) -> bool:
        if self.handovers.get((template_hash, container, slot)) != digest:
            return False
        del self.handovers[(template_hash, container, slot)]
        self.dropped.append(("handover", f"{template_hash}/{container}/{slot}"))
        return True

    def discard_ready(self, template_hash: str, container: str, slot: str) -> bool:
        if self.handovers.pop((template_hash, container, slot), None) is None:
            return False
        self.dropped.append(("handover", f"{template_hash}/{container}/{slot}"))
        return True

    def ready_handovers(self) -> list[HandoverSlot]:
        return [HandoverSlot(*k, d, self.ages.get(k, 0.0), self.claims.get(k, ""),
                             self.claim_ages.get(k, 0.0))
                for k, d in self.handovers.items()]

    def release_claim(self, template_hash: str, container: str, slot: str,
                      claimant: str) -> bool:
        k = (template_hash, container, slot)
        if self.claims.get(k) != claimant:
            return False
        del self.claims[k]
        self.dropped.append(("released", f"{template_hash}/{container}/{slot}"))
        return True

    def withdraw_handover(self, template_hash: str, container: str, slot: str,
                          digest: str) -> bool:
        k = (template_hash, container, slot)
        if self.handovers.get(k) != digest or self.claims.get(k, WITHDRAW_CLAIM) != WITHDRAW_CLAIM:
            return False
        del self.handovers[k]
        self.dropped.append(("withdrawn", f"{template_hash}/{container}/{slot}"))
        return True

    def sweep(self) -> list[str]:
        self.swept += 1
        return []


if TYPE_CHECKING:
    from architect.runtime.daemon.migrations import CheckpointApi, Images
    from architect.runtime.daemon.ports import Network, Reporter, Shim

    _shim: Shim = FakeShim([])
    _net: Network = FakeNet([])
    _reporter: Reporter = FakeReporter([])
    _api: CheckpointApi = FakeApi()
    _images: Images = FakeImages()
