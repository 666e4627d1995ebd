"""The thin I/O shell over the Kubernetes API that the handlers use.

Built on the official ``kubernetes`` client; its calls block, so each runs in a
worker thread and the kopf event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from architect.engine.admission.workloads import Op, plural
from architect.policy.annotations import GROUP, VERSION
from architect.policy.timestamps import fmt_time

NotFound = 404
Conflict = 409
Unprocessable = 422  # a JSON patch `test` op that failed


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster configuration when running in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)

    # --- policies -------------------------------------------------------

    def list_policies_sync(self, namespace: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, name in (
            ("HibernationPolicy", "hibernationpolicies"),
            ("MigrationPolicy", "migrationpolicies"),
        ):
            res = cast(
                dict[str, Any],
                self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, name),
            )
            items: list[dict[str, Any]] = res["items"]
            for item in items:
                item.setdefault("kind", kind)
            out.extend(items)
        return out

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.list_policies_sync, namespace)

    def _apply_sync(self, ops: Sequence[Op]) -> bool:
        """The writes in order; False at the first that met a newer version (409)."""
        for op in ops:
            res = plural(op.kind)
            try:
                if op.verb == "create":
                    self.custom.create_namespaced_custom_object(
                        GROUP, VERSION, op.namespace, res, dict(op.body or {})
                    )
                elif op.verb == "replace":
                    body = dict(op.body or {})
                    body["metadata"] = {**body["metadata"], "resourceVersion": op.resource_version}
                    self.custom.replace_namespaced_custom_object(
                        GROUP, VERSION, op.namespace, res, op.name, body
                    )
                else:
                    self.custom.delete_namespaced_custom_object(
                        GROUP, VERSION, op.namespace, res, op.name
                    )
            except ApiException as err:
                if err.status == Conflict:  # a newer version, or created meanwhile
                    return False
                if not (op.verb == "delete" and err.status == NotFound):
                    raise
        return True

    async def apply(self, ops: Sequence[Op]) -> bool:
        return await asyncio.to_thread(self._apply_sync, ops)

    # --- generic custom objects ----------------------------------------------

    async def get(self, plural_: str, namespace: str, name: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural_, name
                )
                return cast(dict[str, Any], obj)
            except ApiException as err:
                if err.status == NotFound:
                    return None
                raise

        return await asyncio.to_thread(_get)

    async def list_objects(
        self, plural_: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        def _list() -> list[dict[str, Any]]:
            kw: dict[str, Any] = {}
            if label_selector:
                kw["label_selector"] = label_selector
            if namespace is None:
                res = self.custom.list_cluster_custom_object(GROUP, VERSION, plural_, **kw)
            else:
                res = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural_, **kw
                )
            items: list[dict[str, Any]] = cast(dict[str, Any], res)["items"]
            return items

        return await asyncio.to_thread(_list)

    async def patch_status(
        self,
        plural_: str,
        namespace: str,
        name: str,
        patch: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    ) -> dict[str, Any]:
        """JSON patch (a list, may hold ``test`` ops: compare-and-swap) or merge patch."""

        def _patch() -> dict[str, Any]:
            if isinstance(patch, Sequence):
                body: Any = [dict(op) for op in patch]
                content = "application/json-patch+json"
            else:
                body, content = dict(patch), "application/merge-patch+json"
            res = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural_, name, body, _content_type=content
            )
            return cast(dict[str, Any], res)

        return await asyncio.to_thread(_patch)

    async def patch_meta(
        self, plural_: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        """Merge-patch labels / annotations of a custom object."""

        def _patch() -> None:
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                plural_,
                name,
                dict(patch),
                _content_type="application/merge-patch+json",
            )

        await asyncio.to_thread(_patch)

    async def try_patch_meta(
        self, plural_: str, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> bool:
        """A compare-and-swap JSON patch of a custom object's metadata: False when a
        ``test`` op failed (the object changed first) or the object is gone."""

        def _patch() -> bool:
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural_, name, [dict(op) for op in patch],
                    _content_type="application/json-patch+json",
                )  # fmt: skip
            except ApiException as err:
                if err.status in (NotFound, Conflict, Unprocessable):
                    return False
                raise
            return True

        return await asyncio.to_thread(_patch)

    async def delete(self, plural_: str, namespace: str, name: str) -> None:
        def _delete() -> None:
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural_, name
                )
            except ApiException as err:
                if err.status != NotFound:
                    raise

        await asyncio.to_thread(_delete)

    async def post_event(
        self, obj: Mapping[str, Any], etype: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``obj`` (for code outside kopf's handler context)."""
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        now = datetime.now(UTC)
        event = {
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "architect"},
            "firstTimestamp": fmt_time(now),
            "lastTimestamp": fmt_time(now),
            "count": 1,
        }
        await asyncio.to_thread(self.core.create_namespaced_event, ns, cast(Any, event))

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        def _list() -> list[dict[str, Any]]:
            res = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
            out: list[dict[str, Any]] = self.core.api_client.sanitize_for_serialization(res)[
                "items"
            ]
            return out

        return await asyncio.to_thread(_list)

    async def get_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The uid of a stored Pod or workload; None when there is none."""
        readers = {
            "Pod": self.core.read_namespaced_pod,
            "Deployment": self.apps.read_namespaced_deployment,
            "StatefulSet": self.apps.read_namespaced_stateful_set,
            "ReplicaSet": self.apps.read_namespaced_replica_set,
            "DaemonSet": self.apps.read_namespaced_daemon_set,
            "Job": self.batch.read_namespaced_job,
            "CronJob": self.batch.read_namespaced_cron_job,
        }
        read = readers.get(kind)
        if read is None:
            return None

        def _get() -> str | None:
            try:
                obj: Any = read(name, namespace)
            except ApiException as err:
                if err.status == NotFound:
                    return None
                raise
            uid = obj.metadata.uid
            return str(uid) if uid else None

        return await asyncio.to_thread(_get)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                pod = self.core.read_namespaced_pod(name, namespace)
            except ApiException as err:
                if err.status == NotFound:
                    return None
                raise
            out: dict[str, Any] = self.core.api_client.sanitize_for_serialization(pod)
            return out

        return await asyncio.to_thread(_get)

    # --- nodes and Secrets (transfer coordination) ---------------------------

    def _plain(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.core.api_client.sanitize_for_serialization(obj)
        return out

    async def get_node(self, name: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                return self._plain(self.core.read_node(name))
            except ApiException as err:
                if err.status == NotFound:
                    return None
                raise

        return await asyncio.to_thread(_get)

    async def list_nodes(self) -> list[dict[str, Any]]:
        def _list() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = self._plain(self.core.list_node())["items"]
            return items

        return await asyncio.to_thread(_list)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            try:
                return self._plain(self.core.read_namespaced_secret(name, namespace))
            except ApiException as err:
                if err.status == NotFound:
                    return None
                raise

        return await asyncio.to_thread(_get)

    async def list_secrets(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        def _list() -> list[dict[str, Any]]:
            res = self.core.list_namespaced_secret(namespace, label_selector=label_selector)
            items: list[dict[str, Any]] = self._plain(res)["items"]
            return items

        return await asyncio.to_thread(_list)

    async def put_secret(self, secret: Mapping[str, Any], *, replace: bool = True) -> bool:
        """Create the Secret, or replace the one of that name (``replace``).
        False when it exists and ``replace`` is off (another writer was first)."""
        meta = secret["metadata"]

        def _put() -> bool:
            try:
                self.core.create_namespaced_secret(meta["namespace"], cast(Any, dict(secret)))
                return True
            except ApiException as err:
                if err.status != Conflict:
                    raise
            if not replace:
                return False
            self.core.replace_namespaced_secret(
                meta["name"], meta["namespace"], cast(Any, dict(secret))
            )
            return True

        return await asyncio.to_thread(_put)

    async def delete_secret(self, namespace: str, name: str) -> None:
        def _delete() -> None:
            try:
                self.core.delete_namespaced_secret(name, namespace)
            except ApiException as err:
                if err.status != NotFound:
                    raise

        await asyncio.to_thread(_delete)

    async def try_patch_status(
        self, plural_: str, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any] | None:
        """A compare-and-swap JSON patch: None when a ``test`` op failed (someone
        else changed the object first) or the object is gone."""
        try:
            return await self.patch_status(plural_, namespace, name, patch)
        except ApiException as err:
            if err.status in (NotFound, Conflict, Unprocessable):
                return None
            raise
