"""The cluster's MigrationPolicies as the operator last saw them, for admission.

The mutating webhook must answer in milliseconds, so it reads this instead of
listing policies per pod. The operator fills it once at startup, before kopf
serves any webhook, and keeps it current from its watch of the objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from architect.policy.models import MigrationPolicy, parse_policies


class MigrationPolicyCache:
    """MigrationPolicies by (namespace, name); one that does not validate is left
    out (the evaluator skips it too), with a note saying why."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], MigrationPolicy] = {}

    def replace_all(self, objs: Iterable[Mapping[str, Any]]) -> list[str]:
        self._by_key.clear()
        notes: list[str] = []
        for obj in objs:
            note = self.put(obj)
            if note:
                notes.append(note)
        return notes

    def put(self, obj: Mapping[str, Any]) -> str | None:
        """Add or replace one object; a note when it is left out as invalid."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        parsed, notes = parse_policies([{**obj, "kind": MigrationPolicy.KIND}])
        policy = next((p for p in parsed if isinstance(p, MigrationPolicy)), None)
        if policy is None:
            self._by_key.pop(key, None)
            return notes[0] if notes else f"MigrationPolicy {key[0]}/{key[1]} ignored"
        self._by_key[key] = policy
        return None

    def remove(self, namespace: str, name: str) -> None:
        self._by_key.pop((namespace, name), None)

    def policies(self) -> list[MigrationPolicy]:
        return list(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)
