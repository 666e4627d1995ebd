"""Policy status from evaluations: conflicts show on the losing policy."""

from __future__ import annotations

from datetime import timedelta

from architect.engine.directives import PolicyRef
from architect.engine.evaluate import evaluate
from architect.engine.status import selector_string, statuses
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.policy.models import LabelSelector
from tests.factories import NOW, hp, pod_info, tel


def test_loser_is_conflicted_winner_is_not() -> None:
    t = {ContainerKey("default", "web-1", "app"): tel(ContainerState.SCALED_DOWN)}
    ev = evaluate([hp("a"), hp("b", priority=1)], [pod_info()], t, NOW)
    out = statuses(ev, {}, NOW)
    a = out[PolicyRef("HibernationPolicy", "default", "a")]
    b = out[PolicyRef("HibernationPolicy", "default", "b")]
    ca = {c["type"]: c for c in a["conditions"]}
    cb = {c["type"]: c for c in b["conditions"]}
    assert ca["Conflicted"]["status"] == "True"
    assert (
        "HibernationPolicy default/b governs app of pod default/web-1"
        in ca["Conflicted"]["message"]
    )
    assert cb["Conflicted"]["status"] == "False"
    assert (b["matchedPods"], b["hibernatedContainers"]) == (1, 1)
    # Unchanged on the next pass: nothing to write, and times do not move.
    later = NOW + timedelta(minutes=1)
    assert (
        statuses(
            ev,
            {
                PolicyRef("HibernationPolicy", "default", "a"): a,
                PolicyRef("HibernationPolicy", "default", "b"): b,
            },
            later,
        )
        == {}
    )


def test_selector_string() -> None:
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "x", "operator": "DoesNotExist"},
                {"key": "y", "operator": "Exists"},
            ],
        }
    )
    assert selector_string(sel) == "app=web,tier in (a,b),!x,y"
    assert selector_string(LabelSelector()) is None
