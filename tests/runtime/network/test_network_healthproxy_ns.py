"""The health-check proxy as the sidecar runs it: a process in the pod's namespace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from network_apps import GREETING, NetPair, start_tcp_app

from architect.runtime.network import iptables
from architect.runtime.network.hold import PacketHold
from architect.runtime.network.rules import NetSpec

pytestmark = pytest.mark.root

APP, PROBE = 8080, 9081


def _write_status(path: Path, state: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"app": state}))
    os.replace(tmp, path)  # atomic, as the daemon writes it


@pytest.fixture
def proxy(netpair: NetPair, tmp_path: Path) -> Iterator[Path]:
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        [
            *netpair.pod.argv([sys.executable, "-m", "architect.runtime.network.healthproxy"]),
            "--map",
            f"app:{APP}:{PROBE}",
            "--status-file",
            str(status),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, proc.stderr.read() if proc.stderr else line
        yield status
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def _http_get(pair: NetPair, port: int) -> bytes:
    s = pair.sock(pair.client)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, (pair.pod_ip, port)), 5)
        await loop.sock_sendall(s, b"GET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n")
        chunks = []
        while chunk := await asyncio.wait_for(loop.sock_recv(s, 4096), 5):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


async def test_answers_200_while_hibernated_and_never_wakes(netpair: NetPair, proxy: Path) -> None:
    _write_status(proxy, "SCALED_DOWN")
    wakes = 0

    async def wake() -> None:
        nonlocal wakes
        wakes += 1

    hold = PacketHold(netpair.pod, NetSpec(tag="h", tcp_ports=(APP,), queue_num=11), wake)
    await hold.start()
    try:
        for _ in range(3):
            reply = await _http_get(netpair, PROBE)
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            assert reply.endswith(b"architect: container hibernated\n")
        assert wakes == 0 and hold.core.seen == 0
    finally:
        await hold.close()


async def test_forwards_while_running_without_counting_as_activity(
    netpair: NetPair, proxy: Path
) -> None:
    _write_status(proxy, "RUNNING")
    spec = NetSpec(tag="h", tcp_ports=(APP,))
    iptables.install_base(netpair.pod, spec)
    server = await start_tcp_app(netpair.pod, APP)
    s = netpair.sock(netpair.client)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, (netpair.pod_ip, PROBE)), 5)
        assert await asyncio.wait_for(loop.sock_recv(s, 6), 5) == GREETING  # the app's
        await loop.sock_sendall(s, b"ping\n")
        assert await asyncio.wait_for(loop.sock_recv(s, 5), 5) == b"ping\n"
        s.close()
        await asyncio.sleep(0.3)
        # The proxy reached the app from 127.0.0.6: no activity was counted.
        assert iptables.activity_packets(netpair.pod, spec) == 0
        # Flip to hibernated: the very next probe is answered by the proxy.
        _write_status(proxy, "SCALED_DOWN")
        assert (await _http_get(netpair, PROBE)).startswith(b"HTTP/1.1 200 OK")
    finally:
        s.close()
        server.close()
        iptables.remove_container(netpair.pod, spec)


async def test_running_app_down_means_probe_fails(netpair: NetPair, proxy: Path) -> None:
    # RUNNING but nothing listens: the probe must fail, not be papered over.
    _write_status(proxy, "RUNNING")
    assert await _http_get(netpair, PROBE) == b""
