"""Timestamps inside a running operator, for bench/engine_admission.py --trace.

Installed through a ``sitecustomize`` on the operator's PYTHONPATH (the
product is not changed): every admission request served by kopf's aiohttp
server appends one JSON line to ``$ARCHITECT_ADMISSION_TRACE``:

* ``first``: when the request's first bytes reached aiohttp (decrypted);
* ``start``/``end``: kopf's admission function entered / returned;
* ``sent``: the response handed to the transport;
* ``handler``: of that, seconds in engine.admission's own function (``mutate_pod``
  or ``review_workload``): the rest of kopf's function is kopf's;
* ``peer``: the API server's source port (a new port: a new TLS connection);
* ``name``, ``hook``: the object and the webhook path.

A second kind of line, ``lag``, samples the event loop's lateness every 5 ms
(the largest overshoot per second): time a request waits for the loop. A
third, ``gc``, is each cyclic garbage collection's pause (generation, seconds,
when it ended): the whole process stops for it.
Wall-clock times (``time.time()``), comparable with the bench's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import os
import sys
import time
from typing import Any, cast

LAG_EVERY_S = 0.005


def install() -> None:
    path = os.environ.get("ARCHITECT_ADMISSION_TRACE")
    if not path:
        return
    from aiohttp import web_protocol
    from kopf._kits import webhooks

    current: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("admission_rec")

    def timed(fn: Any) -> Any:
        # The record is shared: a sync kopf handler runs in a thread with a copy of
        # the context, which holds the same dict.
        if asyncio.iscoroutinefunction(fn):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    current.get({})["handler"] = time.perf_counter() - t0

            return timed_async

        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                current.get({})["handler"] = time.perf_counter() - t0

        return timed_sync

    patched: list[bool] = []

    def patch_handlers() -> None:
        # On the first request, from the module the operator imported (its own tree's:
        # importing it here, from sitecustomize, could pick up another tree's).
        handlers = sys.modules["architect.engine.admission.handlers"]
        handlers.mutate_pod = timed(handlers.mutate_pod)  # type: ignore[attr-defined]
        handlers.review_workload = timed(handlers.review_workload)  # type: ignore[attr-defined]
        patched.append(True)

    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    gc_began: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            gc_began[:] = [now]
        elif gc_began:
            pause = now - gc_began[0]
            out.write(
                json.dumps({"gc": info["generation"], "pause": pause, "at": time.time()}) + "\n"
            )

    gc.callbacks.append(on_gc)
    received = web_protocol.RequestHandler.data_received
    serve = webhooks.WebhookServer._serve
    lag_task: list[asyncio.Task[None]] = []
    first_bytes: dict[int, float] = {}  # by id() of the connection (its class has slots)

    def data_received(self: Any, data: bytes) -> None:
        first_bytes.setdefault(id(self), time.time())
        received(self, data)

    async def lag() -> None:
        loop = asyncio.get_running_loop()
        worst, window = 0.0, loop.time() + 1.0
        while True:
            due = loop.time() + LAG_EVERY_S
            await asyncio.sleep(LAG_EVERY_S)
            worst = max(worst, loop.time() - due)
            if loop.time() >= window:
                out.write(json.dumps({"lag": worst, "at": time.time()}) + "\n")
                worst, window = 0.0, loop.time() + 1.0

    async def traced_serve(fn: Any, request: Any) -> Any:
        if not lag_task:
            lag_task.append(asyncio.get_running_loop().create_task(lag()))
        if not patched:
            patch_handlers()
        first = first_bytes.get(id(request.protocol))
        rec: dict[str, Any] = {"first": first, "hook": request.match_info.get("id")}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        rec["peer"] = peer[1] if peer else None

        async def traced_fn(data: Any, **kwargs: Any) -> Any:
            rec["start"] = time.time()
            current.set(rec)
            req = data.get("request") or {}
            obj = req.get("object") or req.get("oldObject") or {}
            rec["name"] = req.get("name") or (obj.get("metadata") or {}).get("name")
            try:
                return await fn(data, **kwargs)
            finally:
                rec["end"] = time.time()

        response = await serve(cast(Any, traced_fn), request)
        rec["sent"] = time.time()
        # Once the body is read: the next request on this connection starts afresh
        # (the API server does not pipeline: its next request waits for this answer).
        first_bytes.pop(id(request.protocol), None)
        out.write(json.dumps(rec) + "\n")
        return response

    web_protocol.RequestHandler.data_received = data_received  # type: ignore[method-assign]
    webhooks.WebhookServer._serve = staticmethod(traced_serve)  # type: ignore[method-assign]
