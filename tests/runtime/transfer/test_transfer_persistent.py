"""A PersistentCheckpoint's node-local image between two daemons on loopback: the
holder serving a real directory image over mutual TLS, the destination fetching
it with a ticket it signed itself; the holder's checks and the destination's."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane.transfer import TransferError, verify
from architect.engine.tls import CertAuthority, make_ca, make_node_cert
from architect.policy.annotations import START_FROM_PERSISTENT
from architect.runtime.checkpoint import Scope, image
from architect.runtime.shim import plan
from architect.runtime.transfer import NodeTLS, TransferServer
from architect.runtime.transfer import persistent as pt

KEY = b"k" * 32
HOLDER, DST = "node-a", "node-b"


def node_tls(ca: CertAuthority, node: str) -> NodeTLS:
    return NodeTLS.from_cert(node, make_node_cert(ca, node, ["127.0.0.1"]))


def make_image(root: Path, compression: str = "dir") -> Path:
    """A sealed image where the shim keeps a PersistentCheckpoint's: the directory
    layout, or a stream (runsc's: its state file in one tar)."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "checkpoint.img").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "meta.json").write_bytes(b"{}")
    d = plan.persistent_dir(root, "team", "warm")
    image.pack(d, src, (), backend="runsc", backend_version="", scope=Scope.SANDBOX,
               container="", pod_template_hash="", memory_bytes=1, compression=compression)
    (d / plan.READY_MARK).touch()
    return d


def the_pc(d: Path, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": "warm", "uid": "uid-1"},
            "spec": {"sourcePod": "src", "allowedNamespaces": list(allowed)},
            "status": {"phase": "Ready", "image": {
                "location": f"node://{HOLDER}{d}", "digest": plan.manifest_digest(d),
                "sizeBytes": 1}}}


def the_pod(ns: str = "team", node: str = DST, ref: str = "team/warm") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": "new", "annotations": {
        START_FROM_PERSISTENT: ref}}, "spec": {"nodeName": node}}


@dataclass
class Lab:
    ca: CertAuthority
    holder_image: Path
    dest: Path
    pcs: dict[tuple[str, str], dict[str, Any]]
    pods: dict[tuple[str, str], dict[str, Any]]
    endpoint: str
    server: pt.PersistentServer

    def fetch(self, pod_ns: str = "team", key: bytes = KEY, as_node: str = DST,
              ticket_pc: dict[str, Any] | None = None) -> dict[str, float]:
        pc = ticket_pc or self.pcs[("team", "warm")]
        token = pt.token_for(pc, pod_ns, "new", as_node, key, time.time())
        self.dest.mkdir(parents=True, exist_ok=True)
        (self.dest / plan.PENDING_MARK).touch()
        return pt.fetch(self.endpoint, token, node_tls(self.ca, DST), self.dest,
                        pc["status"]["image"]["digest"], timeout_s=20)

    def left(self) -> list[str]:
        return sorted(p.name for p in self.dest.iterdir())


