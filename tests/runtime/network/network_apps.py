"""Tiny "applications" for the network tests, living in a test namespace."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

from architect.runtime.network.netns import NetNs

GREETING = b"hello\n"


@dataclass
class NetPair:
    client_name: str
    pod_name: str
    client_ip: str
    pod_ip: str

    @property
    def pod_ip6(self) -> str:
        """The pod's IPv6 address (a ULA inside the test namespaces only)."""
        octet = int(self.pod_ip.split(".")[2])
        return f"fd00:213:{octet:x}::2"

    @property
    def client(self) -> NetNs:
        return NetNs.named(self.client_name)

    @property
    def pod(self) -> NetNs:
        return NetNs.named(self.pod_name)

    def sock(
        self, ns: NetNs, kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET
    ) -> socket.socket:
        """A non-blocking socket that belongs to ``ns``."""

        def make() -> socket.socket:
            s = socket.socket(family, kind)
            s.setblocking(False)
            return s

        return ns.call(make)

    def sockets(self, ns: NetNs, n: int, kind: int = socket.SOCK_STREAM) -> list[socket.socket]:
        def make() -> list[socket.socket]:
            out = []
            for _ in range(n):
                s = socket.socket(socket.AF_INET, kind)
                s.setblocking(False)
                out.append(s)
            return out

        return ns.call(make)


def tcp_total_retrans(s: socket.socket) -> int:
    """tcpi_total_retrans of struct tcp_info (offset 100): SYN retransmits included."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 100)[0])


async def start_tcp_app(ns: NetNs, port: int, host: str = "0.0.0.0") -> asyncio.Server:
    """A TCP server in ``ns`` that greets each client and then echoes lines."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1024)
        s.setblocking(False)
        return s

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(GREETING)
        try:
            await w.drain()
            while line := await r.readline():
                w.write(line)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # client gone, or the test's loop is closing
        finally:
            w.close()

    return await asyncio.start_server(handle, sock=ns.call(make))


@dataclass
class UdpApp(asyncio.DatagramProtocol):
    received: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_udp_app(ns: NetNs, port: int) -> UdpApp:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        return s

    app = UdpApp()
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: app, sock=ns.call(make))
    return app


async def connect_and_greet(
    s: socket.socket, addr: tuple[str, int] | tuple[str, int, int, int], timeout: float = 10.0
) -> bytes:
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_connect(s, addr), timeout)
    return await asyncio.wait_for(loop.sock_recv(s, len(GREETING)), timeout)
