"""I/O shell over the API server: node-scoped watches and the daemon's writes.

``Reflector`` keeps a local copy of one list (list, then watch from its
resourceVersion; a 410 Gone relists; other failures back off, bounded). The
pod reflector is filtered server-side to ``spec.nodeName=<node>``, so a node
never holds the cluster's pods. ``KubeReporter`` writes the status annotation,
the health-proxy status file, Events and resizes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from architect.engine.admission.pods import STATUS_VOLUME
from architect.engine.directives import ResizeTarget
from architect.engine.kubeclient import Kube
from architect.engine.telemetry import ContainerState
from architect.policy.annotations import (
    GRANT_LABEL,
    GROUP,
    NODE_LABEL,
    TEMPLATE_HASH_LABEL,
    VERSION,
)
from architect.runtime.daemon.migrations import NamespaceGone
from architect.runtime.daemon.targets import status_file_path, status_patch

log = logging.getLogger("architect.daemon.kube")

ObjKey = tuple[str, str]
ListFn = Callable[..., Any]
GONE = 410
WATCH_TIMEOUT_S = 60


def obj_key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def apply_event(store: dict[ObjKey, dict[str, Any]], event: Mapping[str, Any]) -> str | None:
    """Apply one watch event to ``store``; return the resourceVersion to resume from
    (None for an event that carries none)."""
    etype = event.get("type")
    obj = event.get("raw_object") or event.get("object")
    if not isinstance(obj, dict):
        return None
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if etype in ("ADDED", "MODIFIED"):
        store[obj_key(obj)] = obj
    elif etype == "DELETED":
        store.pop(obj_key(obj), None)
    return str(rv) if rv else None


def next_backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (doubling, capped)."""
    return float(min(cap, base * (2 ** max(0, failures - 1))))


@dataclass
class Reflector:
    """A local, always-reconnecting copy of one list (run in a thread)."""

    name: str
    list_fn: ListFn
    kind: str
    api_version: str
    list_kwargs: dict[str, Any] = field(default_factory=dict)
    on_change: Callable[[], None] = lambda: None
    store: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)
    synced: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.store.values())

    def _list(self) -> str:
        resp = self.list_fn(**self.list_kwargs, _preload_content=False)
        doc = json.loads(resp.data)
        items = {}
        for item in doc.get("items") or ():
            item.setdefault("kind", self.kind)
            item.setdefault("apiVersion", self.api_version)
            items[obj_key(item)] = item
        with self._lock:
            self.store = items
        self.synced.set()
        self.on_change()
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def run(self) -> None:
        rv: str | None = None
        failures = 0
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self.list_fn,
                    **self.list_kwargs,
                    resource_version=rv,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    allow_watch_bookmarks=True,
                    _request_timeout=WATCH_TIMEOUT_S + 30,
                ):
                    if self.stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    with self._lock:
                        new_rv = apply_event(self.store, event)
                    rv = new_rv or rv
                    if event.get("type") != "BOOKMARK":
                        self.on_change()
                failures = 0
            except ApiException as e:
                if e.status == GONE:  # our resourceVersion is too old: start over
                    log.info("%s: watch expired, relisting", self.name)
                    rv = None
                    continue
                failures += 1
                log.warning("%s: API error %s (%s), retrying", self.name, e.status, e.reason)
                self.stop.wait(next_backoff(failures))
            except Exception as e:  # connection refused / reset: the API server restarts
                failures += 1
                log.warning("%s: %s, retrying", self.name, e)
                rv = None if failures > 3 else rv
                self.stop.wait(next_backoff(failures))

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name=f"reflector:{self.name}", daemon=True)
        t.start()
        return t


def reflectors(
    api: client.ApiClient, node: str, on_change: Callable[[], None]
) -> tuple[Reflector, Reflector, Reflector]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    pods = Reflector(
        "pods",
        core.list_pod_for_all_namespaces,
        "Pod",
        "v1",
        {"field_selector": f"spec.nodeName={node}"},
        on_change,
    )

    def policies(plural: str, kind: str) -> Reflector:
        def list_fn(**kw: Any) -> Any:
            return custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)

        return Reflector(plural, list_fn, kind, f"{GROUP}/{VERSION}", {}, on_change)

    return (
        pods,
        policies("hibernationpolicies", "HibernationPolicy"),
        policies("migrationpolicies", "MigrationPolicy"),
    )


def resize_patch(container: str, to: ResizeTarget, original: Mapping[str, str]) -> dict[str, Any]:
    """The pods/resize body: hibernated -> a token request per resource the
    container requests (limits stay, so the QoS class does not change);
    original -> the requests it was admitted with."""
    if to is ResizeTarget.ORIGINAL:
        requests = dict(original)
    else:
        requests = {k: "1m" if k == "cpu" else "1Mi" for k in original}
    return {"spec": {"containers": [{"name": container, "resources": {"requests": requests}}]}}


