"""The interfaces the controller drives: the shim, the pod network, the API server.

The controller only sees these protocols, so its decisions (ordering, fail-open,
bookkeeping) are tested with fakes; ``shimclient``, ``network`` and ``kube`` are
the real implementations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from architect.engine.directives import ResizeTarget
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.runtime.daemon.targets import Target

WakeFn = Callable[[], Awaitable[None]]
EventFn = Callable[[Mapping[str, Any]], None]


class ShimError(RuntimeError):
    """The shim refused or failed a request; the message is the shim's own."""


@dataclass(frozen=True, slots=True)
class ShimContainer:
    """What the shim reports of one container."""

    id: str
    status: str  # "RUNNING", "SCALED_DOWN", "STOPPED", ...
    pid: int
    netns: str | None  # from the bundle's config.json
    socket: str  # the control socket the container's symlink points at
    start_path: str = ""  # "restore" | "fresh": how its Create started it
    start_reason: str = ""  # why (names the handover it restored or waited for)
    cgroup: str | None = None  # linux.cgroupsPath of its config.json, resolved (daemon/usage.py)
    execs: int = 0  # its running exec processes (kubectl exec sessions), the shim's count


@dataclass(frozen=True, slots=True)
class Activity:
    last_packet_at: datetime | None
    open_connections: int
    held_packets: int


class Shim(Protocol):
    async def find(self, container_id: str) -> ShimContainer | None:
        """The container as its shim reports it; None when no Architect shim runs it."""

    def waiting(self, namespace: str, pod: str, container: str) -> str | None:
        """The ID of a container created hibernated whose Create waits for its hold
        (the pod status has no ID yet); None when none waits."""

    async def held(self, container_id: str) -> None:
        """Tell the shim the hold is armed (its waiting Create returns). Raises ShimError."""

    async def hibernate(self, container_id: str) -> float:
        """Checkpoint; the seconds it took. Raises ShimError."""

    async def wake(self, container_id: str) -> float:
        """Restore; the seconds it took. Raises ShimError."""

    async def migrate_on_stop(self, container_id: str, enabled: bool) -> None: ...

    async def expect_migration(self, container_id: str) -> None:
        """A decision on this container's stop will come: the shim's Kill waits for it
        (the shim's stop window, runtime/shim/stopwindow.py)."""

    async def mark_pending(self, template_hash: str, container: str, slot: str) -> None:
        """Mark the handover ``slot`` of (template hash, container) as coming
        (runtime/shim/plan.py: source_slot, destination_slot)."""

    async def nothing_coming(self, template_hash: str, container: str, slot: str) -> None:
        """The mark was set ahead of the answer, and nothing comes: a waiting
        Create starts fresh at once (plan.NOTHING_MARK), unless the image is ready."""

    async def clear_pending(self, template_hash: str, container: str, slot: str) -> None:
        """Remove that mark (and its then empty directory) unless the image is ready."""

    def watch(self, socket: str, on_event: EventFn) -> None:
        """Follow the events of the shim behind ``socket`` (idempotent)."""

    async def close(self) -> None: ...


class Network(Protocol):
    async def setup(self, target: Target, netns: str) -> None:
        """Activity counting and shadow ports; stale holds of this container removed."""

    async def hold(self, key: ContainerKey, wake: WakeFn) -> None:
        """Queue the container's incoming packets; the first one calls ``wake``."""

    async def after_checkpoint(self, key: ContainerKey) -> None:
        """The checkpoint is done: make sure the hold sees packets first (CRIU's
        network lock was inserted above it)."""

    async def release(self, key: ContainerKey) -> None:
        """Let held packets through (in order) and remove the hold."""

    async def teardown(self, key: ContainerKey) -> None:
        """Remove every rule of the container (it is no longer managed)."""

    async def sweep(self, netns: str, index: int) -> list[str]:
        """Remove the chains of the ``index``-th container of a pod that is not
        managed (left by an earlier daemon); return their names."""

    def sample(self, key: ContainerKey, now: datetime) -> Activity | None:
        """Blocking (runs in a worker thread): one activity sample."""


class Reporter(Protocol):
    async def set_status(self, pod: Mapping[str, Any], states: Mapping[str, ContainerState]) -> None:
        """The pod's status annotation (and its health-proxy status file)."""

    async def event(self, pod: Mapping[str, Any], etype: str, reason: str, message: str) -> None: ...

    async def resize(
        self, pod: Mapping[str, Any], container: str, to: ResizeTarget, original: Mapping[str, str]
    ) -> None:
        """In-place resize through pods/resize; ``original``: the container's requests
        as admitted (restored when ``to`` is ORIGINAL)."""
