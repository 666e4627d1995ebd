"""Kubernetes label selectors compiled once into fast predicates."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from architect.policy.models import LabelSelector

Matcher = Callable[[Mapping[str, str]], bool]


def compile_selector(selector: LabelSelector) -> Matcher:
    """A predicate over labels; an empty selector matches nothing (as in API.md)."""
    if not selector.match_labels and not selector.match_expressions:
        return lambda labels: False
    required = tuple(selector.match_labels.items())
    exprs = tuple((r.key, r.operator, frozenset(r.values)) for r in selector.match_expressions)

    def match(labels: Mapping[str, str]) -> bool:
        for key, value in required:
            if labels.get(key) != value:
                return False
        for key, op, values in exprs:
            present = key in labels
            if op == "In":
                if not present or labels[key] not in values:
                    return False
            elif op == "NotIn":
                if present and labels[key] in values:
                    return False
            elif op == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True

    return match
