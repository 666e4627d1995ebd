"""An in-memory stand-in for the Kubernetes API the engine's handlers use
(``engine.ports.KubeLike``); mypy holds it to that protocol (see the end)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from architect.engine.admission.workloads import Op

if TYPE_CHECKING:
    from architect.engine.ports import KubeLike


def selects(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Whether an equality-based label selector (``a=b,c!=d,e,!f``) selects ``labels``,
    as the API server reads it; None or empty selects everything."""
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


class FakeKube:
    """Records calls; holds objects by (plural, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.uids: dict[tuple[str, str, str], str] = {}
        self.conflicts = 0  # how many applies meet a newer version first

    async def get_uid(self, kind: str, namespace: str, name: str) -> str | None:
        return self.uids.get((kind, namespace, name))

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (pl, ns, _), o in self.objects.items()
            if ns == namespace and pl.endswith("policies")
        ]

    async def apply(self, ops: list[Op]) -> bool:
        if self.conflicts:  # another writer got there first (e.g. the status pass)
            self.conflicts -= 1
            self.calls.append(("conflict",))
            return False
        for op in ops:
            pl = "hibernationpolicies" if op.kind == "HibernationPolicy" else "migrationpolicies"
            self.calls.append((op.verb, op.kind, op.name))
            if op.verb == "delete":
                self.objects.pop((pl, op.namespace, op.name), None)
            else:
                self.objects[(pl, op.namespace, op.name)] = copy.deepcopy(op.body or {})
        return True

    async def get(self, plural_: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural_, namespace, name))

    async def list_objects(
        self, plural_: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            o
            for (pl, ns, _), o in self.objects.items()
            if pl == plural_
            and (namespace is None or ns == namespace)
            and selects(label_selector, _labels(o))
        ]

    async def patch_status(
        self, plural_: str, namespace: str, name: str, patch: Any
    ) -> dict[str, Any]:
        self.calls.append(("status", name, patch["status"].get("phase", "")))
        obj = self.objects[(plural_, namespace, name)]
        obj.setdefault("status", {}).update(patch["status"])
        return obj

    async def patch_meta(self, plural_: str, namespace: str, name: str, patch: Any) -> None:
        obj = self.objects[(plural_, namespace, name)]
        for k, v in patch["metadata"].items():
            obj["metadata"].setdefault(k, {}).update(v)

    async def try_patch_meta(self, plural_: str, namespace: str, name: str, patch: Any) -> bool:
        obj = self.objects.get((plural_, namespace, name))
        if obj is None:
            return False
        meta = obj["metadata"]
        for op in patch:
            path = op["path"]
            if op["op"] == "test":
                if path == "/metadata/resourceVersion":
                    have = meta.get("resourceVersion")
                else:
                    key = path.removeprefix("/metadata/annotations/")
                    have = (meta.get("annotations") or {}).get(
                        key.replace("~1", "/").replace("~0", "~")
                    )
                if have != op["value"]:
                    return False
            elif path == "/metadata/annotations":
                meta["annotations"] = dict(op["value"])
            else:
                key = path.removeprefix("/metadata/annotations/")
                meta["annotations"][key.replace("~1", "/").replace("~0", "~")] = op["value"]
        # Far from any version a test writes by hand: a body of before this patch
        # never matches again.
        meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 100)
        return True

    async def delete(self, plural_: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))
        self.objects.pop((plural_, namespace, name), None)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((namespace, name))

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return [
            p
            for (ns, _), p in self.pods.items()
            if ns == namespace and selects(label_selector, _labels(p))
        ]

    # Nodes and Secrets: the transfer coordination's.
    nodes: dict[str, dict[str, Any]]
    secrets: dict[tuple[str, str], dict[str, Any]]

    async def get_node(self, name: str) -> dict[str, Any] | None:
        return getattr(self, "nodes", {}).get(name)

    async def list_nodes(self) -> list[dict[str, Any]]:
        return list(getattr(self, "nodes", {}).values())

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return getattr(self, "secrets", {}).get((namespace, name))

    async def list_secrets(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return [
            s
            for (ns, _), s in getattr(self, "secrets", {}).items()
            if ns == namespace and selects(label_selector, _labels(s))
        ]

    async def put_secret(self, secret: Any, *, replace: bool = True) -> bool:
        self.secrets = getattr(self, "secrets", {})
        key = (secret["metadata"]["namespace"], secret["metadata"]["name"])
        if key in self.secrets and not replace:
            return False
        self.calls.append(("secret", key[1]))
        self.secrets[key] = copy.deepcopy(secret)
        return True

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.calls.append(("delete-secret", name))
        getattr(self, "secrets", {}).pop((namespace, name), None)

    async def try_patch_status(
        self, plural_: str, namespace: str, name: str, patch: Any
    ) -> dict[str, Any] | None:
        """JSON patch with ``test`` ops, as the API server applies it."""
        obj = self.objects.get((plural_, namespace, name))
        if obj is None:
            return None
        for op in patch:
            if op["op"] != "test":
                continue
            if op["path"] == "/metadata/resourceVersion":
                have = obj["metadata"].get("resourceVersion")
            else:
                have = (obj.get("status") or {}).get(op["path"].removeprefix("/status/"))
            if have != op["value"]:
                return None
        for op in patch:
            if op["op"] == "add" and op["path"] == "/status":
                obj["status"] = dict(op["value"])
            elif op["op"] in ("replace", "add"):
                obj.setdefault("status", {})[op["path"].removeprefix("/status/")] = op["value"]
        status = obj.get("status") or {}
        self.calls.append(("status", name, status.get("phase", "")))
        return obj


if TYPE_CHECKING:
    _kube: KubeLike = FakeKube()
