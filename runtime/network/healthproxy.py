"""The health-check proxy: the sidecar that answers kubelet probes for a managed container.

The admission controller rewrites a managed container's probes to its
``shadowPort`` and injects this sidecar (``architect health-proxy``), which
listens on every shadowPort of its mappings. For each probe connection it looks
up the container's state in the status file the daemon keeps in a shared volume
(``/run/architect/status.json``: ``{"<container>": "SCALED_DOWN", ...}``):

- RUNNING, or no state known (no file yet, container not listed, unreadable
  file): the connection is forwarded byte for byte to ``127.0.0.1:<appPort>``, so
  HTTP, TCP and gRPC probes get the application's own answer. The proxy connects
  from ``127.0.0.6``, a source address the activity counters exclude, so a probe
  never keeps the container awake.
- any other state (SCALED_DOWN, CHECKPOINTING, RESTORING, MIGRATING): the proxy
  answers ``HTTP/1.1 200 OK`` itself and never touches the application, so a
  probe never wakes it and kubelet does not restart the hibernated container. A
  TCP probe is satisfied by the accepted connection. A gRPC health probe is not
  understood (see docs/network.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from architect.errors import UsageError

log = logging.getLogger("architect.health-proxy")

DEFAULT_STATUS_FILE = "/run/architect/status.json"
SOURCE_HOST = "127.0.0.6"
RUNNING = "RUNNING"
_HEAD_LIMIT = 8192
_BODY = b"architect: container hibernated\n"
RESPONSE_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


@dataclass(frozen=True, slots=True)
class Mapping:
    container: str
    app_port: int
    shadow_port: int


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    mappings: tuple[Mapping, ...]
    status_file: str = DEFAULT_STATUS_FILE
    listen_host: str = "0.0.0.0"
    target_host: str = "127.0.0.1"
    source_host: str = SOURCE_HOST
    head_timeout: float = 2.0
    connect_timeout: float = 5.0


def _port(flag: str, value: str, what: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise UsageError(f"{flag}: {what} {value!r} is not an integer") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"{flag}: {what} {port} is not in 1..65535")
    return port


def parse_mapping(value: str) -> Mapping:
    """``containerName:appPort:shadowPort``."""
    parts = value.split(":")
    if len(parts) != 3 or not parts[0]:
        raise UsageError(f"--map {value!r}: expected containerName:appPort:shadowPort")
    flag = f"--map {value!r}"
    m = Mapping(parts[0], _port(flag, parts[1], "appPort"), _port(flag, parts[2], "shadowPort"))
    if m.app_port == m.shadow_port:
        raise UsageError(f"{flag}: appPort and shadowPort must differ")
    return m


def parse_mappings_json(value: str) -> list[Mapping]:
    """The annotation's own shape: ``{"mappings":[{"containerName","appPort","shadowPort"}]}``."""
    try:
        doc = json.loads(value)
        items = doc["mappings"]
        return [
            parse_mapping(f"{i['containerName']}:{i['appPort']}:{i['shadowPort']}") for i in items
        ]
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(
            f"--mappings-json {value!r}: expected "
            '{"mappings":[{"containerName":..,"appPort":..,"shadowPort":..}]}'
        ) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_args(argv: list[str]) -> ProxyConfig:
    p = _Parser(prog="architect health-proxy", description=__doc__.split("\n")[0])
    p.add_argument("--map", action="append", default=[], metavar="NAME:APP:SHADOW")
    p.add_argument("--mappings-json", help="the health-check-proxy annotation value")
    p.add_argument("--status-file", default=DEFAULT_STATUS_FILE)
    p.add_argument("--listen-host", default="0.0.0.0")
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--source-host", default=SOURCE_HOST)
    a = p.parse_args(argv)
    mappings = [parse_mapping(v) for v in a.map]
    if a.mappings_json:
        mappings += parse_mappings_json(a.mappings_json)
    if not mappings:
        raise UsageError("no mappings: give --map NAME:APP:SHADOW or --mappings-json")
    shadows = [m.shadow_port for m in mappings]
    if len(set(shadows)) != len(shadows):
        raise UsageError(f"shadowPort listed twice in {shadows}")
    return ProxyConfig(tuple(mappings), a.status_file, a.listen_host, a.target_host, a.source_host)


def should_forward(state: str | None) -> bool:
    """Forward to the app only when it runs, or when nothing says otherwise."""
    return state is None or state == RUNNING


def parse_status(text: str) -> dict[str, str]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("status file is not a JSON object")
    return {str(k): str(v) for k, v in doc.items()}


@dataclass
class StatusFile:
    """The daemon's status file, re-read only when it changes."""

    path: str
    _key: tuple[int, int] | None = None
    _states: dict[str, str] = field(default_factory=dict)

    def state(self, container: str) -> str | None:
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size)
            if key != self._key:
                with open(self.path, encoding="utf-8") as f:
                    self._states = parse_status(f.read())
                self._key = key
        except FileNotFoundError:
            self._key, self._states = None, {}
        except (OSError, ValueError) as e:
            log.warning("status file %s unreadable (%s): forwarding probes", self.path, e)
            self._key, self._states = None, {}
        return self._states.get(container)


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            w.write_eof()


async def _answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, timeout: float) -> None:
    # Read the probe's request head first, so the client never sees its request
    # cut off; a TCP probe sends nothing and is done once connected.
    with contextlib.suppress(
        TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError
    ):
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    with contextlib.suppress(ConnectionError):
        w.write(RESPONSE_200)
        await w.drain()


async def _forward(
    cfg: ProxyConfig, m: Mapping, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    try:
        ur, uw = await asyncio.wait_for(
            asyncio.open_connection(cfg.target_host, m.app_port, local_addr=(cfg.source_host, 0)),
            cfg.connect_timeout,
        )
    except (OSError, TimeoutError) as e:
        # The probe fails as it would without the proxy.
        log.info("%s: app port %d unreachable: %s", m.container, m.app_port, e)
        return
    try:
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))
    finally:
        uw.close()


def _handler(
    cfg: ProxyConfig, m: Mapping, status: StatusFile
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            if should_forward(status.state(m.container)):
                await _forward(cfg, m, r, w)
            else:
                await _answer(r, w, cfg.head_timeout)
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    return handle


async def serve(
    cfg: ProxyConfig, stop: asyncio.Event, ready: Callable[[], None] | None = None
) -> None:
    """Listen on every shadowPort until ``stop`` is set."""
    status = StatusFile(cfg.status_file)
    servers = [
        await asyncio.start_server(
            _handler(cfg, m, status),
            cfg.listen_host,
            m.shadow_port,
            reuse_address=True,
            limit=_HEAD_LIMIT,
        )
        for m in cfg.mappings
    ]
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        for s in servers:
            s.close()


async def _amain(cfg: ProxyConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready() -> None:
        ports = ", ".join(f"{m.shadow_port}->{m.app_port}" for m in cfg.mappings)
        print(f"health-proxy: listening ({ports})", flush=True)

    await serve(cfg, stop, ready)


def main(argv: list[str]) -> int:
    """Entry point of ``architect health-proxy``."""
    try:
        cfg = parse_args(argv)
    except UsageError as e:
        print(f"architect health-proxy: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        asyncio.run(_amain(cfg))
    except OSError as e:  # e.g. the shadow port is taken
        print(f"architect health-proxy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
