"""Policy status from an evaluation: matched pods, hibernated containers, and the
Ready / Conflicted conditions that show a losing policy why it lost. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from architect.engine.directives import Conflict, Evaluation, PolicyRef, PolicyStats
from architect.policy.models import LabelSelector
from architect.policy.timestamps import fmt_time

MAX_CONFLICTS_SHOWN = 3


def selector_string(selector: LabelSelector) -> str | None:
    """The selector as a ``labelSelector`` query, so the API server filters pods;
    None when it matches nothing (an empty selector)."""
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for r in selector.match_expressions:
        if r.operator == "In":
            parts.append(f"{r.key} in ({','.join(r.values)})")
        elif r.operator == "NotIn":
            parts.append(f"{r.key} notin ({','.join(r.values)})")
        elif r.operator == "Exists":
            parts.append(r.key)
        else:
            parts.append(f"!{r.key}")
    return ",".join(parts) if parts else None


def _condition(
    ctype: str,
    status: str,
    reason: str,
    message: str,
    previous: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    prev = next((c for c in previous if c.get("type") == ctype), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or fmt_time(now),
    }


def policy_status(
    ref: PolicyRef,
    stats: PolicyStats,
    conflicts: Sequence[Conflict],
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status object of one policy; condition times move only on change."""
    prev_conditions = list((previous or {}).get("conditions") or [])
    lost = [c for c in conflicts if c.loser == ref]
    if lost:
        shown = "; ".join(c.message() for c in lost[:MAX_CONFLICTS_SHOWN])
        more = (
            f" (and {len(lost) - MAX_CONFLICTS_SHOWN} more)"
            if len(lost) > MAX_CONFLICTS_SHOWN
            else ""
        )
        conflicted = _condition(
            "Conflicted", "True", "OverriddenByAnotherPolicy", shown + more, prev_conditions, now
        )
    else:
        conflicted = _condition("Conflicted", "False", "NoConflict", "", prev_conditions, now)
    ready = _condition(
        "Ready", "True", "Evaluated", f"selects {stats.matched_pods} pod(s)", prev_conditions, now
    )
    out: dict[str, Any] = {"conditions": [ready, conflicted], "matchedPods": stats.matched_pods}
    if ref.kind == "HibernationPolicy":
        out["hibernatedContainers"] = stats.hibernated_containers
    return out


def statuses(
    evaluation: Evaluation, previous: Mapping[PolicyRef, Mapping[str, Any] | None], now: datetime
) -> dict[PolicyRef, dict[str, Any]]:
    """Statuses of every evaluated policy that changed (besides condition times)."""
    out = {}
    for ref, stats in evaluation.stats.items():
        new = policy_status(ref, stats, evaluation.conflicts, previous.get(ref), now)
        if _strip_times(new) != _strip_times(previous.get(ref) or {}):
            out[ref] = new
    return out


def _strip_times(status: Mapping[str, Any]) -> Any:
    conds = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions") or []
    ]
    return {**status, "conditions": conds}
