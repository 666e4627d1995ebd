"""A PersistentCheckpoint's node-local image, fetched by another node's daemon over
the mutual-TLS transfer.

The daemon of the node a new pod lands on (the destination) asks the daemon of
the node that holds the image (the holder) for it:
``GET /v1/persistentcheckpoints/NS/NAME`` with ``Authorization: Architect-Ticket
TOKEN``. There is no Checkpoint to claim and no control-plane grant (an image
restores many pods), so the destination signs the ticket itself under the
cluster transfer key (every daemon holds it), naming the pod it fetches for.
That is not trusted on its own: the holder serves only when the ticket names it
as source and the caller's certificate CN as destination, the pod exists on
the caller's node, names this PersistentCheckpoint, and is of a namespace the
object lets start from it (allowedNamespaces, ``resolve_start``), the object
is Ready with its image on this node under the ticket's uid and digest, and
the image on disk has that digest.

The body is manifest.json (``Architect-Manifest-Length`` bytes) followed by
every file the manifest lists, in its order (``parts``: the payload stream, or
each file of the directory layout). The destination pins the
manifest to the digest the object records (read from the API server, not from
the holder), then streams each file through a ``DigestVerifier`` into a scratch
directory inside the image directory; only a complete, verified image is moved
in and marked ready. The holder's copy is only read.

``authorize`` and ``holder_endpoint`` are pure (table-tested).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import shutil
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from architect.engine.controlplane.persistent import resolve_start
from architect.engine.controlplane.phases import phase_of
from architect.engine.controlplane.transfer import (
    SCHEME,
    Ticket,
    TransferError,
    issue,
    peek,
    verify,
)
from architect.policy.annotations import START_FROM_PERSISTENT
from architect.runtime.checkpoint import image
from architect.runtime.checkpoint.api import FileInfo, Manifest
from architect.runtime.checkpoint.errors import CheckpointError
from architect.runtime.shim import plan
from architect.runtime.transfer.client import (
    CONNECT_TIMEOUT_S,
    MAX_MANIFEST,
    open_download,
    peer_errors,
    read_pinned_manifest,
)
from architect.runtime.transfer.server import CHUNK, MANIFEST_LENGTH
from architect.runtime.transfer.tls import NodeTLS, peer_node

log = logging.getLogger("architect.transfer.persistent")

ROUTE = "/v1/persistentcheckpoints/{namespace}/{name}"
TICKET_TTL_S = 120  # the ticket is used at once; the download's own deadline is below
TOTAL_TIMEOUT_S = 110.0  # under the shim's wait for a pending image (plan.FETCH_WAIT_S)
SCRATCH = ".incoming-"

Lookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


def image_node(pc: Mapping[str, Any]) -> str:
    """The node a node-local image is on ('' when it is not node-local)."""
    loc = str(((pc.get("status") or {}).get("image") or {}).get("location") or "")
    if not loc.startswith("node://"):
        return ""
    return loc.removeprefix("node://").partition("/")[0]


def ticket_for(pc: Mapping[str, Any], pod_namespace: str, pod: str, destination: str,
               now: float) -> Ticket:
    meta, img = pc.get("metadata") or {}, (pc.get("status") or {}).get("image") or {}
    return Ticket(
        namespace=str(meta.get("namespace")), name=str(meta.get("name")),
        uid=str(meta.get("uid") or ""), digest=str(img.get("digest") or ""),
        size_bytes=int(img.get("sizeBytes") or 0), source_node=image_node(pc),
        destination_node=destination, destination_pod=f"{pod_namespace}/{pod}",
        expires_at=int(now) + TICKET_TTL_S)


def token_for(pc: Mapping[str, Any], pod_namespace: str, pod: str, destination: str,
              key: bytes, now: float) -> str:
    """The destination's ticket, signed under the cluster transfer key."""
    return issue(ticket_for(pc, pod_namespace, pod, destination, now), key)


