"""Health-check proxy: argument errors, state decisions, and serving on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from architect.errors import UsageError
from architect.runtime.network.healthproxy import (
    Mapping,
    ProxyConfig,
    StatusFile,
    main,
    parse_args,
    parse_mapping,
    serve,
    should_forward,
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("app:8080", "--map 'app:8080': expected containerName:appPort:shadowPort"),
        (":8080:9080", "expected containerName:appPort:shadowPort"),
        ("app:http:9080", "--map 'app:http:9080': appPort 'http' is not an integer"),
        ("app:8080:70000", "--map 'app:8080:70000': shadowPort 70000 is not in 1..65535"),
        ("app:8080:8080", "appPort and shadowPort must differ"),
    ],
)
def test_bad_mapping_is_named(value: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_mapping(value)
    assert str(e.value) == message or message in str(e.value)


def test_mappings_json_is_the_annotation_shape() -> None:
    ann = '{"mappings":[{"containerName":"app","appPort":8080,"shadowPort":9080}]}'
    cfg = parse_args(["--mappings-json", ann, "--status-file", "/s.json"])
    assert cfg.mappings == (Mapping("app", 8080, 9080),) and cfg.status_file == "/s.json"
    with pytest.raises(UsageError, match="--mappings-json"):
        parse_args(["--mappings-json", '{"mappings":[{"appPort":1}]}'])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no mappings"),
        (["--map", "a:1:2", "--map", "b:3:2"], "shadowPort listed twice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_main_reports_usage_errors_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("architect health-proxy: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("state", "forward"),
    [
        (None, True),
        ("RUNNING", True),
        ("SCALED_DOWN", False),
        ("CHECKPOINTING", False),
        ("RESTORING", False),
        ("MIGRATING", False),
    ],
)
def test_should_forward(state: str | None, forward: bool) -> None:
    assert should_forward(state) is forward


def test_status_file_missing_malformed_and_changing(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    sf = StatusFile(str(path))
    assert sf.state("app") is None
    path.write_text("{not json")
    assert sf.state("app") is None
    path.write_text(json.dumps({"app": "SCALED_DOWN"}))
    assert sf.state("app") == "SCALED_DOWN" and sf.state("other") is None
    path.write_text(json.dumps({"app": "RUNNING", "x": "y"}))
    assert sf.state("app") == "RUNNING"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
async def loopback_proxy(tmp_path: Path) -> AsyncIterator[tuple[ProxyConfig, Path]]:
    app_port, shadow_port = _free_ports(2)
    status = tmp_path / "status.json"
    cfg = ProxyConfig(
        (Mapping("app", app_port, shadow_port),),
        str(status),
        listen_host="127.0.0.1",
        head_timeout=0.3,
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop, ready.set))
    await asyncio.wait_for(ready.wait(), 5)
    yield cfg, status
    stop.set()
    await asyncio.wait_for(task, 5)


async def _exchange(port: int, request: bytes) -> bytes:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    w.write(request)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return data


async def test_loopback_answers_while_hibernated_and_forwards_while_running(
    loopback_proxy: tuple[ProxyConfig, Path],
) -> None:
    cfg, status = loopback_proxy
    m = cfg.mappings[0]
    peers: list[str] = []

    async def app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername")[0])
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    server = await asyncio.start_server(app, "127.0.0.1", m.app_port)
    try:
        status.write_text(json.dumps({"app": "SCALED_DOWN"}))
        reply = await _exchange(m.shadow_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK") and peers == []
        status.write_text(json.dumps({"app": "RUNNING"}))
        reply = await _exchange(m.shadow_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        # The app's own answer, even a failing one, and it came from 127.0.0.6.
        assert reply.startswith(b"HTTP/1.1 503") and peers == ["127.0.0.6"]
    finally:
        server.close()


async def test_tcp_probe_while_hibernated_is_accepted_without_any_app(
    loopback_proxy: tuple[ProxyConfig, Path],
) -> None:
    cfg, status = loopback_proxy
    status.write_text(json.dumps({"app": "SCALED_DOWN"}))
    # Nothing listens on appPort at all; a TCP probe only needs the connection,
    # and a client that sends nothing still gets the 200 after the head timeout.
    r, w = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", cfg.mappings[0].shadow_port), 5
    )
    assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 200 OK")
    w.close()
