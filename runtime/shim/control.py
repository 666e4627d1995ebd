"""The shim's local control API for the node daemon: JSON lines on a unix socket.

Requests, one JSON object a line, answered by one line each:
  {"op": "status"}                          -> {"ok": true, "containers": [...]}
  {"op": "hibernate", "id": "<container>"}  -> {"ok": true, "seconds": 0.41, ...}
  {"op": "wake", "id": "<container>"}       -> {"ok": true, "seconds": 0.22, ...}
  {"op": "migrate-on-stop", "id": "<container>", "enabled": true}
      -> {"ok": true, "id": "...", "migrate_on_stop": true, "migration_expected": ...}
      the daemon's decision: true, checkpoint for migration before the stop signal
      is delivered; false, deliver it (a Kill waiting for the decision goes on).
      Without "enabled": true (as before).
  {"op": "expect-migrate-on-stop", "id": "<container>"}  -> the same answer
      a decision will come: a Kill (SIGTERM/SIGKILL of the init) before it waits up
      to the shim's stop window (runtime/shim/stopwindow.py) for it. An op of its
      own, so a shim older than the window refuses it instead of arming.
  {"op": "persistent-checkpoint", "id": "<container>", "namespace": "ns", "name": "pc"}
      -> {"ok": true, "dir": "...", "digest": "sha256:...", "size_bytes": N, "seconds": s}
      checkpoints the whole runsc sandbox of <container> with --leave-running (the
      pod keeps running, same pids) into plan.persistent_dir(state, ns, name): an
      image with its manifest of digests, marked ready. The directory comes from
      (namespace, name), never from the client, so the op writes nowhere else.
  {"op": "held", "id": "<container>"}  -> {"ok": true, "id": "..."}
      the daemon armed the packet hold of a container created hibernated: its
      Create, waiting for that (plan.hold_marker), returns.
  {"op": "watch"}  -> {"ok": true}, then one line per event, e.g.
                      {"event": "woken", "id": "...", "reason": "exec"}
Errors: {"ok": false, "error": "<what was wrong>"}.

Where to find a container's shim: ``<run_dir>/<namespace>/<container id>`` is a
symlink to the control socket of the shim that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint import CheckpointError, CheckpointOptions
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.shim import plan
from architect.runtime.shim.client import MAX_LINE, RequestError, request
from architect.runtime.shim.service import TaskService
from architect.runtime.shim.ttrpc import TtrpcError

log = logging.getLogger(__name__)
__all__ = ["ControlServer", "RequestError", "parse_request", "request"]




def parse_request(line: bytes) -> dict[str, Any]:
    """Validate one request line (pure)."""
    try:
        req = json.loads(line)
    except ValueError as e:
        raise RequestError(f"request is not JSON: {e}") from e
    if not isinstance(req, dict):
        raise RequestError("request must be a JSON object")
    op = req.get("op")
    if op not in OPS:
        raise RequestError(f"op {op!r}: want one of {', '.join(OPS)}")
    if op in WITH_ID and not isinstance(req.get("id"), str):
        raise RequestError(f"op {op!r} needs a string 'id' (the container id)")
    fields = FIELDS.get(op)
    if fields is not None:
        unknown = sorted(set(req) - set(fields))
        if unknown:
            raise RequestError(
                f"op {op!r}: unknown field(s) {', '.join(unknown)}; want {', '.join(fields)}"
            )
    if op == "persistent-checkpoint":
        for key in ("namespace", "name"):
            v = req.get(key)
            if not isinstance(v, str) or not _NAME.fullmatch(v):
                raise RequestError(f"op {op!r}: {key!r} {v!r}: want a Kubernetes object name")
    if op == "migrate-on-stop" and "enabled" in req and not isinstance(req["enabled"], bool):
        raise RequestError(f"op {op!r}: 'enabled' {req['enabled']!r}: want true or false")
    return req


OPS = ("status", "hibernate", "wake", "migrate-on-stop", "expect-migrate-on-stop",
       "persistent-checkpoint", "held", "watch")
WITH_ID = ("hibernate", "wake", "migrate-on-stop", "expect-migrate-on-stop",
           "persistent-checkpoint", "held")
# A DNS subdomain: no '/', no '..' (the names become path components).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Ops whose fields are checked (the others' extra fields were always ignored).
FIELDS = {
    "migrate-on-stop": ("op", "id", "enabled"),
    "expect-migrate-on-stop": ("op", "id"),
    "persistent-checkpoint": ("op", "id", "namespace", "name"),
    "held": ("op", "id"),
}


async def persistent_checkpoint(
    svc: TaskService, cid: str, namespace: str, name: str
) -> dict[str, Any]:
    """A PersistentCheckpoint of the runsc sandbox ``cid`` belongs to; the pod runs on."""
    c = svc.get(cid)
    if c.runtime != "runsc":
        raise RequestError(f"container {cid[:12]} runs under {c.runtime}, not runsc")
    # runsc checkpoints a sandbox as a whole: name its root (the pause container).
    sandbox_id = c.annotations.get(plan.CRI_SANDBOX_ID) or cid
    sandbox = svc.containers.get(sandbox_id, c)
    dest = plan.persistent_dir(svc.state_root, namespace, name)
    if (dest / plan.READY_MARK).exists():
        return _describe(dest, 0.0)
    safe_rmtree(dest)  # an unfinished one (a shim died mid-way) is no image
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    async with c.lock:
        try:
            await c.runc.backend.checkpoint(
                c.runc.container(sandbox_id, sandbox.bundle), dest,
                CheckpointOptions(leave_running=True, compression="none"),
            )
        except CheckpointError as e:
            safe_rmtree(dest)
            raise RequestError(f"runsc checkpoint --leave-running of sandbox "
                               f"{sandbox_id[:12]}: {e}") from e
    (dest / plan.NAMESPACE_MARK).write_text(namespace, encoding="utf-8")
    (dest / plan.READY_MARK).touch()
    log.info("%s: PersistentCheckpoint %s/%s of sandbox %s in %.2fs", cid, namespace, name,
             sandbox_id, time.monotonic() - t0)
    return _describe(dest, time.monotonic() - t0)


def _describe(dest: Path, seconds: float) -> dict[str, Any]:
    """Digest = sha256 of the manifest (it lists every file's sha256); size = all files."""
    from architect.runtime.checkpoint.image import MANIFEST  # tar, zstd: not in every idle shim

    digest = hashlib.sha256((dest / MANIFEST).read_bytes()).hexdigest()
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"dir": str(dest), "digest": f"sha256:{digest}", "size_bytes": size,
            "seconds": round(seconds, 3)}


