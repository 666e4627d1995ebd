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
