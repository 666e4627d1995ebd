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
import json
import logging
import os
import shutil
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from architect.engine.controlplane.transfer import SCHEME, DigestVerifier, Grant, TransferError
from architect.runtime.checkpoint import image
from architect.runtime.checkpoint.errors import CheckpointError
from architect.runtime.shim.plan import PENDING_MARK, READY_MARK
from architect.runtime.transfer.images import MARKS, incoming_dir
from architect.runtime.transfer.server import CHUNK, MANIFEST_LENGTH
from architect.runtime.transfer.tls import NodeTLS, peer_node

log = logging.getLogger("architect.transfer")

MAX_MANIFEST = 64 << 20  # a manifest lists files; more than this is not one
MAX_HEADERS = 100
CONNECT_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 600.0


def mark_pending(root: Path, template_hash: str, container: str) -> Path:
    """Tell the shim an image is on its way (it waits up to scaleup-timeout).

    Call it as soon as the grant is seen, before the replacement container is
    created; ``fetch`` marks it too."""
    d = incoming_dir(root, template_hash, container)
    if (d / READY_MARK).exists():
        raise TransferError(f"{d} already holds a ready image")
    d.mkdir(parents=True, exist_ok=True)
    (d / PENDING_MARK).touch()
    return d


async def fetch(
    grant: Grant,
    root: Path,
    tls: NodeTLS,
    *,
    timeout_s: float = TOTAL_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Path:
    """Download the granted image into ``root``'s handover directory; its path.

    Raises TransferError naming the check that failed; nothing is left marked
    ready then.
    """
    ticket = grant.ticket
    if ticket.destination_node != tls.node:
        raise TransferError(
            f"grant for {ticket.namespace}/{ticket.name} is for node {ticket.destination_node}, "
            f"this is {tls.node}"
        )
    dest = mark_pending(root, grant.template_hash, grant.container)
    staging = dest.parent / f".{grant.container}.incoming-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        await _download(grant, tls, staging / "image", timeout_s, connect_timeout_s)
        unpacked = staging / "unpacked"
        try:
            await asyncio.to_thread(image.unpack, staging / "image", unpacked)
        except CheckpointError as e:
            raise TransferError(f"image of {ticket.namespace}/{ticket.name}: {e.message}") from None
        for child in sorted((unpacked / image.ENGINE_DIR).iterdir()):
            if child.name not in MARKS:  # the source's marks are not ours
                os.replace(child, dest / child.name)
        (dest / READY_MARK).touch()  # last: the shim restores once it sees this
        (dest / PENDING_MARK).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s/%s from %s into %s", ticket.namespace, ticket.name, grant.endpoint, dest)
    return dest


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]  # lower-cased names


async def _read_head(reader: asyncio.StreamReader, where: str) -> _Head:
    """Status line and headers of an HTTP/1.1 response (our server's: no chunking)."""
    line = await reader.readline()
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
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            return _Head(int(parts[1]), headers)
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise TransferError(f"{where}: more than {MAX_HEADERS} response headers")


async def _download(
    grant: Grant, tls: NodeTLS, image_dir: Path, timeout_s: float, connect_timeout_s: float
) -> None:
    ticket = grant.ticket
    ref = f"{ticket.namespace}/{ticket.name}"
    where = grant.endpoint
    url = urlsplit(grant.endpoint)
    if url.scheme != "https" or not url.hostname:
        raise TransferError(f"endpoint {grant.endpoint!r} is not an https://HOST:PORT URL")
    image_dir.mkdir()
    got = 0
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, w = await asyncio.wait_for(
                asyncio.open_connection(
                    url.hostname, url.port or 443, ssl=tls.client_context(), limit=CHUNK
                ),
                connect_timeout_s,
            )
            writer = w
            peer = peer_node(w.get_extra_info("ssl_object"))
            if peer != ticket.source_node:
                raise TransferError(
                    f"{where} presented a certificate for {peer or 'nobody'}, "
                    f"not the source node {ticket.source_node}"
                )
            path = f"/v1/checkpoints/{ticket.namespace}/{ticket.name}"
            w.write(
                f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: {SCHEME} {grant.token}\r\nConnection: close\r\n\r\n".encode()
            )
            await w.drain()
            head = await _read_head(reader, where)
            if head.status != 200:
                text = (await reader.read(4096)).decode(errors="replace").strip()
                raise TransferError(f"{where} refused {ref}: {head.status} {text}")
            try:
                mlen = int(head.headers.get(MANIFEST_LENGTH.lower(), ""))
                length = int(head.headers.get("content-length", ""))
            except ValueError:
                raise TransferError(f"{where}: no {MANIFEST_LENGTH} / Content-Length") from None
            if not 0 < mlen <= min(MAX_MANIFEST, ticket.size_bytes) or length != ticket.size_bytes:
                raise TransferError(
                    f"{where}: sends {length} bytes (manifest {mlen}), "
                    f"the ticket says {ticket.size_bytes}"
                )
            raw = await reader.readexactly(mlen)
            got = mlen
            check = DigestVerifier(ticket.digest, mlen)
            check.update(raw)
            check.finish()  # the manifest the source recorded, signed into the ticket
            manifest = image.manifest_from_dict(json.loads(raw), f"{ref} manifest")
            payload = DigestVerifier("sha256:" + manifest.payload.sha256, manifest.payload.size)
            with open(image_dir / manifest.payload.file, "xb") as out:
                while got < length:
                    chunk = await reader.read(min(CHUNK, length - got))
                    if not chunk:
                        break
                    payload.update(chunk)
                    out.write(chunk)  # page cache: cheaper than a thread hop per chunk
                    got += len(chunk)
            if got < length:
                raise TransferError(
                    f"download of {ref} from {where} was cut short after {got} of {length} bytes"
                )
            payload.finish()
            (image_dir / image.MANIFEST).write_bytes(raw)
    except asyncio.IncompleteReadError:
        raise TransferError(f"download of {ref} from {where} was cut short") from None
    except TimeoutError:
        raise TransferError(f"transfer of {ref} from {where} timed out") from None
    except (ValueError, CheckpointError) as e:
        if isinstance(e, TransferError):
            raise
        raise TransferError(f"{ref}: bad manifest from {where}: {e}") from None
    except (ssl.SSLError, ConnectionError) as e:
        raise TransferError(f"transfer of {ref} from {where} failed: {e}") from None
    except OSError as e:
        if e.filename is not None:
            raise  # this node's disk, not the peer
        raise TransferError(f"transfer of {ref} from {where} failed: {e}") from None
    finally:
        if writer is not None:
            writer.close()
