"""The client side of the shim's control socket (see ``control``): standard library
only, so the daemon and tools do not load the shim's service, protobufs and ttrpc."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

MAX_LINE = 64 * 1024


class RequestError(ValueError):
    pass


async def request(path: Path, req: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """One request to a shim's control socket (for the daemon, tools and tests)."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        resp = json.loads(line)
        if not isinstance(resp, dict):
            raise RequestError("control answer is not a JSON object")
        return resp
    finally:
        writer.close()
