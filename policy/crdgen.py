"""CustomResourceDefinitions generated from the pydantic models.

No schema is written by hand: pydantic's JSON schema is turned into a
structural OpenAPI v3 schema (references inlined, nullables unwrapped, titles
dropped), and the CEL rules attached to the models travel along as
``x-kubernetes-validations``. ``crds/`` holds the output; a test fails when
regenerating would change it.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from architect.policy.annotations import GROUP, VERSION
from architect.policy.models import RESOURCES, Resource
from architect.policy.yamlio import dump_documents

_DROP = {"title", "$defs"}


class _WithFactoryDefaults(GenerateJsonSchema):
    """Emit ``default: []`` / ``{}`` for list and dict fields.

    CEL rules read such fields unconditionally; with a schema default the API
    server fills them in before validation, so a rule never meets a missing list.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory in (list, dict):
            return factory()
        return super().get_default_value(schema)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Structural form of one pydantic schema node."""
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
            target.update(node)  # a field's own description and default win
            node = target
        if "anyOf" in node:
            # `X | None` fields are optional in Kubernetes: absence is the null.
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express a union of {len(options)} types structurally")
            merged = dict(options[0])
            merged.update(node)
            node = merged
            if node.get("default", NoDefault) is None:
                del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # structural schemas forbid it beside properties
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _inline(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """A stable, readable key order: description and type first."""
    head = ["description", "type", "format", "enum", "default", "pattern"]
    out = {k: schema[k] for k in head if k in schema}
    for k, v in schema.items():
        if k in out:
            continue
        if k == "properties":
            out[k] = {name: _ordered(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _ordered(v)
        else:
            out[k] = v
    return out


def field_schema(model: type[Resource], field: str) -> dict[str, Any]:
    """Structural schema of one top-level field (``spec`` or ``status``)."""
    full = model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    defs = full.get("$defs", {})
    return _ordered(_inline(full["properties"][field], defs))


@cache
def openapi_schema(model: type[Resource]) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a resource's CRD."""
    doc = (model.__doc__ or model.KIND).strip().splitlines()[0]
    return {
        "description": doc,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "API version of the object: architect.loopholelabs.io/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": f"Kind of the object: {model.KIND}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": field_schema(model, "spec"),
            "status": field_schema(model, "status"),
        },
        "required": ["spec"],
    }


def crd_for(model: type[Resource]) -> dict[str, Any]:
    columns = [{"name": name, "type": kind, "jsonPath": path} for name, path, kind in model.COLUMNS]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.KIND.lower(),
                "shortNames": list(model.SHORT_NAMES),
                "categories": ["architect"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd_for(m) for m in RESOURCES]


def crd_files() -> dict[str, str]:
    """File name under ``crds/`` -> YAML text: what ``crds/`` must hold."""
    header = (
        "# Generated by `architect crds --write crds/` from architect.policy.models. Do not edit.\n"
    )
    return {
        f"{crd['spec']['names']['plural']}.yaml": header + dump_documents([crd])
        for crd in all_crds()
    }


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
