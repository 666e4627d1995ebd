"""ttrpc framing and the unary server/client over a real unix socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from architect.runtime.shim import ttrpc
from architect.runtime.shim.pb import shim_pb2, ttrpc_pb2
from architect.runtime.shim.ttrpc import Code, FrameDecoder, FrameError, TtrpcError


def test_header_layout_is_ttrpc_big_endian() -> None:
    frame = ttrpc.encode_frame(0x01020304, ttrpc.MessageType.REQUEST, b"xyz", flags=0x7)
    assert frame[:4] == struct.pack(">I", 3)
    assert frame[4:8] == bytes([1, 2, 3, 4])
    assert frame[8] == 1 and frame[9] == 7
    assert frame[10:] == b"xyz"
    assert ttrpc.HEADER_LEN == 10


def test_decoder_reassembles_frames_split_anywhere() -> None:
    stream = b"".join(
        ttrpc.encode_frame(sid, ttrpc.MessageType.RESPONSE, bytes([sid]) * sid)
        for sid in (1, 3, 5, 7)
    )
    for cut in range(1, 12):
        dec = FrameDecoder()
        frames = []
        for i in range(0, len(stream), cut):
            frames += list(dec.feed(stream[i : i + cut]))
        assert [f.stream_id for f in frames] == [1, 3, 5, 7]
        assert [f.payload for f in frames] == [bytes([s]) * s for s in (1, 3, 5, 7)]
        assert dec.pending == 0


def test_decoder_rejects_oversized_frame() -> None:
    head = struct.pack(">IIBB", ttrpc.MAX_MESSAGE + 1, 1, 1, 0)
    with pytest.raises(FrameError, match="claims"):
        list(FrameDecoder().feed(head))
    with pytest.raises(FrameError):
        ttrpc.encode_frame(1, 1, b"x" * (ttrpc.MAX_MESSAGE + 1))


async def _serve(tmp_path: Path) -> tuple[ttrpc.Server, str, list[str]]:
    server = ttrpc.Server()
    calls: list[str] = []
    release = asyncio.Event()

    async def echo(payload: bytes) -> bytes:
        req = shim_pb2.StateRequest()
        req.ParseFromString(payload)
        calls.append(req.id)
        if req.id == "slow":
            await release.wait()
        if req.id == "missing":
            raise TtrpcError(Code.NOT_FOUND, "container 'missing': not found")
        if req.id == "boom":
            raise RuntimeError("handler bug")
        return shim_pb2.StateResponse(id=req.id, pid=42).SerializeToString()

    server.register("containerd.task.v2.Task", "State", echo)
    path = str(tmp_path / "t.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    await server.start(sock)
    server.release = release  # type: ignore[attr-defined]
    return server, path, calls


async def test_unary_calls_errors_and_concurrency(tmp_path: Path) -> None:
    server, path, calls = await _serve(tmp_path)
    client = await ttrpc.Client.connect(f"unix://{path}")
    svc = "containerd.task.v2.Task"
    try:
        out = await client.call(svc, "State", shim_pb2.StateRequest(id="c1").SerializeToString())
        resp = shim_pb2.StateResponse()
        resp.ParseFromString(out)
        assert (resp.id, resp.pid) == ("c1", 42)

        with pytest.raises(TtrpcError) as e:
            await client.call(svc, "State", shim_pb2.StateRequest(id="missing").SerializeToString())
        assert e.value.code == Code.NOT_FOUND and "missing" in e.value.message

        with pytest.raises(TtrpcError) as e:
            await client.call(svc, "Nope", b"")
        assert e.value.code == Code.UNIMPLEMENTED

        with pytest.raises(TtrpcError) as e:
            await client.call(svc, "State", shim_pb2.StateRequest(id="boom").SerializeToString())
        assert e.value.code == Code.INTERNAL and "handler bug" in e.value.message

        # A blocked call (like Wait) must not hold up others on the same connection.
        slow = asyncio.create_task(
            client.call(svc, "State", shim_pb2.StateRequest(id="slow").SerializeToString())
        )
        await asyncio.sleep(0.05)
        fast = await asyncio.wait_for(
            client.call(svc, "State", shim_pb2.StateRequest(id="fast").SerializeToString()), 5
        )
        assert fast
        assert not slow.done()
        server.release.set()  # type: ignore[attr-defined]
        assert await asyncio.wait_for(slow, 5)
        assert calls == ["c1", "missing", "boom", "slow", "fast"]
    finally:
        await client.close()
        await server.close()


async def test_garbage_request_gets_invalid_argument(tmp_path: Path) -> None:
    server, path, _ = await _serve(tmp_path)
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(ttrpc.encode_frame(1, ttrpc.MessageType.REQUEST, b"\xff\xff\xff"))
        await writer.drain()
        frame = await asyncio.wait_for(ttrpc.read_frame(reader), 5)
        assert frame is not None and frame.stream_id == 1
        resp = ttrpc_pb2.Response()
        resp.ParseFromString(frame.payload)
        assert resp.status.code == Code.INVALID_ARGUMENT
    finally:
        writer.close()
        await server.close()


async def test_truncated_frame_is_a_frame_error() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">IIBB", 10, 1, 1, 0) + b"abc")
    reader.feed_eof()
    with pytest.raises(FrameError, match="payload"):
        await ttrpc.read_frame(reader)
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await ttrpc.read_frame(empty) is None