class KubeReporter:
    """Writes what the daemon decided where users and the sidecar read it."""

    def __init__(self, api: client.ApiClient, kubelet_root: str) -> None:
        self.kube = Kube(api)
        self.core = client.CoreV1Api(api)
        self.kubelet_root = kubelet_root

    async def set_status(
        self, pod: Mapping[str, Any], states: Mapping[str, ContainerState]
    ) -> None:
        meta = pod.get("metadata") or {}
        self._write_status_file(pod, states)
        await asyncio.to_thread(
            self.core.patch_namespaced_pod,
            str(meta.get("name")),
            str(meta.get("namespace")),
            status_patch(states),
        )

    def _write_status_file(
        self, pod: Mapping[str, Any], states: Mapping[str, ContainerState]
    ) -> None:
        """Only into the health-proxy volume admission added (pods without it have
        no sidecar to read it)."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        for v in (pod.get("spec") or {}).get("volumes") or ():
            if v.get("name") != STATUS_VOLUME or not uid:
                continue
            path = status_file_path(self.kubelet_root, uid, STATUS_VOLUME)
            if not os.path.isdir(os.path.dirname(path)):
                return
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({k: s.value for k, s in states.items()}, f)
            os.replace(tmp, path)  # the sidecar never reads half a file

    async def event(self, pod: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        obj = dict(pod)
        obj.setdefault("apiVersion", "v1")
        obj.setdefault("kind", "Pod")
        await self.kube.post_event(obj, etype, reason, message)

    async def resize(
        self, pod: Mapping[str, Any], container: str, to: ResizeTarget, original: Mapping[str, str]
    ) -> None:
        meta = pod.get("metadata") or {}
        body = resize_patch(container, to, original)
        await asyncio.to_thread(
            self.core.patch_namespaced_pod_resize,
            str(meta.get("name")),
            str(meta.get("namespace")),
            body,
        )


def checkpoint_reflector(api: client.ApiClient, node: str, on_change: Callable[[], None]) -> Reflector:
    """This node's Checkpoints (labelled with their source node by the daemon)."""
    custom = client.CustomObjectsApi(api)

    def list_fn(**kw: Any) -> Any:
        return custom.list_cluster_custom_object(GROUP, VERSION, "checkpoints", **kw)

    return Reflector("checkpoints", list_fn, "Checkpoint", f"{GROUP}/{VERSION}",
                     {"label_selector": f"{NODE_LABEL}={node}"}, on_change)


def grant_reflector(
    api: client.ApiClient, namespace: str, node: str, on_change: Callable[[], None]
) -> Reflector:
    """Transfer grants for this node, in Architect's namespace (label-selected)."""
    core = client.CoreV1Api(api)
    return Reflector("grants", core.list_namespaced_secret, "Secret", "v1",
                     {"namespace": namespace,
                      "label_selector": f"{NODE_LABEL}={node},{GRANT_LABEL}=true"},
                     on_change)


class CheckpointClient:
    """``migrations.CheckpointApi`` over the API server; reads from the reflector."""

    def __init__(self, api: client.ApiClient, reflector: Reflector) -> None:
        self.kube = Kube(api)
        self.reflector = reflector

    async def create_checkpoint(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = body.get("metadata") or {}

        def _create() -> dict[str, Any] | None:
            try:
                res = self.kube.custom.create_namespaced_custom_object(
                    GROUP, VERSION, str(meta.get("namespace")), "checkpoints", dict(body)
                )
                return cast(dict[str, Any], res)
            except ApiException as e:
                if e.status == 409:  # AlreadyExists
                    return None
                if e.status == 404 or (e.status == 403 and "being terminated" in str(e.body)):
                    raise NamespaceGone(f"namespace {meta.get('namespace')}: {e.reason}") from e
                raise

        return await asyncio.to_thread(_create)

    async def get_checkpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get("checkpoints", namespace, name)

    async def patch_checkpoint_status(
        self, namespace: str, name: str, patch: Any
    ) -> dict[str, Any] | None:
        if isinstance(patch, list):
            return await self.kube.try_patch_status("checkpoints", namespace, name, patch)
        return await self.kube.patch_status("checkpoints", namespace, name, patch)

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.reflector.snapshot()

    async def of_template(
        self, namespace: str, template_hash: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        selector = f"{TEMPLATE_HASH_LABEL}={template_hash}"

        def _list() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            cks = cast(dict[str, Any], self.kube.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "checkpoints", label_selector=selector))
            pods = cast(dict[str, Any], self.kube.core.api_client.sanitize_for_serialization(
                self.kube.core.list_namespaced_pod(namespace, label_selector=selector)))
            return list(cks.get("items") or []), list(pods.get("items") or [])

        return await asyncio.to_thread(_list)


def node_secret_data(api: client.ApiClient, namespace: str, node: str) -> dict[str, bytes] | None:
    """The node's certificate Secret (``architect-node-<node>``), decoded; None
    while the control plane has not issued it yet."""
    import base64

    from architect.engine.controlplane.trust import node_secret_name

    core = client.CoreV1Api(api)
    try:
        secret = core.read_namespaced_secret(node_secret_name(node), namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