@pytest.fixture(params=["dir", "none"])
async def lab(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    ca = make_ca("architect-transfer-ca")
    d = await asyncio.to_thread(make_image, tmp_path / "a", request.param)
    pcs = {("team", "warm"): the_pc(d, ("friends",))}
    pods = {("team", "new"): the_pod()}

    async def lookup_pc(ns: str, name: str) -> Mapping[str, Any] | None:
        return pcs.get((ns, name))

    async def lookup_pod(ns: str, name: str) -> Mapping[str, Any] | None:
        return pods.get((ns, name))

    async def no_checkpoints(ns: str, name: str) -> None:
        return None

    ps = pt.PersistentServer(tmp_path / "a", HOLDER, KEY, lookup_pc, lookup_pod)
    server = TransferServer(tmp_path / "a", node_tls(ca, HOLDER), KEY, no_checkpoints,
                            routes=((pt.ROUTE, ps.handle),))
    port = await server.start("127.0.0.1", 0)
    dest = plan.persistent_dir(tmp_path / "b", "team", "warm")
    try:
        yield Lab(ca, d, dest, pcs, pods, f"https://127.0.0.1:{port}", ps)
    finally:
        await server.close()


async def test_fetch_copies_every_file_verified_and_the_holder_keeps_its_copy(lab: Lab) -> None:
    took = await asyncio.to_thread(lab.fetch)
    assert took["download"] > 0
    m = image.verify(lab.dest)  # every digest, as the shim checks it
    assert {f.path for f in m.files} == {"engine/checkpoint.img", "engine/sub/meta.json"}
    with_marks = {p.relative_to(lab.holder_image) for p in lab.holder_image.rglob("*")}
    assert {p.relative_to(lab.dest) for p in lab.dest.rglob("*")} == with_marks - {
        Path(plan.READY_MARK)} | {Path(plan.PENDING_MARK)}
    assert plan.manifest_digest(lab.dest) == plan.manifest_digest(lab.holder_image)
    assert plan.PENDING_MARK in lab.left()  # the marks are the daemon's to write
    assert not [p for p in lab.left() if p.startswith(pt.SCRATCH)]
    image.verify(lab.holder_image)
    assert lab.server.served == 1


async def test_a_namespace_not_allowed_is_refused_by_the_holder(lab: Lab) -> None:
    lab.pods[("other", "new")] = the_pod("other")
    with pytest.raises(TransferError, match="does not list namespace other in allowedNamespaces"):
        await asyncio.to_thread(lab.fetch, "other")
    assert lab.left() == [plan.PENDING_MARK]
    assert lab.server.refused == 1


async def test_an_allowed_namespace_is_served(lab: Lab) -> None:
    lab.pods[("friends", "new")] = the_pod("friends")
    await asyncio.to_thread(lab.fetch, "friends")
    image.verify(lab.dest)


@pytest.mark.parametrize(("pod", "why"), [
    (None, "pod team/new not found"),
    (the_pod(node="node-c"), "pod team/new is not on node node-b"),
    (the_pod(ref="team/other"), "pod team/new does not name PersistentCheckpoint team/warm"),
])
async def test_a_pod_the_ticket_does_not_match_is_refused(lab: Lab, pod: Any, why: str) -> None:
    if pod is None:
        del lab.pods[("team", "new")]
    else:
        lab.pods[("team", "new")] = pod
    with pytest.raises(TransferError, match=why):
        await asyncio.to_thread(lab.fetch)
    assert lab.left() == [plan.PENDING_MARK]


async def test_a_tampered_holder_file_is_refused_and_nothing_partial_stays(lab: Lab) -> None:
    f = max((p for p in lab.holder_image.rglob("*") if p.is_file()),
            key=lambda p: p.stat().st_size)  # the state file, or the stream holding it
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(TransferError, match=r"payload[^:]*: digest mismatch"):
        await asyncio.to_thread(lab.fetch)
    assert lab.left() == [plan.PENDING_MARK]


async def test_a_tampered_holder_manifest_is_refused_by_the_holder(lab: Lab) -> None:
    m = lab.holder_image / image.MANIFEST
    m.write_bytes(m.read_bytes().replace(b'"runsc"', b'"runsc "'))
    with pytest.raises(TransferError, match="the object records"):
        await asyncio.to_thread(lab.fetch)
    assert lab.left() == [plan.PENDING_MARK]


async def test_a_ticket_for_another_node_or_under_another_key_is_refused(lab: Lab) -> None:
    with pytest.raises(TransferError, match="is for node node-c; the caller is node-b"):
        await asyncio.to_thread(lab.fetch, "team", KEY, "node-c")
    with pytest.raises(TransferError, match="signature does not verify"):
        await asyncio.to_thread(lab.fetch, "team", b"x" * 32)
    assert lab.server.refused == 2


async def test_a_holder_not_ready_or_replaced_is_refused(lab: Lab) -> None:
    pc = lab.pcs[("team", "warm")]
    lab.pcs[("team", "warm")] = {**pc, "metadata": {**pc["metadata"], "uid": "uid-2"}}
    with pytest.raises(TransferError, match="was replaced"):
        await asyncio.to_thread(lab.fetch, "team", KEY, DST, pc)
    lab.pcs[("team", "warm")] = {**pc, "status": {**pc["status"], "phase": "Failed"}}
    with pytest.raises(TransferError, match="is Failed, not Ready"):
        await asyncio.to_thread(lab.fetch)
    assert lab.left() == [plan.PENDING_MARK]


async def test_a_holder_gone_is_a_transfer_error(lab: Lab) -> None:
    bad = replace(lab, endpoint="https://127.0.0.1:1")
    with pytest.raises(TransferError, match="failed"):
        await asyncio.to_thread(bad.fetch)
    assert bad.left() == [plan.PENDING_MARK]


def test_token_names_the_pod_and_both_nodes(tmp_path: Path) -> None:
    d = make_image(tmp_path)
    t = verify(pt.token_for(the_pc(d), "friends", "p", DST, KEY, 1000.0), KEY,
               datetime.fromtimestamp(1000, UTC))
    assert (t.source_node, t.destination_node, t.destination_pod, t.uid) == (
        HOLDER, DST, "friends/p", "uid-1")
    assert t.expires_at == 1000 + pt.TICKET_TTL_S


@pytest.mark.parametrize(("pods", "want"), [
    ([{"spec": {"nodeName": "n2"}, "status": {"phase": "Running", "hostIP": "10.0.0.2"}}],
     "https://10.0.0.2:9447"),
    ([{"spec": {"nodeName": "n2"}, "status": {"phase": "Running", "hostIP": "fd00::2"}}],
     "https://[fd00::2]:9447"),
])
def test_holder_endpoint(pods: list[dict[str, Any]], want: str) -> None:
    assert pt.holder_endpoint(pods, "n2", 9447) == want


def test_no_running_daemon_on_the_holder_is_said() -> None:
    pending = [{"spec": {"nodeName": "n2"}, "status": {"phase": "Pending", "hostIP": "1.2.3.4"}}]
    with pytest.raises(TransferError, match="no running Architect daemon on node n2"):
        pt.holder_endpoint(pending, "n2", 9447)


# --- FileVerifier: a listed file as it streams (chunked or whole) ---------------


def _info(data: bytes, chunk_size: int) -> Any:
    from architect.runtime.checkpoint.api import FileInfo

    d = image.FileDigest(chunk_size)
    d.update(data)
    size, sha, chunks = d.result()
    return FileInfo(path="pages-1.img", size=size, sha256=sha, chunk_size=chunk_size,
                    chunks=chunks)


def _stream(f: Any, data: bytes, step: int = 1000) -> None:
    v = pt.FileVerifier(f)
    for o in range(0, len(data), step):
        v.update(memoryview(data[o : o + step]))
    v.finish()


@pytest.mark.parametrize("chunk_size", [0, 4096])
def test_file_verifier_takes_the_recorded_bytes(chunk_size: int) -> None:
    data = os.urandom(40_000)
    _stream(_info(data, chunk_size), data)


@pytest.mark.parametrize(("where", "chunk"), [(10, 0), (20_000, 4), (39_999, 9)])
def test_file_verifier_names_the_changed_chunk(where: int, chunk: int) -> None:
    data = os.urandom(40_000)
    f = _info(data, 4096)
    bad = bytearray(data)
    bad[where] ^= 1
    with pytest.raises(TransferError, match=f"digest mismatch in chunk {chunk}:"):
        _stream(f, bytes(bad))


@pytest.mark.parametrize("chunk_size", [0, 4096])
def test_file_verifier_refuses_another_length(chunk_size: int) -> None:
    data = os.urandom(40_000)
    f = _info(data, chunk_size)
    with pytest.raises(TransferError, match="larger than the recorded 40000 bytes"):
        _stream(f, data + b"x")
    with pytest.raises(TransferError, match="39999 bytes, expected 40000"):
        _stream(f, data[:-1])
