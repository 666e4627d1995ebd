"""The source daemon's HTTPS server: serves packed checkpoint images to peers.

``GET /v1/checkpoints/NS/NAME`` with ``Authorization: Architect-Ticket TOKEN``
over mutual TLS. The response body is manifest.json followed by the payload
(``Architect-Manifest-Length`` says where one ends). Served only when the
ticket verifies, names this node as source and the caller's certificate CN as
destination, the Checkpoint is Restoring for the ticket's pod with the
ticket's uid, and the image on disk still has the ticket's digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from architect.engine.controlplane.transfer import SCHEME, TransferError, authorize, verify
from architect.policy.annotations import DESTINATION_ANNOTATION
from architect.runtime.checkpoint import image
from architect.runtime.checkpoint.errors import CheckpointError
from architect.runtime.transfer.images import outgoing_dir
from architect.runtime.transfer.tls import NodeTLS, peer_node

log = logging.getLogger("architect.transfer")

DEFAULT_PORT = 9447
MANIFEST_LENGTH = "Architect-Manifest-Length"
CHUNK = 1 << 20

# (namespace, name) -> the Checkpoint object as the API server has it, or None.
Lookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TransferServer:
    root: Path
    tls: NodeTLS
    key: bytes
    lookup: Lookup
    clock: Callable[[], float] = time.time
    served: int = 0  # images served in full
    refused: int = 0
    routes: tuple[tuple[str, Handler], ...] = ()  # more GET routes on the same port
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> int:
        """Listen; returns the bound port (pass port 0 for any free one)."""
        app = web.Application()
        app.router.add_get("/v1/checkpoints/{namespace}/{name}", self._get)
        for path, handler in self.routes:
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.tls.server_context())
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets there
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        peer = peer_node(
            request.transport.get_extra_info("ssl_object") if request.transport else None
        )
        try:
            image_dir, manifest = await self._check(request, ns, name, peer)
        except Refused as r:
            self.refused += 1
            log.warning("refused %s/%s to %s: %s", ns, name, peer or "unknown peer", r)
            return web.Response(status=r.status, text=str(r) + "\n")
        return await self._send(request, image_dir, manifest, f"{ns}/{name}", peer)

    async def _check(
        self, request: web.Request, ns: str, name: str, peer: str
    ) -> tuple[Path, bytes]:
        if not peer:
            raise Refused(401, "no client certificate")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != SCHEME or not token.strip():
            raise Refused(401, f"missing 'Authorization: {SCHEME} TOKEN' header")
        try:
            ticket = verify(token.strip(), self.key, datetime.fromtimestamp(self.clock(), UTC))
        except TransferError as e:
            raise Refused(403, str(e)) from None
        if (ticket.namespace, ticket.name) != (ns, name):
            raise Refused(403, f"ticket is for {ticket.namespace}/{ticket.name}, not {ns}/{name}")
        checkpoint = await self.lookup(ns, name)
        try:
            authorize(ticket, self_node=self.tls.node, peer_node=peer, checkpoint=checkpoint)
        except TransferError as e:
            raise Refused(403, str(e)) from None
        assert checkpoint is not None  # authorize refuses None
        # The control plane records where it granted the transfer; a ticket is
        # not enough on its own (every daemon holds the key that signs them).
        ann = (checkpoint.get("metadata") or {}).get("annotations") or {}
        granted = ann.get(DESTINATION_ANNOTATION)
        if granted is not None and granted != peer:
            raise Refused(403, f"Checkpoint {ns}/{name} was granted to {granted}, not {peer}")
        spec = checkpoint.get("spec") or {}
        try:
            image_dir = outgoing_dir(
                self.root, str(spec.get("templateHash") or ""), str(spec.get("container") or ""),
                ticket.digest,
            )
        except TransferError as e:
            raise Refused(409, f"Checkpoint {ns}/{name}: {e}") from None
        try:
            m = await asyncio.to_thread(image.read_manifest, image_dir)
            raw = await asyncio.to_thread((image_dir / image.MANIFEST).read_bytes)
        except (CheckpointError, OSError) as e:
            raise Refused(404, f"no image for {ns}/{name} on {self.tls.node}: {e}") from None
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if (
            not hmac.compare_digest(digest, ticket.digest)
            or len(raw) + m.payload.size != ticket.size_bytes
        ):
            raise Refused(
                409,
                f"image of {ns}/{name} on {self.tls.node} is {digest} ({len(raw) + m.payload.size} "
                f"bytes), the ticket says {ticket.digest} ({ticket.size_bytes} bytes)",
            )
        return image_dir, raw

    async def _send(
        self, request: web.Request, image_dir: Path, manifest: bytes, ref: str, peer: str
    ) -> web.StreamResponse:
        m = image.manifest_from_dict(json.loads(manifest), str(image_dir))
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                MANIFEST_LENGTH: str(len(manifest)),
            }
        )
        resp.content_length = len(manifest) + m.payload.size
        await resp.prepare(request)
        await resp.write(manifest)
        sent = 0
        with open(image_dir / m.payload.file, "rb") as f:
            while sent < m.payload.size:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, m.payload.size - sent))
                if not chunk:
                    # The file shrank under us: cut the connection, so the peer
                    # sees a short body rather than a complete-looking one.
                    log.error("%s: payload ended after %d of %d bytes", ref, sent, m.payload.size)
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await resp.write(chunk)
                sent += len(chunk)
        await resp.write_eof()
        self.served += 1
        log.info("served %s to %s (%d bytes)", ref, peer, len(manifest) + sent)
        return resp


async def serve(
    root: Path,
    tls: NodeTLS,
    *,
    key: bytes,
    lookup: Lookup,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    routes: tuple[tuple[str, Handler], ...] = (),
) -> tuple[TransferServer, int]:
    """Start serving ``root/outgoing``; returns the server (``await s.close()``) and its port."""
    server = TransferServer(root, tls, key, lookup, routes=routes)
    return server, await server.start(host, port)