def authorize(ticket: Ticket, *, self_node: str, peer: str, path: tuple[str, str],
              pc: Mapping[str, Any] | None, pod: Mapping[str, Any] | None) -> None:
    """The holder's checks before it hands an image out (TransferError says which)."""
    ns, name = path
    ref = f"{ns}/{name}"
    if (ticket.namespace, ticket.name) != path:
        raise TransferError(f"ticket is for {ticket.namespace}/{ticket.name}, not {ref}")
    if ticket.source_node != self_node:
        raise TransferError(f"ticket for {ref} names source node {ticket.source_node}, "
                            f"not {self_node}")
    if ticket.destination_node != peer:
        raise TransferError(f"ticket for {ref} is for node {ticket.destination_node}; "
                            f"the caller is {peer}")
    if pc is None:
        raise TransferError(f"PersistentCheckpoint {ref} not found")
    if (pc.get("metadata") or {}).get("uid") != ticket.uid:
        raise TransferError(f"PersistentCheckpoint {ref} was replaced since the ticket was made")
    pod_ns, _, pod_name = ticket.destination_pod.partition("/")
    meta = (pod or {}).get("metadata") or {}
    if pod is None or meta.get("namespace") != pod_ns or meta.get("name") != pod_name:
        raise TransferError(f"pod {ticket.destination_pod} not found")
    if (pod.get("spec") or {}).get("nodeName") != peer:
        raise TransferError(f"pod {ticket.destination_pod} is not on node {peer}")
    want = str((meta.get("annotations") or {}).get(START_FROM_PERSISTENT) or "")
    want_ns, _, want_name = want.rpartition("/")
    if (want_ns or pod_ns, want_name) != path:
        raise TransferError(f"pod {ticket.destination_pod} does not name "
                            f"PersistentCheckpoint {ref}")
    # allowedNamespaces, Ready, an image: the same decision as the destination's.
    d = resolve_start(path, pc, pod_ns)
    if not d.restore or not d.image:
        raise TransferError(d.reason.removesuffix(": starting fresh"))
    if phase_of(pc) != "Ready" or image_node(pc) != self_node:
        raise TransferError(f"PersistentCheckpoint {ref}'s image is not on node {self_node}")
    if not hmac.compare_digest(str(d.image.get("digest") or ""), ticket.digest):
        raise TransferError(f"PersistentCheckpoint {ref} records {d.image.get('digest')}, "
                            f"the ticket {ticket.digest}")


def holder_endpoint(daemon_pods: Iterable[Mapping[str, Any]], node: str, port: int) -> str:
    """https://HOSTIP:PORT of the running daemon on ``node``; TransferError when none."""
    for p in daemon_pods:
        st = p.get("status") or {}
        if ((p.get("spec") or {}).get("nodeName") == node and st.get("phase") == "Running"
                and st.get("hostIP") and not (p.get("metadata") or {}).get("deletionTimestamp")):
            host = str(st["hostIP"])
            return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    raise TransferError(f"no running Architect daemon on node {node} (the image's holder)")


# --- the holder --------------------------------------------------------------

