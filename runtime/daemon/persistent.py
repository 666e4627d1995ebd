"""The daemon's side of a PersistentCheckpoint: take it on this node.

The control plane moves an object to Checkpointing and labels it with the source
pod's node; this node's daemon (a label-selected reflector) asks the pod's shim
for ``persistent-checkpoint`` (``runsc checkpoint --leave-running`` of the whole
sandbox: the pod keeps running) and writes Ready with the image's location,
digest and size, or Failed with why. The control plane posts the phase's Event.

Handing the image out is the shim's (plan.plan_start), by the grant this daemon
writes beside each Ready image of this node: the namespaces that may start from
it (the object's and allowedNamespaces, kept current as the object changes) and
the digest its status records. A pod that names one gets an Event saying
whether it restored or started fresh, and why.

``jobs``, ``grants`` and ``start_event`` are pure (table-tested); ``PersistentCheckpoints`` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from architect.engine.controlplane.persistent import ready_status
from architect.engine.controlplane.phases import phase_of
from architect.policy.annotations import NODE_LABEL, START_FROM_PERSISTENT
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.daemon.apiserver import obj_key
from architect.runtime.shim.plan import READY_MARK, persistent_dir, write_grant

log = logging.getLogger("architect.daemon.persistent")

PLURAL = "persistentcheckpoints"
SHIM_TIMEOUT = 300.0
RECENT_S = 30.0  # a status written this long ago is not written again  # a large sandbox's state file takes a while to write


@dataclass(frozen=True)
class Job:
    namespace: str
    name: str
    container_id: str = ""  # the pod's running container the shim is asked by
    failure: str = ""  # non-empty: write Failed with this, do not checkpoint


def _running_container(pod: Mapping[str, Any]) -> str:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        cid = str(cs.get("containerID") or "")
        if cid and "running" in (cs.get("state") or {}):
            return cid.partition("://")[2] or cid
    return ""


def jobs(
    pcs: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    node: str,
    busy: frozenset[tuple[str, str]] = frozenset(),
) -> list[Job]:
    """What to do for this node's PersistentCheckpoints in Checkpointing."""
    by_name = {
        ((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name")): p
        for p in pods
    }
    out = []
    for pc in pcs:
        meta = pc.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        if phase_of(pc) != "Checkpointing" or (ns, name) in busy:
            continue
        if (meta.get("labels") or {}).get(NODE_LABEL) != node:
            continue
        src = str((pc.get("spec") or {}).get("sourcePod"))
        pod = by_name.get((ns, src))
        if pod is None:
            out.append(Job(ns, name, failure=f"source pod {ns}/{src} is no longer on node {node}"))
            continue
        cid = _running_container(pod)
        if not cid:
            out.append(Job(ns, name, failure=f"source pod {ns}/{src} has no running container"))
            continue
        out.append(Job(ns, name, cid))
    return out


def orphans(top: Path, keep: set[tuple[str, str]], min_age: float = 10.0) -> list[Path]:
    """Image dirs of PersistentCheckpoints that no longer exist (deleting the object
    deletes its node-local image); young ones stay (a create may race the list)."""
    now = time.time()
    out = []
    for d in sorted(top.glob("*/*")) if top.is_dir() else ():
        if (d.parent.name, d.name) in keep or not d.is_dir():
            continue
        try:
            if now - d.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        out.append(d)
    return out


def image_of(node: str, answer: Mapping[str, Any]) -> dict[str, Any]:
    """status.image from the shim's answer (location node://NODE/PATH)."""
    return {
        "location": f"node://{node}{answer['dir']}",
        "digest": str(answer["digest"]),
        "sizeBytes": int(answer["size_bytes"]),
    }


def grants(pcs: Iterable[Mapping[str, Any]], node: str) -> list[tuple[str, str, list[str], str]]:
    """(namespace, name, allowedNamespaces, digest) of each Ready PersistentCheckpoint
    whose image is on this node: what the shim may hand out, to whom."""
    out = []
    for pc in pcs:
        meta, st = pc.get("metadata") or {}, pc.get("status") or {}
        image = st.get("image") or {}
        if phase_of(pc) != "Ready" or not str(image.get("location", "")).startswith(
                f"node://{node}/"):
            continue
        allowed = [str(n) for n in (pc.get("spec") or {}).get("allowedNamespaces") or ()]
        out.append((str(meta.get("namespace")), str(meta.get("name")), allowed,
                    str(image.get("digest", ""))))
    return out


def start_event(pod: Mapping[str, Any], rec: Mapping[str, Any]) -> tuple[str, str, str]:
    """(type, reason, message) of the Event on a pod that named a PersistentCheckpoint."""
    ref = ((pod.get("metadata") or {}).get("annotations") or {}).get(START_FROM_PERSISTENT, "")
    why = str(rec.get("start_reason") or "")
    if rec.get("start_path") == "restore":
        return ("Normal", "RestoredFromPersistentCheckpoint",
                f"restored from PersistentCheckpoint {ref} (its state continues)")
    return ("Warning", "PersistentCheckpointNotUsed",
            f"started fresh instead of from PersistentCheckpoint {ref}: {why}")


Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Patch = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
Event = Callable[[Mapping[str, Any], str, str, str], Awaitable[None]]


class PersistentCheckpoints:
    """Runs each job once at a time, in the background (a tick never waits for it)."""

    def __init__(self, node: str, call: Call, patch: Patch, root: Path | None = None,
                 event: Event | None = None) -> None:
        self.node, self.call, self.patch, self.event = node, call, patch, event
        self.root = root  # the shim's state root: <root>/persistent/<ns>/<name>
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reported: set[str] = set()  # pod uids whose start has its Event
        self._tasks: set[asyncio.Task[None]] = set()
        self._written: dict[tuple[str, str], float] = {}

    def consider(self, pcs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        # Written a moment ago: the reflector may not show the new phase yet.
        self._written = {k: t for k, t in self._written.items() if now - t < RECENT_S}
        for job in jobs(pcs, pods, self.node, frozenset(self._busy) | frozenset(self._written)):
            key = (job.namespace, job.name)
            self._busy[key] = asyncio.create_task(self._run(job))
        for pod in pods:
            uid = str((pod.get("metadata") or {}).get("uid") or "")
            ann = (pod.get("metadata") or {}).get("annotations") or {}
            cid = _running_container(pod)
            if uid and cid and ann.get(START_FROM_PERSISTENT) and uid not in self._reported:
                self._reported.add(uid)
                t = asyncio.create_task(self._report_start(pod, cid))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        if self.root is None:
            return
        for ns, name, allowed, digest in grants(pcs, self.node):
            d = persistent_dir(self.root, ns, name)
            try:
                if (d / READY_MARK).exists() and write_grant(d, ns, allowed, digest):
                    log.info("PersistentCheckpoint %s/%s: handed out to %s", ns, name,
                             ", ".join([ns, *allowed]))
            except OSError as e:
                log.warning("PersistentCheckpoint %s/%s: grant: %s", ns, name, e)
        if self.root is not None:
            keep = {obj_key(pc) for pc in pcs} | set(self._busy)
            for d in orphans(self.root / "persistent", keep):
                log.info("PersistentCheckpoint %s/%s is gone: removing its image %s",
                         d.parent.name, d.name, d)
                safe_rmtree(d)

    async def _run(self, job: Job) -> None:
        try:
            if job.failure:
                status: dict[str, Any] = {"phase": "Failed", "message": job.failure}
            else:
                try:
                    answer = await self.call(job.container_id, {
                        "op": "persistent-checkpoint", "id": job.container_id,
                        "namespace": job.namespace, "name": job.name})
                    status = ready_status(image_of(self.node, answer), datetime.now(UTC))
                    status["message"] = (f"checkpointed on node {self.node} in "
                                         f"{answer.get('seconds', 0)}s; the pod kept running")
                except Exception as e:  # the shim's refusal or an unreachable shim
                    status = {"phase": "Failed", "message": f"checkpoint failed: {e}"}
            log.info("PersistentCheckpoint %s/%s: %s %s", job.namespace, job.name,
                     status["phase"], status.get("message", ""))
            await self.patch(job.namespace, job.name, {"status": status})
            self._written[(job.namespace, job.name)] = time.monotonic()
        except Exception:
            log.exception("PersistentCheckpoint %s/%s", job.namespace, job.name)
        finally:
            # A failed patch is retried: the shim answers with the ready image.
            self._busy.pop((job.namespace, job.name), None)

    async def _report_start(self, pod: Mapping[str, Any], cid: str) -> None:
        try:
            resp = await self.call(cid, {"op": "status"})
            (rec,) = [c for c in resp.get("containers") or () if c.get("id") == cid]
            etype, reason, message = start_event(pod, rec)
            log.info("%s/%s: %s", (pod.get("metadata") or {}).get("namespace"),
                     (pod.get("metadata") or {}).get("name"), message)
            if self.event is not None:
                await self.event(pod, etype, reason, message)
        except Exception as e:
            log.warning("start of a pod naming a PersistentCheckpoint: %s", e)

    async def close(self) -> None:
        for t in [*self._busy.values(), *self._tasks]:
            t.cancel()


def reflector(api: Any, node: str, on_change: Callable[[], None]) -> Any:
    """This node's PersistentCheckpoints (the control plane labels them)."""
    from kubernetes import client

    from architect.policy.annotations import GROUP, VERSION
    from architect.runtime.daemon.apiserver import Reflector

    custom = client.CustomObjectsApi(api)

    def list_fn(**kw: Any) -> Any:
        return custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)

    return Reflector(PLURAL, list_fn, "PersistentCheckpoint", f"{GROUP}/{VERSION}",
                     {"label_selector": f"{NODE_LABEL}={node}"}, on_change)


def wire(
    api: Any, node: str, link: Callable[[str], Path], root: Path
) -> PersistentCheckpoints:
    from architect.engine.kubeclient import Kube
    from architect.runtime.shim.client import request

    kube = Kube(api)

    async def call(cid: str, req: dict[str, Any]) -> dict[str, Any]:
        resp = await request(link(cid), req, timeout=SHIM_TIMEOUT)
        if not resp.get("ok"):
            raise RuntimeError(str(resp.get("error")))
        return resp

    async def patch(ns: str, name: str, body: dict[str, Any]) -> Any:
        return await kube.patch_status(PLURAL, ns, name, body)

    async def event(pod: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        await kube.post_event({"apiVersion": "v1", "kind": "Pod", **pod}, etype, reason, message)

    return PersistentCheckpoints(node, call, patch, root, event)
