"""Wiring only: flags, API client, reflectors, the tick loop, metrics, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Any

from architect.errors import UsageError
from architect.runtime.daemon import metrics
from architect.runtime.daemon.config import DaemonConfig, check_paths, parse_args

log = logging.getLogger("architect.daemon")


async def run(cfg: DaemonConfig) -> int:
    from prometheus_client import start_http_server

    from architect.engine.kubeclient import load_config
    from architect.policy.models import parse_policies
    from architect.runtime.daemon import persistent
    from architect.runtime.daemon.apiserver import (
        CheckpointClient,
        KubeReporter,
        checkpoint_reflector,
        grant_reflector,
        reflectors,
    )
    from architect.runtime.daemon.controller import Controller
    from architect.runtime.daemon.migrations import Migrations, NodeImages
    from architect.runtime.daemon.network import PodNetwork
    from architect.runtime.daemon.shimclient import ShimClient
    from architect.runtime.daemon.store import JsonStore, RequestsStore
    from architect.runtime.daemon.usage import UsageSampler

    api = load_config(cfg.kubeconfig)
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def changed() -> None:  # from reflector threads: run a pass now
        loop.call_soon_threadsafe(wakeup.set)

    pods, hps, mps = reflectors(api, cfg.node, changed)
    ckpts = checkpoint_reflector(api, cfg.node, changed)
    grants_r = grant_reflector(api, cfg.namespace, cfg.node, changed)
    pcs = persistent.reflector(api, cfg.node, changed)
    for r in (pods, hps, mps, ckpts, grants_r, pcs):
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
        migrations=(migrations := Migrations(
            CheckpointClient(api, ckpts), NodeImages(cfg.shim_state, cfg.node), cfg.node,
            JsonStore(cfg.state_dir / "migrations.json"),
        )),
        node=cfg.node,
        usage=UsageSampler(cfg.cgroup_root),
    )
    transfer = Transfer(cfg, api, migrations)
    pcks = persistent.wire(api, cfg.node, shim.link, cfg.shim_state, transfer.fetch_persistent)
    transfer_task = asyncio.create_task(transfer.start(stop))
    # Nothing is decided before the first list of each: an empty cache would
    # read as "no policies" and wake or forget every container.
    for r in (pods, hps, mps, ckpts):
        while not r.synced.is_set() and not stop.is_set():
            await asyncio.sleep(0.1)
    if await migrations.recover():
        log.info("finished the Checkpoints of handovers written while no daemon ran")
    log.info("daemon on node %s: watching, tick %.1fs", cfg.node, cfg.tick)
    policy_cache: dict[str, Any] = {}
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            objs = hps.snapshot() + mps.snapshot()
            policies = _parse_cached(objs, policy_cache, parse_policies)
            try:
                await ctl.tick(pods.snapshot(), policies)
                transfer.consider(grants_r.snapshot())
                if pcs.synced.is_set():
                    pcks.consider(pcs.snapshot(), pods.snapshot())
            except Exception:
                log.exception("reconcile pass failed")
            metrics.TICK_SECONDS.observe(time.monotonic() - t0)
            wakeup.clear()
            waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=cfg.tick, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
    finally:
        for r in (pods, hps, mps, ckpts, grants_r, pcs):
            r.stop.set()
        await pcks.close()
        transfer_task.cancel()
        await transfer.close()
        await ctl.close()
        await shim.close()
    log.info("daemon stopped")
    return 0


class Transfer:
    """The node-to-node transfer: this node's certificate (read until the control
    plane has issued it), the image server, and the destination's grants."""

    def __init__(self, cfg: DaemonConfig, api: Any, migrations: Any) -> None:
        from architect.runtime.daemon.grants import Grants
        from architect.runtime.shim.plan import READY_MARK, handover_dir
        from architect.runtime.transfer import fetch, mark_pending

        self.cfg, self.api = cfg, api
        self.tls: Any = None
        self.key = b""
        self.server: Any = None
        root = cfg.shim_state

        async def do_fetch(grant: Any) -> Any:
            return await fetch(grant, root, self.tls)

        async def patch(ns: str, name: str, body: list[dict[str, Any]]) -> Any:
            return await migrations.api.patch_checkpoint_status(ns, name, body)

        def start_of(ns: str, pod: str, container: str) -> Any:
            p = migrations.pending.get((ns, pod, container))
            return (p.outcome, p.reason) if p is not None else None

        self.grants = Grants(
            cfg.node, do_fetch, patch,
            lambda h, c, s: mark_pending(root, h, c, s),
            lambda h, c, s: handover_dir(root, h, c, s).exists(),
            start_of,
            lambda h, c, s: (handover_dir(root, h, c, s) / READY_MARK).exists(),
            migrations.images.discard_ready,
        )

    def _load(self) -> tuple[Any, bytes] | None:
        from architect.runtime.daemon.apiserver import node_secret_data
        from architect.runtime.transfer import NodeTLS, TransferError, ticket_key_from_dir
        from architect.runtime.transfer.tls import CA_FILE, CERT_FILE, KEY_FILE, TICKET_KEY_FILE

        if self.cfg.node_cert_dir is not None:
            return NodeTLS.from_dir(self.cfg.node_cert_dir), ticket_key_from_dir(
                self.cfg.node_cert_dir)
        data = node_secret_data(self.api, self.cfg.namespace, self.cfg.node)
        if data is None:
            return None
        missing = [k for k in (CA_FILE, CERT_FILE, KEY_FILE, TICKET_KEY_FILE) if not data.get(k)]
        if missing:
            raise TransferError(f"node Secret of {self.cfg.node}: missing {', '.join(missing)}")
        tls = NodeTLS(self.cfg.node, data[CA_FILE], data[CERT_FILE], data[KEY_FILE])
        return tls, data[TICKET_KEY_FILE]

    async def start(self, stop: asyncio.Event) -> None:
        """Read the node certificate (bounded backoff until it exists), then serve."""
        from architect.runtime.daemon.apiserver import next_backoff
        from architect.runtime.transfer import serve

        failures = 0
        while not stop.is_set():
            try:
                loaded = await asyncio.to_thread(self._load)
            except Exception as e:
                loaded = None
                log.warning("transfer: node certificate: %s", e)
            if loaded is not None:
                break
            failures += 1
            if failures == 1:
                log.info("transfer: waiting for the node certificate Secret in %s",
                         self.cfg.namespace)
            await asyncio.sleep(next_backoff(failures, 1.0, 30.0))
        else:
            return
        self.tls, key = loaded
        self.key = key
        if self.cfg.transfer_port:
            from architect.engine.kubeclient import Kube
            from architect.runtime.transfer import persistent

            kube = Kube(self.api)

            async def lookup(ns: str, name: str) -> Any:
                return await kube.get("checkpoints", ns, name)

            async def lookup_pc(ns: str, name: str) -> Any:
                return await kube.get("persistentcheckpoints", ns, name)

            async def lookup_pod(ns: str, name: str) -> Any:
                return await asyncio.to_thread(self._read_pod, ns, name)

            pcs = persistent.PersistentServer(self.cfg.shim_state, self.tls.node, key,
                                              lookup_pc, lookup_pod)
            self.server, port = await serve(self.cfg.shim_state, self.tls, key=key,
                                            lookup=lookup, host=self.cfg.transfer_host,
                                            port=self.cfg.transfer_port,
                                            routes=((persistent.ROUTE, pcs.handle),))
            log.info("transfer: serving checkpoint images on %s:%d as %s",
                     self.cfg.transfer_host, port, self.tls.node)
        else:
            log.info("transfer: node certificate loaded (%s); not serving", self.tls.node)

    def _read_pod(self, ns: str, name: str) -> dict[str, Any] | None:
        import json

        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            resp: Any = client.CoreV1Api(self.api).read_namespaced_pod(
                name, ns, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        pod: dict[str, Any] = json.loads(resp.data)
        return pod

    async def fetch_persistent(self, claim: Any, pc: Any, holder: str, d: Any) -> str:
        """A PersistentCheckpoint's node-local image from ``holder``'s daemon into ``d``."""
        import json

        from kubernetes import client

        from architect.runtime.transfer import DEFAULT_PORT, TransferError, persistent

        if self.tls is None:
            raise TransferError("this node's transfer certificate is not loaded yet")

        def daemons() -> list[dict[str, Any]]:
            resp: Any = client.CoreV1Api(self.api).list_namespaced_pod(
                self.cfg.namespace, label_selector="app.kubernetes.io/component=daemon",
                field_selector=f"spec.nodeName={holder}", _preload_content=False)
            items: list[dict[str, Any]] = json.loads(resp.data).get("items") or []
            return items

        endpoint = persistent.holder_endpoint(await asyncio.to_thread(daemons), holder,
                                              self.cfg.transfer_port or DEFAULT_PORT)
        token = persistent.token_for(pc, claim.pod_namespace, claim.pod, self.tls.node,
                                     self.key, time.time())
        digest = str(((pc.get("status") or {}).get("image") or {}).get("digest") or "")
        took = await asyncio.to_thread(persistent.fetch, endpoint, token, self.tls, d, digest)
        return f"from {endpoint}: download {took['download']:.2f}s"

    def consider(self, secrets: list[dict[str, Any]]) -> None:
        if self.tls is not None and secrets:
            self.grants.consider(secrets)

    async def close(self) -> None:
        await self.grants.close()
        if self.server is not None:
            await self.server.close()


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
        check_paths(cfg)
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
