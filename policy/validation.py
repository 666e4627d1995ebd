"""Offline validation: the CRD's schema and its CEL rules, as the API server runs them.

The schema comes from ``crdgen`` and the rules are the CRD's own
``x-kubernetes-validations``, so ``architect validate`` and ``kubectl apply``
judge an object the same way and report the same messages. Steps follow the
API server: unknown fields (kubectl's strict field validation), schema
(types, enums, patterns, bounds), schema defaults applied, then the CEL rules,
skipped when a type error would make them meaningless.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
import jsonschema
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from architect.policy.annotations import API_VERSION, GROUP
from architect.policy.crdgen import openapi_schema
from architect.policy.models import BY_KIND, Resource


@dataclass(frozen=True, order=True)
class ValidationIssue:
    """One problem with an object: the field path and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass(frozen=True)
class _Rule:
    rule: str
    message: str
    field_path: str
    program: celpy.Runner


_ENV = celpy.Environment()


@cache
def _compile(rule: str, message: str, field_path: str) -> _Rule:
    # Compiled once per process: cel-python parsing costs far more than evaluation.
    return _Rule(rule, message, field_path, _ENV.program(_ENV.compile(rule)))


def _strict(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused, as `kubectl apply` does by default."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if out["properties"] and "additionalProperties" not in out:
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = _strict(out[key])
    return out


@cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = _strict(openapi_schema(BY_KIND[kind]))
    # metadata is the API server's business; only its shape is checked here.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill in schema defaults the way the API server does before validation."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _rules_at(schema: Mapping[str, Any], value: Any, path: list[Any]) -> Iterator[ValidationIssue]:
    """Evaluate every CEL rule of the schema tree against the matching values."""
    for entry in schema.get("x-kubernetes-validations", ()):
        rule = _compile(entry["rule"], entry["message"], entry.get("fieldPath", ""))
        result: Any
        try:
            result = rule.program.evaluate({"self": json_to_cel(value)})
        except CELEvalError as e:
            result = e
        where = _path(path) + rule.field_path if rule.field_path else _path(path)
        if isinstance(result, CELEvalError):
            yield ValidationIssue(
                where, f"{rule.message} (rule could not be evaluated: {result.args[0]})"
            )
        elif not (isinstance(result, celtypes.BoolType) and bool(result)):
            yield ValidationIssue(where, rule.message)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                yield from _rules_at(sub, value[name], [*path, name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for name, sub_value in value.items():
                yield from _rules_at(extra, sub_value, [*path, name])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield from _rules_at(schema["items"], item, [*path, i])


def _schema_message(error: jsonschema.ValidationError) -> str:
    schema: Any = error.schema
    allowed: Any = error.validator_value
    if error.validator == "additionalProperties":
        instance: Any = error.instance
        extra = sorted(set(instance) - set(schema.get("properties", {})))
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}"
    if error.validator == "required":
        return str(error.message).replace("is a required property", "is required")
    if error.validator == "enum":
        return f"value {error.instance!r} is not one of: {', '.join(map(str, allowed))}"
    if error.validator == "pattern":
        return f"value {error.instance!r} does not match {error.validator_value}"
    return str(error.message)


def resource_kind(obj: Mapping[str, Any]) -> type[Resource] | None:
    """The model of an Architect object, or None for anything else."""
    api = obj.get("apiVersion")
    if isinstance(api, str) and api.split("/")[0] == GROUP:
        kind = obj.get("kind")
        return BY_KIND.get(kind) if isinstance(kind, str) else None
    return None


def validate_object(obj: Mapping[str, Any]) -> list[ValidationIssue]:
    """Every problem the API server would report for this Architect object."""
    if not isinstance(obj, Mapping):
        return [ValidationIssue("", "expected a YAML mapping (an object)")]
    if obj.get("apiVersion") != API_VERSION:
        return [
            ValidationIssue(
                "apiVersion", f"value {obj.get('apiVersion')!r}: expected {API_VERSION}"
            )
        ]
    model = resource_kind(obj)
    if model is None:
        kinds = ", ".join(BY_KIND)
        return [ValidationIssue("kind", f"value {obj.get('kind')!r}: expected one of {kinds}")]
    errors = list(_validator(model.KIND).iter_errors(obj))
    issues = [ValidationIssue(_path(e.absolute_path), _schema_message(e)) for e in errors]
    if any(e.validator in ("type", "required", "additionalProperties") for e in errors):
        # As in the API server, rules are not run over values of the wrong shape.
        return sorted(set(issues))
    defaulted = apply_defaults(openapi_schema(model), copy.deepcopy(dict(obj)))
    issues.extend(_rules_at(openapi_schema(model), defaulted, []))
    return sorted(set(issues))


def all_rules() -> list[tuple[str, str, str]]:
    """(kind, rule, message) of every CEL rule of every CRD."""
    out = []
    for kind, model in BY_KIND.items():
        stack: list[Mapping[str, Any]] = [openapi_schema(model)]
        while stack:
            node = stack.pop()
            for entry in node.get("x-kubernetes-validations", ()):
                out.append((kind, entry["rule"], entry["message"]))
            stack.extend(node.get("properties", {}).values())
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), Mapping):
                    stack.append(node[key])
    return out
