"""Builders of policies, pods and telemetry for the engine's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from architect.engine.pods import PodInfo
from architect.engine.telemetry import ContainerState, ContainerTelemetry
from architect.policy.annotations import COMPILED_FROM_ANNOTATIONS, COMPILED_LABEL
from architect.policy.models import HibernationPolicy, MigrationPolicy

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def hp(
    name: str = "hp",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    priority: int = 0,
    runtime: str = "runc",
    compiled: bool = False,
    managed_pod: bool = False,
    match_expressions: list[dict[str, Any]] | None = None,
) -> HibernationPolicy:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if compiled:
        meta["labels"] = {COMPILED_LABEL: COMPILED_FROM_ANNOTATIONS}
    sel: dict[str, Any] = {"matchLabels": labels if labels is not None else {"app": "web"}}
    if match_expressions:
        sel["matchExpressions"] = match_expressions
    spec: dict[str, Any] = {
        "selector": sel,
        "runtime": runtime,
        "priority": priority,
        "managedPod": managed_pod,
        "containers": (
            []
            if managed_pod
            else containers
            if containers is not None
            else [{"name": "app", "scaledownAfter": "30s"}]
        ),
    }
    return HibernationPolicy.model_validate({"metadata": meta, "spec": spec})


def mp(
    name: str = "mp",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    containers: list[str] | None = None,
    runtime: str = "runc",
    priority: int = 0,
) -> MigrationPolicy:
    return MigrationPolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels if labels is not None else {"app": "web"}},
                "runtime": runtime,
                "priority": priority,
                "containers": [
                    {"name": c} for c in (containers if containers is not None else ["app"])
                ],
            },
        }
    )


def pod(
    name: str = "web-1",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    runtime_class: str | None = "runc-architect",
    containers: tuple[str, ...] = ("app",),
    deleting: bool = False,
) -> PodInfo:
    return PodInfo(
        namespace=namespace,
        name=name,
        labels=labels if labels is not None else {"app": "web"},
        runtime_class=runtime_class,
        containers=containers,
        deleting=deleting,
    )


def tel(
    state: ContainerState = ContainerState.RUNNING,
    *,
    since: float = 3600,
    active: float | None = None,
    conns: int = 0,
    execs: int = 0,
    held: int = 0,
    cpu: float = 0.0,
    reduced: bool | None = None,
) -> ContainerTelemetry:
    return ContainerTelemetry(
        state=state,
        state_since=ago(since),
        last_activity=None if active is None else ago(active),
        open_connections=conns,
        exec_sessions=execs,
        held_packets=held,
        cpu_millicores=cpu,
        resources_reduced=(state is ContainerState.SCALED_DOWN) if reduced is None else reduced,
    )
