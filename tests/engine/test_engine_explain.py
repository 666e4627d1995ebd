"""`architect explain pod` output, from objects as the API returns them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from architect.engine.explain import explain_pod

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def policy(
    name: str, *, priority: int = 0, compiled: bool = False, after: str = "30s"
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": "u",
        "resourceVersion": "1",
    }
    if compiled:
        meta["labels"] = {"architect.loopholelabs.io/compiled-from": "annotations"}
    return {
        "apiVersion": "architect.loopholelabs.io/v1alpha1",
        "kind": "HibernationPolicy",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "runtime": "runc",
            "priority": priority,
            "containers": [{"name": "app", "scaledownAfter": after}],
        },
    }


def pod(status: dict[str, str] | None, started: str = "2026-01-01T11:59:50Z") -> dict[str, Any]:
    ann = {"architect.loopholelabs.io/status": json.dumps(status)} if status is not None else {}
    return {
        "metadata": {
            "name": "web-1",
            "namespace": "default",
            "labels": {"app": "web"},
            "annotations": ann,
        },
        "spec": {
            "runtimeClassName": "runc-architect",
            "containers": [{"name": "app"}, {"name": "log"}],
        },
        "status": {"startTime": started},
    }


def test_explain_names_winner_loser_and_next_time() -> None:
    text = explain_pod(pod({"app": "RUNNING"}), [policy("hand"), policy("web", compiled=True)], NOW)
    assert "Pod default/web-1 (runtimeClassName runc-architect)" in text
    assert "hibernation: HibernationPolicy default/web\n" in text
    assert "overrides:   HibernationPolicy default/hand (compiled from annotations" in text
    assert "decision:    StayAwake: last active 2026-01-01T11:59:50+00:00" in text
    assert "next:        2026-01-01T12:00:20+00:00" in text
    assert "container log:" in text and "does not list container log" in text


def test_explain_hibernated_container() -> None:
    text = explain_pod(pod({"app": "SCALED_DOWN"}), [policy("web")], NOW)
    assert "decision:    StayHibernated: hibernated since" in text
    assert "wakes on exec" in text


def test_explain_reports_bad_status_and_bad_policy() -> None:
    bad = policy("broken")
    bad["spec"]["runtime"] = "kata"
    text = explain_pod(pod({"app": "NAPPING"}), [bad], NOW)
    assert "unknown state 'NAPPING'" in text
    assert "HibernationPolicy broken ignored: spec.runtime" in text