@dataclass
class PersistentServer:
    """The holder's handler of ROUTE (on the transfer server's mutual-TLS port)."""

    root: Path  # the shim's state root: <root>/persistent/<ns>/<name>
    node: str
    key: bytes
    lookup_pc: Lookup
    lookup_pod: Lookup  # (namespace, name) -> the pod
    clock: Callable[[], float] = time.time
    served: int = 0
    refused: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = (request.match_info["namespace"], request.match_info["name"])
        peer = peer_node(
            request.transport.get_extra_info("ssl_object") if request.transport else None)
        try:
            d, raw, m = await self._check(request, path, peer)
        except TransferError as e:
            self.refused += 1
            log.warning("refused PersistentCheckpoint %s/%s to %s: %s", *path,
                        peer or "unknown peer", e)
            return web.Response(status=403, text=f"{e}\n")
        return await self._send(request, d, raw, m, "/".join(path), peer)

    async def _check(self, request: web.Request, path: tuple[str, str],
                     peer: str) -> tuple[Path, bytes, Manifest]:
        if not peer:
            raise TransferError("no client certificate")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != SCHEME or not token.strip():
            raise TransferError(f"missing 'Authorization: {SCHEME} TOKEN' header")
        ticket = verify(token.strip(), self.key, datetime.fromtimestamp(self.clock(), UTC))
        pod_ns, _, pod_name = ticket.destination_pod.partition("/")
        pc, pod = await asyncio.gather(self.lookup_pc(*path), self.lookup_pod(pod_ns, pod_name))
        authorize(ticket, self_node=self.node, peer=peer, path=path, pc=pc, pod=pod)
        d = plan.persistent_dir(self.root, *path)

        def read() -> tuple[bytes, Manifest]:
            if not (d / plan.READY_MARK).exists():
                raise TransferError(f"no ready image of {'/'.join(path)} on node {self.node}")
            try:
                return (d / image.MANIFEST).read_bytes(), image.read_manifest(d)
            except (CheckpointError, OSError) as e:
                raise TransferError(f"image of {'/'.join(path)} on node {self.node}: {e}") from None

        raw, m = await asyncio.to_thread(read)
        got = plan.manifest_digest(d)
        if not hmac.compare_digest(got, ticket.digest):
            raise TransferError(f"image of {'/'.join(path)} on node {self.node} is {got}, "
                                f"the object records {ticket.digest}")
        return d, raw, m

    async def _send(self, request: web.Request, d: Path, raw: bytes, m: Manifest,
                    ref: str, peer: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           MANIFEST_LENGTH: str(len(raw))})
        files = parts(m, ref)
        resp.content_length = len(raw) + sum(size for _, size, _ in files)
        await resp.prepare(request)
        await resp.write(raw)
        t0, sent = time.monotonic(), len(raw)
        for rel, size, _ in files:
            left = size
            with open(d / rel, "rb") as src:
                while left > 0:
                    chunk = await asyncio.to_thread(src.read, min(CHUNK, left))
                    if not chunk:  # shorter than its manifest says: cut, never pad
                        log.error("%s: %s ended %d bytes early", ref, rel, left)
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    await resp.write(chunk)
                    left -= len(chunk)
                    sent += len(chunk)
        await resp.write_eof()
        self.served += 1
        log.info("served PersistentCheckpoint %s to %s (%d bytes, %d files) in %.2fs", ref,
                 peer, sent, len(files), time.monotonic() - t0)
        return resp


# --- the destination ---------------------------------------------------------

