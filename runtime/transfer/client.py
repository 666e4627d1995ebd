"""The destination daemon's side: download, verify, hand over to the shim.

The image streams into a scratch directory beside the handover directory
through two ``DigestVerifier``s (manifest against the ticket's digest, payload
against the manifest's), is unpacked with every file's digest checked
(``runtime.checkpoint.image.unpack``), and only then moved into the handover
directory and marked ``ready``. Any failure removes the scratch directory and
the handover directory (with its ``pending`` mark): a partial image is never
marked ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from architect.engine.controlplane.transfer import SCHEME, DigestVerifier, Grant, TransferError
from architect.runtime.checkpoint import image
from architect.runtime.checkpoint.errors import CheckpointError
from architect.runtime.shim.plan import (
    NAMESPACE_MARK,
    PENDING_MARK,
    READY_MARK,
    destination_slot,
    mark_slot_pending,
    prune_handover_parents,
)
from architect.runtime.transfer.images import MARKS, incoming_dir
from architect.runtime.transfer.server import CHUNK, MANIFEST_LENGTH
from architect.runtime.transfer.tls import NodeTLS, peer_node

log = logging.getLogger("architect.transfer")

MAX_MANIFEST = 64 << 20  # a manifest lists files; more than this is not one
MAX_HEADERS = 100
LINE_MAX = 64 << 10
IDLE_TIMEOUT_S = 30.0  # no byte for this long: the peer is gone
CONNECT_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 600.0


def mark_pending(root: Path, template_hash: str, container: str, slot: str) -> Path:
    """Tell the shim an image is on its way (it waits up to scaleup-timeout).

    Call it as soon as the grant is seen, before the replacement container is
    created; ``fetch`` marks it too. ``slot``: plan.destination_slot of the pod."""
    d = incoming_dir(root, template_hash, container, slot)
    if not mark_slot_pending(d):
        raise TransferError(f"{d} already holds a ready image")
    return d


async def fetch(
    grant: Grant,
    root: Path,
    tls: NodeTLS,
    *,
    timeout_s: float = TOTAL_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    timings: dict[str, float] | None = None,
) -> Path:
    """Download the granted image into ``root``'s handover directory; its path.

    Raises TransferError naming the check that failed; nothing is left marked
    ready then. ``timings`` (if given) gets the seconds of ``download`` and
    ``unpack`` (per-file digests, hand-over).
    """
    timings = {} if timings is None else timings
    ticket = grant.ticket
    if ticket.destination_node != tls.node:
        raise TransferError(
            f"grant for {ticket.namespace}/{ticket.name} is for node {ticket.destination_node}, "
            f"this is {tls.node}"
        )
    # The replacement pod's own slot: never another replica's.
    dest = mark_pending(root, grant.template_hash, grant.container,
                        destination_slot(ticket.namespace, ticket.destination_pod))
    staging = dest.parent / f".{dest.name}.incoming-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        t0 = time.monotonic()
        await _download(grant, tls, staging / "image", timeout_s, connect_timeout_s)
        timings["download"] = time.monotonic() - t0
        unpacked = staging / "unpacked"
        try:
            await asyncio.to_thread(image.unpack, staging / "image", unpacked)
        except CheckpointError as e:
            raise TransferError(f"image of {ticket.namespace}/{ticket.name}: {e.message}") from None
        for child in sorted((unpacked / image.ENGINE_DIR).iterdir()):
            if child.name not in MARKS:  # the source's marks are not ours
                os.replace(child, dest / child.name)
        # The Checkpoint's namespace: only its pods may restore the image.
        (dest / NAMESPACE_MARK).write_text(ticket.namespace, encoding="utf-8")
        (dest / READY_MARK).touch()  # last: the shim restores once it sees this
        (dest / PENDING_MARK).unlink(missing_ok=True)
        timings["unpack"] = time.monotonic() - t0 - timings["download"]
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not dest.exists():  # failed: the empty parents go too
            prune_handover_parents(dest)
    log.info("fetched %s/%s from %s into %s", ticket.namespace, ticket.name, grant.endpoint, dest)
    return dest


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]  # lower-cased names


def _read_head(stream: io.BufferedReader, where: str) -> _Head:
    """Status line and headers of an HTTP/1.1 response (our server's: no chunking)."""
    line = stream.readline(LINE_MAX)
    if not line:
        # TLS 1.3 checks the client certificate after the handshake: a refusal
        # arrives as a closed connection.
        raise TransferError(
            f"{where} closed the connection without answering "
            "(it did not accept this node's certificate?)"
        )
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransferError(f"{where}: not an HTTP response ({line[:80]!r})")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        raw = stream.readline(LINE_MAX)
        if raw in (b"\r\n", b"\n", b""):
            return _Head(int(parts[1]), headers)
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise TransferError(f"{where}: more than {MAX_HEADERS} response headers")


def _read_exactly(stream: io.BufferedReader, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise TransferError(f"{what} was cut short after {len(data)} of {n} bytes")
    return data


async def _download(
    grant: Grant, tls: NodeTLS, image_dir: Path, timeout_s: float, connect_timeout_s: float
) -> None:
    # Blocking TLS in a worker thread: about twice asyncio's SSL throughput, and
    # the event loop stays free. Every socket operation has a timeout, and the
    # whole download a deadline, so the thread always ends.
    url = urlsplit(grant.endpoint)
    if url.scheme != "https" or not url.hostname:
        raise TransferError(f"endpoint {grant.endpoint!r} is not an https://HOST:PORT URL")
    image_dir.mkdir()
    ctx = tls.client_context()
    await asyncio.to_thread(
        _download_sync,
        grant,
        ctx,
        url.hostname,
        url.port or 443,
        url.netloc,
        image_dir,
        time.monotonic() + timeout_s,
        connect_timeout_s,
    )


def _download_sync(
    grant: Grant,
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    netloc: str,
    image_dir: Path,
    deadline: float,
    connect_timeout_s: float,
) -> None:
    ticket = grant.ticket
    ref = f"{ticket.namespace}/{ticket.name}"
    where = grant.endpoint
    cut = f"download of {ref} from {where}"
    with (
        peer_errors(f"transfer of {ref} from {where}", ref, where),
        open_download(
            ctx, host, port, netloc, f"/v1/checkpoints/{ticket.namespace}/{ticket.name}",
            grant.token, source_node=ticket.source_node, where=where, ref=ref,
            deadline=deadline, connect_timeout_s=connect_timeout_s,
        ) as (stream, mlen, length),
    ):
        if not 0 < mlen <= min(MAX_MANIFEST, ticket.size_bytes) or length != ticket.size_bytes:
            raise TransferError(
                f"{where}: sends {length} bytes (manifest {mlen}), "
                f"the ticket says {ticket.size_bytes}"
            )
        # The manifest the source recorded, signed into the ticket.
        raw = read_pinned_manifest(stream, mlen, ticket.digest, cut)
        manifest = image.manifest_from_dict(json.loads(raw), f"{ref} manifest")
        payload = DigestVerifier("sha256:" + manifest.payload.sha256, manifest.payload.size)
        got, want = 0, length - mlen
        buf = memoryview(bytearray(CHUNK))
        with open(image_dir / manifest.payload.file, "xb") as out:
            while got < want:
                if time.monotonic() > deadline:
                    raise TimeoutError
                n = stream.readinto(buf[: min(CHUNK, want - got)])
                if not n:
                    break
                payload.update(buf[:n])  # refuses more than the recorded size
                out.write(buf[:n])
                got += n
        if got < want:
            raise TransferError(f"{cut} was cut short after {mlen + got} of {length} bytes")
        payload.finish()
        (image_dir / image.MANIFEST).write_bytes(raw)


@contextlib.contextmanager
def peer_errors(what: str, ref: str, where: str) -> Iterator[None]:
    """A download's failures as TransferErrors naming ``what``; this node's own
    disk errors (an OSError with a file name) pass as they are."""
    try:
        yield
    except TransferError:
        raise
    except TimeoutError:
        raise TransferError(f"{what} timed out") from None
    except (ValueError, CheckpointError) as e:
        raise TransferError(f"{ref}: bad manifest from {where}: {e}") from None
    except (ssl.SSLError, ConnectionError) as e:
        raise TransferError(f"{what} failed: {e}") from None
    except OSError as e:
        if e.filename is not None:
            raise  # this node's disk, not the peer
        raise TransferError(f"{what} failed: {e}") from None


@contextlib.contextmanager
def open_download(
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    netloc: str,
    path: str,
    token: str,
    *,
    source_node: str,
    where: str,
    ref: str,
    deadline: float,
    connect_timeout_s: float,
) -> Iterator[tuple[io.BufferedReader, int, int]]:
    """GET ``path`` from the source node's transfer port with a ticket: yields the
    body stream, the manifest's length and the whole length, once the peer's
    certificate names ``source_node`` and it answered 200."""
    with (
        socket.create_connection((host, port), timeout=connect_timeout_s) as raw_sock,
        ctx.wrap_socket(raw_sock, server_hostname=host) as sock,
    ):
        sock.settimeout(max(0.1, min(IDLE_TIMEOUT_S, deadline - time.monotonic())))
        peer = peer_node(sock)
        if peer != source_node:
            raise TransferError(
                f"{where} presented a certificate for {peer or 'nobody'}, "
                f"not the source node {source_node}"
            )
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\n"
            f"Authorization: {SCHEME} {token}\r\nConnection: close\r\n\r\n".encode()
        )
        stream = cast(io.BufferedReader, sock.makefile("rb", buffering=CHUNK))
        head = _read_head(stream, where)
        if head.status != 200:
            text = stream.read(4096).decode(errors="replace").strip()
            raise TransferError(f"{where} refused {ref}: {head.status} {text}")
        try:
            mlen = int(head.headers.get(MANIFEST_LENGTH.lower(), ""))
            length = int(head.headers.get("content-length", ""))
        except ValueError:
            raise TransferError(f"{where}: no {MANIFEST_LENGTH} / Content-Length") from None
        yield stream, mlen, length


def read_pinned_manifest(stream: io.BufferedReader, mlen: int, digest: str, what: str) -> bytes:
    """The manifest's ``mlen`` bytes, refused unless they have ``digest``."""
    raw = _read_exactly(stream, mlen, what)
    check = DigestVerifier(digest, mlen)
    check.update(raw)
    check.finish()
    return raw
