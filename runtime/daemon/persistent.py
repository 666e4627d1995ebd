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

With ``storage.registry`` the sealed image is pushed to that OCI repository as
an artifact (runtime/transfer/registry.py) and the node's copy removed: the
status' location is ``host/repo:tag@sha256:<manifest>``. A pod naming such an
object, on any node, gets it pulled here by this daemon when it sees the pod:
the directory is marked pending at once (the shim waits for it), then ready
with the grant, or ``unavailable`` with why (the shim starts fresh and the
pod's Event says why: not found, not Ready, namespace not allowed, registry
error, missing tag, digest mismatch).

A node-local image on another node comes the same way, fetched from the
holder's daemon over the mutual-TLS transfer (runtime/transfer/persistent.py:
the holder checks allowedNamespaces, the pod and the digest before it sends a
byte; every file is checked here against the object's digest). The holder keeps
its copy; the fetched one goes once its pods run, like a pulled one.

``jobs``, ``grants``, ``claims``, ``keep`` and ``start_event`` are pure (table-tested);
``PersistentCheckpoints`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from architect.engine.controlplane.persistent import ready_status, resolve_start
from architect.engine.controlplane.phases import phase_of
from architect.engine.controlplane.transfer import TransferError
from architect.policy.annotations import NODE_LABEL, RUNSC_CLASS, START_FROM_PERSISTENT
from architect.runtime.checkpoint.fs import safe_rmtree
from architect.runtime.daemon.apiserver import obj_key
from architect.runtime.shim.plan import (
    NAMESPACE_MARK,
    PENDING_MARK,
    READY_MARK,
    UNAVAILABLE_MARK,
    manifest_digest,
    persistent_dir,
    write_grant,
)
from architect.runtime.transfer import registry

log = logging.getLogger("architect.daemon.persistent")

PLURAL = "persistentcheckpoints"
SHIM_TIMEOUT = 300.0
RECENT_S = 30.0  # a status written this long ago is not written again  # a large sandbox's state file takes a while to write
INSECURE_ENV = "ARCHITECT_INSECURE_REGISTRIES"  # host:port,...: plain HTTP
PULLED_TTL = 120.0  # a pulled copy (or why not) stays this long for pods starting at once


@dataclass(frozen=True)
class Job:
    namespace: str
    name: str
    container_id: str = ""  # the pod's running container the shim is asked by
    failure: str = ""  # non-empty: write Failed with this, do not checkpoint
    registry: str = ""  # spec.storage.registry: push there, keep no node copy


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
        reg = str(((pc.get("spec") or {}).get("storage") or {}).get("registry") or "")
        try:
            if reg and registry.parse_reference(reg).digest:
                raise registry.RegistryError(f"{reg!r}: name a tag, not a digest")
        except registry.RegistryError as e:  # before the checkpoint: it would go nowhere
            out.append(Job(ns, name, failure=f"storage.registry: {e}"))
            continue
        out.append(Job(ns, name, cid, registry=reg))
    return out


@dataclass(frozen=True)
class Claim:
    """A pod of this node that names a PersistentCheckpoint not on this node (yet)."""

    uid: str
    pod_namespace: str
    namespace: str  # the PersistentCheckpoint's
    name: str
    pod: str = ""  # the pod's name (a fetch's ticket names it)


def _has_started(pod: Mapping[str, Any]) -> bool:
    return any(cs.get("containerID") for cs in
               (pod.get("status") or {}).get("containerStatuses") or ())


def claims(pods: Iterable[Mapping[str, Any]], seen: set[str]) -> list[Claim]:
    """Pods (runsc-architect, not started, not seen) naming a PersistentCheckpoint."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        uid, ref = str(meta.get("uid") or ""), str((meta.get("annotations") or {}).get(
            START_FROM_PERSISTENT) or "")
        if not uid or not ref or uid in seen or meta.get("deletionTimestamp"):
            continue
        if (pod.get("spec") or {}).get("runtimeClassName") != RUNSC_CLASS or _has_started(pod):
            continue
        pns = str(meta.get("namespace"))
        ns, _, name = ref.rpartition("/")
        out.append(Claim(uid, pns, ns or pns, name, str(meta.get("name") or "")))
    return out


def pull_plan(claim: Claim, pc: Mapping[str, Any] | None, node: str) -> tuple[str, str]:
    """("pull", location), ("fetch", holder node) or ("unavailable", why) for a
    claimed pod (pure). allowedNamespaces is checked here, before any transfer."""
    what = f"PersistentCheckpoint {claim.namespace}/{claim.name} not available on this node"
    d = resolve_start((claim.namespace, claim.name), pc, claim.pod_namespace)
    if not d.restore or not d.image:
        return "unavailable", f"{what}: {d.reason.removesuffix(': starting fresh')}"
    loc = str(d.image.get("location") or "")
    if loc.startswith("node://"):
        where = loc.removeprefix("node://").partition("/")[0]
        if where and where != node:
            return "fetch", where
        return "unavailable", f"{what}: its image is node-local on node {where}"
    return "pull", loc


def keep(pcs: Iterable[Mapping[str, Any]], busy: Iterable[tuple[str, str]],
         pulled: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Image dirs the sweep leaves: this node's node-local (or not yet Ready) objects'
    images, the ones being taken, and recent pulls. A registry object's copy is not
    kept (the registry holds it)."""
    out = set(busy) | set(pulled)
    for pc in pcs:
        loc = str(((pc.get("status") or {}).get("image") or {}).get("location") or "")
        if not loc or loc.startswith("node://"):
            out.add(obj_key(pc))
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
Get = Callable[[str, str], Awaitable[dict[str, Any] | None]]
# (claim, the object, holder node, image dir): fetch the node-local image into the
# dir (its marks stay the caller's); a line for the log. Raises TransferError.
Fetch = Callable[[Claim, Mapping[str, Any], str, Path], Awaitable[str]]


def _mark_ready(d: Path, namespace: str, allowed: list[str], digest: str) -> None:
    """A fetched image's bookkeeping, as a pulled one's: ready last, pending after."""
    (d / NAMESPACE_MARK).write_text(namespace, encoding="utf-8")
    write_grant(d, namespace, allowed, digest)
    (d / READY_MARK).touch()
    (d / PENDING_MARK).unlink(missing_ok=True)


class PersistentCheckpoints:
    """Runs each job once at a time, in the background (a tick never waits for it)."""

    def __init__(self, node: str, call: Call, patch: Patch, root: Path | None = None,
                 event: Event | None = None, get: Get | None = None,
                 insecure: tuple[str, ...] = (), fetch: Fetch | None = None) -> None:
        self.node, self.call, self.patch, self.event = node, call, patch, event
        self.fetch = fetch
        self.get, self.insecure = get, insecure  # get: a PersistentCheckpoint by ns, name
        self._claimed: set[str] = set()  # pod uids whose PersistentCheckpoint was seen to
        self._pulled: dict[tuple[str, str], float] = {}  # being pulled / pulled at
        # Pods (uids) waiting on each pulled copy: it is removed once they all run
        # (the registry holds the image; a later pod pulls it again, checked again).
        self._waiting: dict[tuple[str, str], set[str]] = {}
        self._pulling: set[tuple[str, str]] = set()
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
        if self.get is not None:
            for claim in claims(pods, self._claimed):
                self._claimed.add(claim.uid)
                self._claim(claim)
        self._pulled = {k: t for k, t in self._pulled.items()
                        if now - t < PULLED_TTL or k in self._pulling}
        self._release(pods)
        for ns, name, allowed, digest in grants(pcs, self.node):
            d = persistent_dir(self.root, ns, name)
            try:
                if (d / READY_MARK).exists() and write_grant(d, ns, allowed, digest):
                    log.info("PersistentCheckpoint %s/%s: handed out to %s", ns, name,
                             ", ".join([ns, *allowed]))
            except OSError as e:
                log.warning("PersistentCheckpoint %s/%s: grant: %s", ns, name, e)
        if self.root is not None:
            kept = keep(pcs, self._busy, set(self._pulled) | self._pulling)
            for d in orphans(self.root / "persistent", kept):
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
                    image = image_of(self.node, answer)
                    message = (f"checkpointed on node {self.node} in "
                               f"{answer.get('seconds', 0)}s; the pod kept running")
                    if job.registry:
                        image, pushed = await self._push(job, answer)
                        message += f"; {pushed}"
                    status = ready_status(image, datetime.now(UTC))
                    status["message"] = message
                except registry.RegistryError as e:
                    status = {"phase": "Failed", "message": f"push to the registry failed: {e}"}
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

    async def _push(self, job: Job, answer: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Push the shim's image to ``job.registry``; the node's copy goes either way
        (an object that is Failed, or whose image is in the registry, keeps none)."""
        d = Path(str(answer["dir"]))
        t0 = time.monotonic()
        try:
            pushed = await asyncio.to_thread(registry.push_checkpoint, d, job.registry,
                                             job.namespace, job.name, self.insecure)
        finally:
            await asyncio.to_thread(safe_rmtree, d)
        secs = time.monotonic() - t0
        log.info("PersistentCheckpoint %s/%s: pushed to %s in %.2fs (%d of the blobs sent)",
                 job.namespace, job.name, pushed.location, secs, pushed.blobs_uploaded)
        image = {"location": pushed.location, "digest": str(answer["digest"]),
                 "sizeBytes": int(answer["size_bytes"])}
        return image, (f"pushed to {pushed.location} in {secs:.2f}s "
                       f"({pushed.blobs_uploaded} blobs sent)")

    def _claim(self, claim: Claim) -> None:
        """Mark the image dir pending now (the shim waits on it), then pull or say why not."""
        assert self.root is not None
        key = (claim.namespace, claim.name)
        d = persistent_dir(self.root, claim.namespace, claim.name)
        if key in self._busy or ((d / READY_MARK).exists() and key not in self._pulled):
            return  # being taken here, or a node-local image here
        self._waiting.setdefault(key, set()).add(claim.uid)
        if key in self._pulled:
            return  # pulled, or being pulled, for another pod too
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / PENDING_MARK).touch()
            (d / UNAVAILABLE_MARK).unlink(missing_ok=True)
        except OSError as e:
            log.warning("PersistentCheckpoint %s/%s: %s", *key, e)
            return
        self._pulled[key] = time.monotonic()
        self._pulling.add(key)
        t = asyncio.create_task(self._pull(claim, d))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _pull(self, claim: Claim, d: Path) -> None:
        key = (claim.namespace, claim.name)
        try:
            assert self.get is not None
            try:
                pc = await self.get(*key)
            except Exception as e:
                pc, why = None, f"cannot read it: {e}"
            else:
                why = ""
            action, arg = pull_plan(claim, pc, self.node)
            if why:
                action, arg = "unavailable", (f"PersistentCheckpoint {claim.namespace}/"
                                              f"{claim.name} not available on this node: {why}")
            if action == "unavailable":
                log.info("pod of %s: %s", claim.pod_namespace, arg)
                await asyncio.to_thread(registry.mark_unavailable, d, arg)
                self._pulled.pop(key, None)  # the next pod asks again (the sweep takes d)
                return
            assert pc is not None
            if action == "fetch":
                await self._fetch(claim, pc, arg, d)
                return
            spec, image = pc.get("spec") or {}, (pc.get("status") or {}).get("image") or {}
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(
                    registry.pull_checkpoint, arg, str(image.get("digest")), d,
                    claim.namespace, [str(n) for n in spec.get("allowedNamespaces") or ()],
                    self.insecure)
            except registry.RegistryError as e:
                log.warning("PersistentCheckpoint %s/%s: pull of %s: %s", *key, arg, e)
                self._pulled.pop(key, None)
                return
            self._pulled[key] = time.monotonic()
            log.info("PersistentCheckpoint %s/%s: pulled %s in %.2fs", *key, arg,
                     time.monotonic() - t0)
        except Exception:
            log.exception("PersistentCheckpoint %s/%s: pull", *key)
            with contextlib.suppress(OSError):
                registry.mark_unavailable(d, "pull failed: the daemon's error (see its log)")
            self._pulled.pop(key, None)
        finally:
            self._pulling.discard(key)

    async def _fetch(self, claim: Claim, pc: Mapping[str, Any], holder: str, d: Path) -> None:
        """The node-local image from ``holder``'s daemon; on any failure no image file
        stays in ``d`` and ``unavailable`` says why (the pod starts fresh)."""
        key = (claim.namespace, claim.name)
        what = f"PersistentCheckpoint {claim.namespace}/{claim.name}"
        digest = str(((pc.get("status") or {}).get("image") or {}).get("digest") or "")
        allowed = [str(n) for n in (pc.get("spec") or {}).get("allowedNamespaces") or ()]
        t0 = time.monotonic()
        try:
            if self.fetch is None:
                raise TransferError("this daemon does not run the transfer")
            done = await self.fetch(claim, pc, holder, d)
            got = await asyncio.to_thread(manifest_digest, d)
            if got != digest:  # the download pinned it; this is the bytes on disk
                raise TransferError(f"digest mismatch: image {got}, object {digest}")
            await asyncio.to_thread(_mark_ready, d, claim.namespace, allowed, digest)
        except (TransferError, OSError) as e:
            why = f"{what}: fetch of its node-local image from node {holder} failed: {e}"
            log.warning("pod %s/%s: %s", claim.pod_namespace, claim.pod, why)
            await asyncio.to_thread(registry.mark_unavailable, d, why)
            self._pulled.pop(key, None)
            return
        self._pulled[key] = time.monotonic()
        log.info("%s: fetched from node %s for pod %s/%s in %.2fs (%s)", what, holder,
                 claim.pod_namespace, claim.pod, time.monotonic() - t0, done)

    def _release(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Remove a pulled copy once every pod waiting on it runs (or is gone)."""
        waiting_still = {str((p.get("metadata") or {}).get("uid")) for p in pods
                         if not _has_started(p)}
        for key, uids in list(self._waiting.items()):
            uids &= waiting_still
            if uids or key in self._pulling:
                continue
            del self._waiting[key]
            if self._pulled.pop(key, None) is not None and self.root is not None:
                d = persistent_dir(self.root, *key)
                log.info("PersistentCheckpoint %s/%s: its pods run; removing the pulled copy %s",
                         *key, d)
                safe_rmtree(d)

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
    api: Any, node: str, link: Callable[[str], Path], root: Path, fetch: Fetch | None = None
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

    async def get(ns: str, name: str) -> dict[str, Any] | None:
        return await kube.get(PLURAL, ns, name)

    # Registries served over plain HTTP (besides loopback), e.g. the e2e one.
    insecure = tuple(h.strip() for h in os.environ.get(INSECURE_ENV, "").split(",")
                     if h.strip())
    return PersistentCheckpoints(node, call, patch, root, event, get, insecure, fetch)
