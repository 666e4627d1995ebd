"""ttrpc, containerd's small RPC protocol, over asyncio unix sockets.

A frame is a 10-byte big-endian header (payload length u32, stream id u32, type u8,
flags u8) and a protobuf payload: a ``Request`` from the client, a ``Response`` back
on the same stream id (github.com/containerd/ttrpc, channel.go and server.go).
Clients use odd stream ids. Only unary calls exist in the version containerd 1.6
speaks, so a stream is one request and one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from architect.runtime.shim.pb import ttrpc_pb2

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")
HEADER_LEN = HEADER.size  # 10
MAX_MESSAGE = 4 << 20  # ttrpc's messageLengthMax


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2


class Code(enum.IntEnum):
    """gRPC status codes; containerd maps them onto its errdefs errors."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> Code:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class TtrpcError(Exception):
    """An error carried to the peer as a status (code + message)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class FrameError(Exception):
    """The byte stream is not valid ttrpc framing."""


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode_frame(stream_id: int, mtype: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_MESSAGE:
        raise FrameError(f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE} limit")
    return HEADER.pack(len(payload), stream_id, mtype, flags) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes, iterate complete frames (pure, no I/O)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while len(self._buf) >= HEADER_LEN:
            length, sid, mtype, flags = HEADER.unpack_from(self._buf)
            if length > MAX_MESSAGE:
                raise FrameError(f"frame on stream {sid} claims {length} bytes (max {MAX_MESSAGE})")
            if len(self._buf) < HEADER_LEN + length:
                return
            payload = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
            del self._buf[: HEADER_LEN + length]
            yield Frame(sid, mtype, flags, payload)

    @property
    def pending(self) -> int:
        return len(self._buf)


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER_LEN)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise FrameError("connection closed inside a frame header") from e
        return None
    length, sid, mtype, flags = HEADER.unpack(head)
    if length > MAX_MESSAGE:
        raise FrameError(f"frame on stream {sid} claims {length} bytes (max {MAX_MESSAGE})")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise FrameError("connection closed inside a frame payload") from e
    return Frame(sid, mtype, flags, payload)


Handler = Callable[[bytes], Awaitable[bytes]]


def response_for(result: bytes | TtrpcError) -> bytes:
    """Serialize a handler's result (payload or error) as a ttrpc Response."""
    resp = ttrpc_pb2.Response()
    if isinstance(result, TtrpcError):
        resp.status.code = int(result.code)
        resp.status.message = result.message
    else:
        resp.payload = result
    return resp.SerializeToString()


class Server:
    """Serves registered (service, method) handlers on unix-socket connections."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.on_idle: Callable[[], None] | None = None

    @property
    def connections(self) -> int:
        """Open client connections (containerd keeps one per task it has here)."""
        return len(self._conns)

    def register(self, service: str, method: str, handler: Handler) -> None:
        self._handlers[(service, method)] = handler

    async def dispatch(self, payload: bytes) -> bytes:
        """Decode one Request, run its handler, encode the Response."""
        req = ttrpc_pb2.Request()
        try:
            req.ParseFromString(payload)
        except Exception:
            return response_for(TtrpcError(Code.INVALID_ARGUMENT, "malformed ttrpc request"))
        handler = self._handlers.get((req.service, req.method))
        if handler is None:
            return response_for(
                TtrpcError(Code.UNIMPLEMENTED, f"{req.service}/{req.method} is not implemented")
            )
        try:
            return response_for(await handler(req.payload))
        except TtrpcError as e:
            return response_for(e)
        except Exception as e:  # a handler bug must not take the shim down
            log.exception("%s/%s failed", req.service, req.method)
            return response_for(TtrpcError(Code.INTERNAL, f"{type(e).__name__}: {e}"))

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lock = asyncio.Lock()
        calls: set[asyncio.Task[None]] = set()

        async def answer(frame: Frame) -> None:
            body = await self.dispatch(frame.payload)
            async with lock:
                writer.write(encode_frame(frame.stream_id, MessageType.RESPONSE, body))
                await writer.drain()

        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                if frame.type != MessageType.REQUEST:
                    log.warning("ignoring ttrpc frame of type %d", frame.type)
                    continue
                # Calls run concurrently: Wait blocks until exit while State etc. go on.
                t = asyncio.create_task(answer(frame))
                calls.add(t)
                t.add_done_callback(calls.discard)
        except (FrameError, ConnectionError) as e:
            log.warning("ttrpc connection dropped: %s", e)
        finally:
            for t in calls:
                t.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening socket (inherited from `start`)."""

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self.serve_connection(r, w)
            finally:
                self._conns.discard(task)

        self._server = await asyncio.start_unix_server(on_conn, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()


class Client:
    """A unary ttrpc client (for tests and tools; containerd is the real client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next = 1
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._pump = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str) -> Client:
        r, w = await asyncio.open_unix_connection(path.removeprefix("unix://"))
        return cls(r, w)

    async def _read_loop(self) -> None:
        err: Exception = ConnectionError("ttrpc connection closed")
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame is None:
                    break
                fut = self._pending.pop(frame.stream_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame.payload)
        except Exception as e:
            err = e
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    async def call(self, service: str, method: str, payload: bytes) -> bytes:
        sid = self._next
        self._next += 2
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[sid] = fut
        req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
        self._writer.write(encode_frame(sid, MessageType.REQUEST, req.SerializeToString()))
        await self._writer.drain()
        resp = ttrpc_pb2.Response()
        resp.ParseFromString(await fut)
        if resp.status.code != 0:
            raise TtrpcError(Code.of(resp.status.code), resp.status.message)
        return resp.payload

    async def close(self) -> None:
        self._pump.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
