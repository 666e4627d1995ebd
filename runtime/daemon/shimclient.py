"""The shim's control socket, as the daemon uses it (protocol: runtime/shim/README.md).

Requests go through ``architect.runtime.shim.control.request`` (one JSON line
each way); ``watch`` keeps one event stream per shim (a shim serves every
container of its pod), reconnecting a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from architect.runtime.daemon.ports import EventFn, ShimContainer, ShimError
from architect.runtime.daemon.targets import network_namespace
from architect.runtime.daemon.usage import cgroups_path
from architect.runtime.shim import plan
from architect.runtime.shim.client import request

log = logging.getLogger("architect.daemon.shim")

DEFAULT_RUN = "/run/architect/shim"
DEFAULT_STATE = "/var/lib/architect/shim"
WATCH_RETRIES = 5


def shim_run_dir() -> Path:
    return Path(os.environ.get("ARCHITECT_SHIM_RUN", DEFAULT_RUN))


def read_bundle(bundle: str) -> tuple[str | None, str | None]:
    """(network namespace path, cgroup path) of the bundle's config.json."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None, None
    if not isinstance(config, dict):
        return None, None
    return network_namespace(config), cgroups_path(config)


class ShimClient:
    def __init__(
        self,
        run_dir: Path,
        state_dir: Path = Path(DEFAULT_STATE),
        namespace: str = "k8s.io",
        timeout: float = 120.0,
    ) -> None:
        self.run_dir, self.state_dir = run_dir, state_dir
        self.namespace, self.timeout = namespace, timeout
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def link(self, container_id: str) -> Path:
        return self.run_dir / self.namespace / container_id

    async def _call(self, container_id: str, req: dict[str, Any]) -> dict[str, Any]:
        path = self.link(container_id)
        try:
            resp = await request(path, req, timeout=self.timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise ShimError(f"shim of {container_id[:12]} ({path}): {req['op']}: {e}") from e
        if not resp.get("ok"):
            raise ShimError(f"shim {req['op']} {container_id[:12]}: {resp.get('error')}")
        return resp

    async def find(self, container_id: str) -> ShimContainer | None:
        link = self.link(container_id)
        if not link.is_symlink() and not link.exists():
            return None
        resp = await self._call(container_id, {"op": "status"})
        for c in resp.get("containers") or ():
            if c.get("id") == container_id:
                netns, cgroup = await asyncio.to_thread(read_bundle, str(c.get("bundle") or ""))
                return ShimContainer(
                    id=container_id,
                    status=str(c.get("status") or ""),
                    pid=int(c.get("pid") or 0),
                    netns=netns,
                    socket=os.path.realpath(link),
                    start_path=str(c.get("start_path") or ""),
                    start_reason=str(c.get("start_reason") or ""),
                    cgroup=cgroup,
                    execs=int(c.get("execs") or 0),
                )
        return None

    def waiting(self, namespace: str, pod: str, container: str) -> str | None:
        """The container ID a shim's Create names while it waits for its hold
        (created hibernated, before the pod status has its ID); None if none waits."""
        marker = plan.hold_marker(self.run_dir, namespace, pod, container)
        try:
            cid = marker.read_text().strip()
        except OSError:
            return None
        return cid or None

    async def held(self, container_id: str) -> None:
        await self._call(container_id, {"op": "held", "id": container_id})

    async def hibernate(self, container_id: str) -> float:
        resp = await self._call(container_id, {"op": "hibernate", "id": container_id})
        return float(resp.get("seconds") or 0.0)

    async def wake(self, container_id: str) -> float:
        resp = await self._call(container_id, {"op": "wake", "id": container_id})
        return float(resp.get("seconds") or 0.0)

    async def migrate_on_stop(self, container_id: str, enabled: bool) -> None:
        await self._call(
            container_id, {"op": "migrate-on-stop", "id": container_id, "enabled": enabled}
        )

    async def expect_migration(self, container_id: str) -> None:
        await self._call(
            container_id, {"op": "expect-migrate-on-stop", "id": container_id}
        )

    async def mark_pending(self, template_hash: str, container: str, slot: str) -> None:
        """Tell a replacement pod's Create to wait for the handover the stopping pod
        is about to write (the shim replaces the dir when its checkpoint starts)."""
        await asyncio.to_thread(plan.mark_slot_pending,
                                plan.handover_dir(self.state_dir, template_hash, container, slot))

    async def nothing_coming(self, template_hash: str, container: str, slot: str) -> None:
        await asyncio.to_thread(plan.mark_slot_nothing,
                                plan.handover_dir(self.state_dir, template_hash, container, slot))

    async def clear_pending(self, template_hash: str, container: str, slot: str) -> None:
        await asyncio.to_thread(plan.clear_slot,
                                plan.handover_dir(self.state_dir, template_hash, container, slot))

    def watch(self, socket: str, on_event: EventFn) -> None:
        task = self._watchers.get(socket)
        if task is not None and not task.done():
            return
        self._watchers[socket] = asyncio.get_running_loop().create_task(
            self._follow(socket, on_event)
        )

    async def _follow(self, socket: str, on_event: EventFn) -> None:
        """Stream one shim's events; stops when the shim is gone (its socket
        removed) or after WATCH_RETRIES failed reconnects in a row."""
        failures = 0
        while failures < WATCH_RETRIES and os.path.exists(socket):
            try:
                reader, writer = await asyncio.open_unix_connection(socket, limit=1 << 16)
            except OSError:
                failures += 1
                await asyncio.sleep(0.5 * failures)
                continue
            try:
                writer.write(b'{"op": "watch"}\n')
                await writer.drain()
                first = json.loads(await reader.readline() or b"{}")
                if not first.get("ok"):
                    raise ShimError(f"watch refused: {first.get('error')}")
                failures = 0
                while line := await reader.readline():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict):
                            on_event(event)
            except (OSError, ValueError, ShimError) as e:
                log.warning("watch %s: %s", socket, e)
            finally:
                writer.close()
            failures += 1
            await asyncio.sleep(0.2 * failures)

    async def close(self) -> None:
        for task in self._watchers.values():
            task.cancel()
        for task in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