class ControlServer:
    def __init__(self, service: TaskService, path: Path) -> None:
        self.service = service
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        svc = self.service
        if op == "status":
            return {"ok": True, "shim_pid": os.getpid(), "containers": svc.status()}
        if op == "hibernate":
            return {"ok": True, **await svc.hibernate(req["id"])}
        if op == "wake":
            return {"ok": True, **await svc.wake(req["id"])}
        if op == "persistent-checkpoint":
            return {"ok": True, **await persistent_checkpoint(
                svc, req["id"], req["namespace"], req["name"])}
        if op == "held":
            return {"ok": True, "id": svc.held(req["id"]).id}
        if op in ("migrate-on-stop", "expect-migrate-on-stop"):
            if op == "expect-migrate-on-stop":
                c = svc.expect_migration(req["id"])
            else:
                c = svc.decide_migration(req["id"], req.get("enabled", True))
            return {"ok": True, "id": c.id, "migrate_on_stop": c.migrate_on_stop,
                    "migration_expected": c.stop.expected}
        raise RequestError(f"op {op!r} not handled")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj).encode() + b"\n")
            await writer.drain()

        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    await send({"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    break
                if not line:
                    break
                try:
                    req = parse_request(line)
                    if req["op"] == "watch":
                        await send({"ok": True})
                        await self._watch(send)
                        break
                    resp = await self.handle(req)
                except (RequestError, TtrpcError) as e:
                    resp = {"ok": False, "error": getattr(e, "message", str(e))}
                except Exception as e:
                    log.exception("control request failed")
                    resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                await send(resp)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _watch(self, send: Any) -> None:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.service.watchers.append(q)
        try:
            while True:
                await send(await q.get())
        finally:
            self.service.watchers.remove(q)