def _member(rel: str, where: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise TransferError(f"{where}: manifest path {rel!r} leaves the image")
    return p.as_posix()


def parts(m: Manifest, where: str) -> list[tuple[str, int, FileInfo]]:
    """What moves after manifest.json, in this order: (path in the image dir, size,
    what to check it against). The directory layout: every listed file; a
    stream (runsc's tar of its state file): the payload, checked as one file."""
    if m.payload.compression != image.DIR:
        return [(m.payload.file, m.payload.size,
                 FileInfo(m.payload.file, m.payload.size, m.payload.sha256))]
    return [(f"{m.payload.file}/{_member(f.path, where)}", f.size, f) for f in m.files]


class FileVerifier:
    """One listed file's size and digest as it streams (``image.FileDigest``: a
    chunked file of the directory layout per chunk, as the holder recorded it),
    refusing more than the recorded size."""

    def __init__(self, f: FileInfo) -> None:
        self.f = f
        self._d = image.FileDigest(f.chunk_size)

    def update(self, data: memoryview) -> None:
        if self._d.size + len(data) > self.f.size:
            raise TransferError(f"larger than the recorded {self.f.size} bytes")
        self._d.update(data)

    def finish(self) -> None:
        size, sha, chunks = self._d.result()
        if size != self.f.size:
            raise TransferError(f"{size} bytes, expected {self.f.size}")
        # A chunked file's sha256 is that of its chunk list (checked against the
        # pinned manifest when it was read), so this covers every chunk.
        if not hmac.compare_digest(sha, self.f.sha256):
            raise TransferError(
                f"digest mismatch{image.bad_chunk(chunks, self.f.chunks)}: got sha256:{sha}")


def fetch(endpoint: str, token: str, tls: NodeTLS, d: Path, digest: str, *,
          timeout_s: float = TOTAL_TIMEOUT_S,
          connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, float]:
    """Download the image into ``d`` (blocking): verified files first into a scratch
    directory in ``d``, then moved in; ``d``'s marks are the caller's. Raises
    TransferError; nothing of the image stays in ``d`` then. Seconds taken, by part."""
    ticket = peek(token)
    url = urlsplit(endpoint)
    if url.scheme != "https" or not url.hostname:
        raise TransferError(f"endpoint {endpoint!r} is not an https://HOST:PORT URL")
    scratch = d / f"{SCRATCH}{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    try:
        scratch.mkdir(parents=True)
        raw = _download(endpoint, token, ticket, tls.client_context(), url.hostname,
                        url.port or 443, url.netloc, scratch, digest,
                        time.monotonic() + timeout_s, connect_timeout_s)
        t1 = time.monotonic()
        for child in sorted(scratch.iterdir()):
            os.replace(child, d / child.name)
        (d / image.MANIFEST).write_bytes(raw)  # last: a manifest means every file is in
    except BaseException:
        for p in d.iterdir() if d.is_dir() else ():
            if p.name not in _MARKS:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"download": t1 - t0, "move": time.monotonic() - t1}


_MARKS = frozenset({plan.READY_MARK, plan.PENDING_MARK, plan.NAMESPACE_MARK, plan.GRANT_FILE,
                    plan.UNAVAILABLE_MARK})


def _download(endpoint: str, token: str, ticket: Ticket, ctx: ssl.SSLContext, host: str,
              port: int, netloc: str, scratch: Path, digest: str, deadline: float,
              connect_timeout_s: float) -> bytes:
    ref = f"{ticket.namespace}/{ticket.name}"
    where = f"node {ticket.source_node} ({endpoint})"
    cut = f"download of PersistentCheckpoint {ref} from {where}"
    with (
        peer_errors(cut, ref, where),
        open_download(
            ctx, host, port, netloc,
            f"/v1/persistentcheckpoints/{ticket.namespace}/{ticket.name}", token,
            source_node=ticket.source_node, where=where, ref=ref,
            deadline=deadline, connect_timeout_s=connect_timeout_s,
        ) as (stream, mlen, length),
    ):
        if not 0 < mlen <= MAX_MANIFEST:
            raise TransferError(f"{where}: manifest of {mlen} bytes")
        # The object's digest, not the holder's word.
        raw = read_pinned_manifest(stream, mlen, digest, cut)
        m = image.manifest_from_dict(json.loads(raw), f"{ref} manifest")
        files = parts(m, ref)
        if length != mlen + sum(size for _, size, _ in files):
            raise TransferError(f"{where} sends {length} bytes, the manifest lists "
                                f"{mlen + sum(size for _, size, _ in files)}")
        if m.payload.compression == image.DIR:
            (scratch / m.payload.file / image.ENGINE_DIR).mkdir(parents=True)
        buf = memoryview(bytearray(CHUNK))
        for rel, size, f in files:
            dest = scratch / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            v, left = FileVerifier(f), size
            with open(dest, "xb") as out:
                while left > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    n = stream.readinto(buf[: min(CHUNK, left)])
                    if not n:
                        raise TransferError(f"{cut} was cut short in {rel}")
                    v.update(buf[:n])
                    out.write(buf[:n])
                    left -= n
            try:
                v.finish()
            except TransferError as e:
                raise TransferError(f"{rel}: {e}") from None
        return raw

