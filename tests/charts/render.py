"""Helpers of the chart tests: render the chart and index the objects it makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from charts.generate import CASES, render


def objects(text: str) -> list[dict[str, Any]]:
    docs = YAML(typ="safe").load_all(text)
    return [d for d in docs if isinstance(d, dict)]


def rendered(
    *sets: str,
    values: list[Path] | None = None,
    namespace: str = "architect-system",
    release: str = "architect",
) -> list[dict[str, Any]]:
    return objects(render(values, list(sets), release=release, namespace=namespace))


def custom_values() -> list[Path]:
    return [CASES / "custom.yaml"]


def by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        out.setdefault(str(obj["kind"]), []).append(obj)
    return out


def one(objs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name_part in o["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, got {len(found)}"
    return found[0]


def can(
    objs: list[dict[str, Any]],
    account: str,
    verb: str,
    resource: str,
    namespace: str,
    name: str = "",
    *,
    account_namespace: str = "architect-system",
) -> bool:
    """Whether the rendered RBAC lets ServiceAccount ``account`` do ``verb`` on core
    ``resource`` in ``namespace`` (``name``: one object), as the API server
    decides it from Roles, ClusterRoles and their bindings (no aggregation)."""
    by_name = {
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", "")): o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
    }
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        bound_ns = binding["metadata"].get("namespace", "")
        if binding["kind"] == "RoleBinding" and bound_ns != namespace:
            continue
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == account
            and s.get("namespace") == account_namespace
            for s in binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        role = by_name.get((ref["kind"], ref["name"], bound_ns if ref["kind"] == "Role" else ""))
        for rule in (role or {}).get("rules", []):
            names = rule.get("resourceNames") or []
            if (
                {"", "*"} & set(rule["apiGroups"])
                and {resource, "*"} & set(rule["resources"])
                and {verb, "*"} & set(rule["verbs"])
                and (not names or name in names)
            ):
                return True
    return False
