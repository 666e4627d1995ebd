"""Two daemons on loopback: a source serving a real packed image, a destination
fetching it, with node certificates from one CA and control-plane tickets."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from architect.engine.controlplane.transfer import (
    Grant,
    Ticket,
    TransferError,
    grant_data,
    grant_from_data,
    issue,
)
from architect.engine.tls import CertAuthority, make_ca, make_node_cert
from architect.runtime.checkpoint import image
from architect.runtime.shim.plan import PENDING_MARK, READY_MARK, destination_slot, source_slot
from architect.runtime.transfer import (
    NodeTLS,
    TransferServer,
    export,
    fetch,
    mark_pending,
    ticket_key_from_dir,
)
from architect.runtime.transfer.images import ImageRef, outgoing_dir

KEY = b"k" * 32
SRC, DST = "node-a", "node-b"
HASH, CONTAINER = "7c9d8f", "web"
# The source pod's handover, and where a fetch for the ticket's pod (ns/web-new) goes.
SRC_SLOT, DEST_SLOT = source_slot("ns", "web-old"), destination_slot("ns", "web-new")


def node_tls(ca: CertAuthority, node: str, as_node: str | None = None) -> NodeTLS:
    return replace(
        NodeTLS.from_cert(node, make_node_cert(ca, node, ["127.0.0.1"])), node=as_node or node
    )


@dataclass
class Lab:
    tmp: Path
    ca: CertAuthority
    src_root: Path
    dst_root: Path
    ref: ImageRef
    checkpoints: dict[tuple[str, str], dict[str, Any]]
    server: TransferServer
    endpoint: str
    files: dict[str, bytes]

    def ticket(self, **kw: Any) -> Ticket:
        base: dict[str, Any] = dict(
            namespace="ns",
            name="ck",
            uid="uid-1",
            digest=self.ref.digest,
            size_bytes=self.ref.size_bytes,
            source_node=SRC,
            destination_node=DST,
            destination_pod="web-new",
            expires_at=int((datetime.now(UTC) + timedelta(minutes=5)).timestamp()),
        )
        base.update(kw)
        return Ticket(**base)

    def grant(self, key: bytes = KEY, endpoint: str | None = None, **kw: Any) -> Grant:
        return Grant(endpoint or self.endpoint, issue(self.ticket(**kw), key), HASH, CONTAINER)

    @property
    def dest(self) -> Path:
        """The ticket's replacement pod's slot (plan.destination_slot)."""
        return self.dst_root / "handover" / HASH / CONTAINER / DEST_SLOT

    def assert_nothing_ready(self) -> None:
        assert not (self.dest / READY_MARK).exists()
        leftovers = (
            list((self.dst_root / "handover").rglob("*"))
            if (self.dst_root / "handover").exists()
            else []
        )
        assert leftovers == [], f"left behind: {leftovers}"


def make_handover(root: Path) -> dict[str, bytes]:
    """A shim-style handover: raw engine files and the ready mark."""
    d = root / "handover" / HASH / CONTAINER / SRC_SLOT
    (d / "sub").mkdir(parents=True)
    files = {
        "pages-1.img": os.urandom(3 << 20),
        "core-1.img": b"core" * 1000,
        "sub/inventory.img": b"inv",
    }
    for rel, data in files.items():
        (d / rel).write_bytes(data)
    (d / READY_MARK).touch()
    return files


async def _lookup_in(
    store: Mapping[tuple[str, str], dict[str, Any]], ns: str, name: str
) -> Mapping[str, Any] | None:
    return store.get((ns, name))


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    ca = make_ca("architect-transfer-ca")
    src_root, dst_root = tmp_path / "a", tmp_path / "b"
    files = make_handover(src_root)
    ref = await asyncio.to_thread(export, src_root, SRC, HASH, CONTAINER, SRC_SLOT,
                                  compression="zstd")
    store: dict[tuple[str, str], dict[str, Any]] = {
        ("ns", "ck"): {
            "metadata": {"namespace": "ns", "name": "ck", "uid": "uid-1"},
            "spec": {
                "templateHash": HASH,
                "container": CONTAINER,
                "sourceNode": SRC,
                "image": ref.as_spec(),
            },
            "status": {"phase": "Restoring", "consumedBy": "web-new"},
        }
    }

    async def lookup(ns: str, name: str) -> Mapping[str, Any] | None:
        return await _lookup_in(store, ns, name)

    server = TransferServer(src_root, node_tls(ca, SRC), KEY, lookup)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Lab(
            tmp_path, ca, src_root, dst_root, ref, store, server, f"https://127.0.0.1:{port}", files
        )
    finally:
        await server.close()


# --- the good path -------------------------------------------------------------


async def test_fetch_moves_the_image_and_marks_it_ready(lab: Lab) -> None:
    dest = await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    assert dest == lab.dest
    for rel, data in lab.files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / READY_MARK).exists() and not (dest / PENDING_MARK).exists()
    assert sorted(p.name for p in (lab.dst_root / "handover" / HASH / CONTAINER).iterdir()) == [
        DEST_SLOT]
    assert lab.server.served == 1 and lab.server.refused == 0


async def test_export_records_the_manifest_digest_and_total_size(lab: Lab) -> None:
    out = outgoing_dir(lab.src_root, HASH, CONTAINER, lab.ref.digest)
    m = image.read_manifest(out)
    raw = (out / image.MANIFEST).read_bytes()
    import hashlib

    assert lab.ref.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert lab.ref.size_bytes == len(raw) + m.payload.size
    assert lab.ref.location == f"node://{SRC}/outgoing/{HASH}/{CONTAINER}/{out.name}"
    assert out.name == lab.ref.digest.removeprefix("sha256:")


def test_export_refuses_a_handover_that_is_not_ready(tmp_path: Path) -> None:
    make_handover(tmp_path)
    (tmp_path / "handover" / HASH / CONTAINER / SRC_SLOT / READY_MARK).unlink()
    with pytest.raises(TransferError, match="no ready handover image"):
        export(tmp_path, SRC, HASH, CONTAINER, SRC_SLOT)


# --- authentication ------------------------------------------------------------


async def test_client_cert_from_another_ca_is_refused(lab: Lab) -> None:
    stranger = node_tls(make_ca("another-ca"), DST)
    # The stranger trusts our CA (so only its own certificate is wrong).
    stranger = replace(stranger, ca_pem=lab.ca.cert_pem)
    with pytest.raises(TransferError, match="closed the connection without answering"):
        await fetch(lab.grant(), lab.dst_root, stranger)
    lab.assert_nothing_ready()
    assert lab.server.served == 0


async def test_client_cert_of_another_node_is_refused(lab: Lab) -> None:
    # A node of this cluster, but not the one the ticket names.
    intruder = node_tls(lab.ca, "node-c", as_node=DST)
    with pytest.raises(TransferError, match=r"is for node node-b; the caller is node-c"):
        await fetch(lab.grant(), lab.dst_root, intruder)
    lab.assert_nothing_ready()


async def test_server_cert_from_another_ca_is_refused(lab: Lab, tmp_path: Path) -> None:
    other = node_tls(make_ca("another-ca"), SRC)
    rogue = TransferServer(
        lab.src_root, replace(other, ca_pem=lab.ca.cert_pem), KEY, lab.server.lookup
    )
    port = await rogue.start("127.0.0.1", 0)
    try:
        with pytest.raises(TransferError, match="certificate verify failed"):
            await fetch(
                lab.grant(endpoint=f"https://127.0.0.1:{port}"), lab.dst_root, node_tls(lab.ca, DST)
            )
    finally:
        await rogue.close()
    lab.assert_nothing_ready()


async def test_server_of_another_node_is_refused(lab: Lab) -> None:
    other = TransferServer(lab.src_root, node_tls(lab.ca, "node-c"), KEY, lab.server.lookup)
    port = await other.start("127.0.0.1", 0)
    try:
        with pytest.raises(
            TransferError, match="certificate for node-c, not the source node node-a"
        ):
            await fetch(
                lab.grant(endpoint=f"https://127.0.0.1:{port}"), lab.dst_root, node_tls(lab.ca, DST)
            )
    finally:
        await other.close()
    lab.assert_nothing_ready()


async def _get(lab: Lab, headers: dict[str, str]) -> tuple[int, str]:
    ctx = node_tls(lab.ca, DST).client_context()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{lab.endpoint}/v1/checkpoints/ns/ck", headers=headers, ssl=ctx) as resp,
    ):
        return resp.status, await resp.text()


async def test_missing_ticket_is_refused(lab: Lab) -> None:
    assert await _get(lab, {}) == (401, "missing 'Authorization: Architect-Ticket TOKEN' header\n")
    status, text = await _get(lab, {"Authorization": "Bearer x"})
    assert status == 401 and "Architect-Ticket" in text


async def test_malformed_ticket_is_refused(lab: Lab) -> None:
    assert await _get(lab, {"Authorization": "Architect-Ticket nonsense"}) == (
        403,
        "malformed ticket\n",
    )


async def test_expired_ticket_is_refused(lab: Lab) -> None:
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp())
    with pytest.raises(TransferError, match=r"refused ns/ck: 403 ticket for ns/ck has expired"):
        await fetch(lab.grant(expires_at=past), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_ticket_under_another_key_is_refused(lab: Lab) -> None:
    with pytest.raises(TransferError, match="signature does not verify"):
        await fetch(lab.grant(key=b"x" * 32), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_ticket_for_another_source_is_refused(lab: Lab) -> None:
    grant = lab.grant(source_node="node-z")
    # The client sees node-a's certificate where it expects node-z ...
    with pytest.raises(TransferError, match="certificate for node-a, not the source node node-z"):
        await fetch(grant, lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()
    # ... and node-a refuses a ticket that names another source anyway.
    status, text = await _get(lab, {"Authorization": f"Architect-Ticket {grant.token}"})
    assert (status, text) == (403, "ticket for ns/ck names source node node-z, not node-a\n")


async def test_grant_for_another_destination_is_refused_before_connecting(lab: Lab) -> None:
    with pytest.raises(TransferError, match="is for node node-c, this is node-b"):
        await fetch(lab.grant(destination_node="node-c"), lab.dst_root, node_tls(lab.ca, DST))
    assert lab.server.refused == 0


async def test_checkpoint_not_restoring_for_the_pod_is_refused(lab: Lab) -> None:
    lab.checkpoints[("ns", "ck")]["status"] = {"phase": "Ready"}
    with pytest.raises(TransferError, match="not being restored by web-new"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.checkpoints[("ns", "ck")]["metadata"]["uid"] = "uid-2"
    with pytest.raises(TransferError, match="was replaced since the ticket was issued"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    del lab.checkpoints[("ns", "ck")]
    with pytest.raises(TransferError, match="no longer exists"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_checkpoint_granted_to_another_node_is_refused(lab: Lab) -> None:
    # A daemon holds the ticket key, so it could sign a ticket for itself: the
    # control plane's record of the destination on the Checkpoint decides.
    meta = lab.checkpoints[("ns", "ck")]["metadata"]
    meta["annotations"] = {"architect.loopholelabs.io/transfer-destination": "node-c"}
    with pytest.raises(TransferError, match="was granted to node-c, not node-b"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_ticket_for_another_checkpoint_is_refused(lab: Lab) -> None:
    grant = lab.grant(name="other")
    ctx_status, text = await _get(lab, {"Authorization": f"Architect-Ticket {grant.token}"})
    assert (ctx_status, text) == (403, "ticket is for ns/other, not ns/ck\n")


# --- integrity -----------------------------------------------------------------


async def test_tampered_payload_is_refused(lab: Lab) -> None:
    out = outgoing_dir(lab.src_root, HASH, CONTAINER, lab.ref.digest)
    payload = next(p for p in out.iterdir() if p.name.startswith("payload"))
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(TransferError, match="digest mismatch"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_tampered_manifest_is_refused_by_the_source(lab: Lab) -> None:
    manifest = outgoing_dir(lab.src_root, HASH, CONTAINER, lab.ref.digest) / image.MANIFEST
    manifest.write_text(manifest.read_text().replace('"memory_bytes"', '"memory_bytes" ', 1))
    with pytest.raises(
        TransferError, match=r"409 image of ns/ck on node-a is sha256:.*the ticket says"
    ):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def test_ticket_with_another_digest_is_refused(lab: Lab) -> None:
    # The control plane recorded another image than the one packed here: the
    # source has none by that digest and refuses before sending.
    with pytest.raises(TransferError, match=r"404 no image for ns/ck on node-a: .*/0000"):
        await fetch(lab.grant(digest="sha256:" + "0" * 64), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


async def _relay(limit: int, upstream_port: int) -> tuple[asyncio.Server, int]:
    """A TCP relay that passes at most ``limit`` bytes downstream, then cuts the
    connection: TLS stays end to end, the download is really cut short."""

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            sent = 0
            while sent < limit and (data := await ur.read(min(65536, limit - sent))):
                cw.write(data)
                await cw.drain()
                sent += len(data)
            cw.transport.abort()
            uw.transport.abort()

        task = asyncio.create_task(up())
        await down()
        task.cancel()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_truncated_download_is_refused(lab: Lab) -> None:
    port = int(lab.endpoint.rsplit(":", 1)[1])
    relay, rport = await _relay(lab.ref.size_bytes // 2, port)
    try:
        with pytest.raises(TransferError, match="cut short"):
            await fetch(
                lab.grant(endpoint=f"https://127.0.0.1:{rport}"),
                lab.dst_root,
                node_tls(lab.ca, DST),
            )
    finally:
        relay.close()
    lab.assert_nothing_ready()


async def test_a_ready_image_at_the_destination_is_not_overwritten(lab: Lab) -> None:
    lab.dest.mkdir(parents=True)
    (lab.dest / READY_MARK).touch()
    (lab.dest / "mine").write_text("local")
    with pytest.raises(TransferError, match="already holds a ready image"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    assert (lab.dest / "mine").read_text() == "local"


async def test_pending_mark_then_failure_leaves_nothing(lab: Lab) -> None:
    mark_pending(lab.dst_root, HASH, CONTAINER, DEST_SLOT)
    assert (lab.dest / PENDING_MARK).exists()
    with pytest.raises(TransferError):
        await fetch(lab.grant(key=b"x" * 32), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()


# --- grants --------------------------------------------------------------------


def test_grant_round_trips_through_secret_data(lab: Lab) -> None:
    g = lab.grant()
    assert grant_from_data(grant_data(g)) == g
    assert g.ticket.destination_node == DST


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "missing ticket, endpoint, templateHash"),
        ({"ticket": "a.b", "endpoint": "http://x", "templateHash": "h"}, "is not an https:// URL"),
        ({"ticket": "nonsense", "endpoint": "https://x", "templateHash": "h"}, "malformed ticket"),
    ],
)
def test_bad_grant_data_is_named(data: dict[str, str], message: str) -> None:
    with pytest.raises(TransferError, match=message):
        grant_from_data(data, "Secret ns/grant")


@pytest.mark.parametrize("bad", ["", "..", "a/b", ".hidden"])
def test_path_components_are_checked(tmp_path: Path, bad: str) -> None:
    with pytest.raises(TransferError, match="cannot name a directory"):
        mark_pending(tmp_path, bad, CONTAINER, DEST_SLOT)
    with pytest.raises(TransferError, match=r"handover slot .* cannot name a directory"):
        mark_pending(tmp_path, HASH, CONTAINER, bad)


def test_tls_from_a_mounted_secret_dir(tmp_path: Path) -> None:
    ca = make_ca("ca")
    cert = make_node_cert(ca, "node-x", ["10.0.0.7"])
    (tmp_path / "ca.crt").write_bytes(cert.ca_pem)
    (tmp_path / "tls.crt").write_bytes(cert.cert_pem)
    (tmp_path / "tls.key").write_bytes(cert.key_pem)
    tls = NodeTLS.from_dir(tmp_path)
    assert tls.node == "node-x"
    assert isinstance(tls.server_context(), ssl.SSLContext)
    with pytest.raises(TransferError, match="ticket key: No such file"):
        ticket_key_from_dir(tmp_path)
    (tmp_path / "ticket.key").write_bytes(b"short")
    with pytest.raises(TransferError, match="5 bytes, want at least 32"):
        ticket_key_from_dir(tmp_path)
    (tmp_path / "ticket.key").write_bytes(KEY)
    assert ticket_key_from_dir(tmp_path) == KEY
    (tmp_path / "tls.key").unlink()
    with pytest.raises(TransferError, match="No such file"):
        NodeTLS.from_dir(tmp_path)


async def test_source_payload_shrinking_mid_serve_cuts_the_connection(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's disk loses the payload's end after the checks: the source
    cuts the connection, so the body is short rather than complete-looking."""
    real = image.read_manifest

    def read_then_truncate(image_dir: Path) -> Any:
        m = real(image_dir)
        with open(image_dir / m.payload.file, "r+b") as f:
            f.truncate(m.payload.size // 2)
        return m

    monkeypatch.setattr(image, "read_manifest", read_then_truncate)  # the module the server uses
    with pytest.raises(TransferError, match="cut short"):
        await fetch(lab.grant(), lab.dst_root, node_tls(lab.ca, DST))
    lab.assert_nothing_ready()
    assert lab.server.served == 0
