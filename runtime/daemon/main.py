"""Wiring only: flags, API client, reflectors, the tick loop, metrics, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Any

from architect.runtime.daemon import metrics
from architect.runtime.daemon.config import DaemonConfig, UsageError, parse_args

log = logging.getLogger("architect.daemon")


async def run(cfg: DaemonConfig) -> int:
    from prometheus_client import start_http_server

    from architect.engine.explain import parse_policies
    from architect.engine.kube import load_config
    from architect.runtime.daemon.controller import Controller
    from architect.runtime.daemon.kube import KubeReporter, reflectors
    from architect.runtime.daemon.network import PodNetwork
    from architect.runtime.daemon.shimclient import ShimClient
    from architect.runtime.daemon.store import RequestsStore

    api = load_config(cfg.kubeconfig)
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def changed() -> None:  # from reflector threads: run a pass now
        loop.call_soon_threadsafe(wakeup.set)

    pods, hps, mps = reflectors(api, cfg.node, changed)
    for r in (pods, hps, mps):
        r.start()
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, cfg.metrics_host)
    shim = ShimClient(cfg.shim_run, cfg.shim_state)
    ctl = Controller(
        shim,
        PodNetwork(cfg.wake_timeout, cfg.max_held),
        KubeReporter(api, cfg.kubelet_root),
        wake_timeout=cfg.wake_timeout,
        resize=cfg.resize,
        originals=RequestsStore(cfg.state_dir / "requests.json"),
    )
    # Nothing is decided before the first list of each: an empty cache would
    # read as "no policies" and wake or forget every container.
    for r in (pods, hps, mps):
        while not r.synced.is_set() and not stop.is_set():
            await asyncio.sleep(0.1)
    log.info("daemon on node %s: watching, tick %.1fs", cfg.node, cfg.tick)
    policy_cache: dict[str, Any] = {}
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            objs = hps.snapshot() + mps.snapshot()
            policies = _parse_cached(objs, policy_cache, parse_policies)
            try:
                await ctl.tick(pods.snapshot(), policies)
            except Exception:
                log.exception("reconcile pass failed")
            metrics.TICK_SECONDS.observe(time.monotonic() - t0)
            wakeup.clear()
            waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=cfg.tick, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
    finally:
        for r in (pods, hps, mps):
            r.stop.set()
        await ctl.close()
        await shim.close()
    log.info("daemon stopped")
    return 0


def _parse_cached(objs: list[dict[str, Any]], cache: dict[str, Any], parse: Any) -> list[Any]:
    """Policies parsed once per resourceVersion (pydantic validation is the cost)."""
    out = []
    seen = set()
    for obj in objs:
        meta = obj.get("metadata") or {}
        key = f"{obj.get('kind')}/{meta.get('namespace')}/{meta.get('name')}@{meta.get('resourceVersion')}"
        seen.add(key)
        if key not in cache:
            parsed, notes = parse([obj])
            for n in notes:
                log.warning("%s", n)
            cache[key] = parsed[0] if parsed else None
        if cache[key] is not None:
            out.append(cache[key])
    for key in set(cache) - seen:
        del cache[key]
    return out


def main(argv: list[str]) -> int:
    try:
        cfg = parse_args(argv)
    except UsageError as e:
        print(f"architect daemon: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(run(cfg))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # e.g. no kubeconfig: one line, not a traceback
        if isinstance(e, OSError | ValueError) or type(e).__name__ == "ConfigException":
            print(f"architect daemon: {e}", file=sys.stderr)
            return 1
        raise
