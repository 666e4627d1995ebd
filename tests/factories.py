"""The one set of builders for the unit tests: pods as the API server returns
them (and as the engine reads them), policies, and telemetry.

Two presets stand side by side because the suites test different things: the
engine's (``hp``, ``mp``, ``pod_info``: namespace ``default``, container ``app``)
vary selectors, priorities and runtimes; the daemon's (``hibernation``,
``migration``, ``pod``: namespace ``NS``, container ``main``) vary wake modes,
ports and container IDs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from architect.engine.pods import PodInfo
from architect.engine.pods import pod_info as read_pod_info
from architect.engine.telemetry import ContainerState, ContainerTelemetry
from architect.policy.annotations import COMPILED_FROM_ANNOTATIONS, COMPILED_LABEL
from architect.policy.models import HibernationPolicy, MigrationPolicy

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NS = "shop"  # the daemon suites' namespace
API_VERSION = "architect.loopholelabs.io/v1alpha1"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# -- pods ----------------------------------------------------------------------------


def pod(
    name: str = "web",
    *,
    namespace: str = NS,
    containers: tuple[str, ...] = ("main",),
    started: bool = True,
    runtime_class: str | None = "runc-architect",
    labels: dict[str, str] | None = None,
    status: str | None = None,
    deleting: bool = False,
    ports: tuple[int, ...] = (8080,),
    template_hash: str | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": labels if labels is not None else {"app": "web"},
        "annotations": {},
    }
    if status is not None:
        meta["annotations"]["architect.loopholelabs.io/status"] = status
    if template_hash is not None:
        meta["annotations"]["architect.loopholelabs.io/pod-template-hash"] = template_hash
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "runtimeClassName": runtime_class,
            "containers": [
                {
                    "name": c,
                    "ports": [{"containerPort": p} for p in ports],
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                }
                for c in containers
            ],
        },
        "status": {
            "containerStatuses": [
                {"name": c, "containerID": f"containerd://{name}-{c}-id"} for c in containers
            ]
            if started
            else []
        },
    }


def pod_info(
    name: str = "web-1",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    runtime_class: str | None = "runc-architect",
    containers: tuple[str, ...] = ("app",),
    deleting: bool = False,
) -> PodInfo:
    """A pod as the engine sees it: ``pod`` read by the engine's own reader."""
    return read_pod_info(
        pod(name, namespace=namespace, labels=labels, runtime_class=runtime_class,
            containers=containers, deleting=deleting)
    )


# -- policies: the engine's preset ---------------------------------------------------


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


# -- policies: the daemon's preset ---------------------------------------------------


def hibernation(
    containers: tuple[str, ...] = ("main",),
    network: str = "packets",
    after: str = "3s",
    name: str = "web",
    shadow: tuple[tuple[int, int], ...] = (),
) -> HibernationPolicy:
    return HibernationPolicy.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "HibernationPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "runtime": "runc",
                "containers": [
                    {
                        "name": c,
                        "scaledownAfter": after,
                        "wakeOn": {"network": network, "exec": True},
                        "shadowPorts": [{"appPort": a, "shadowPort": s} for a, s in shadow],
                    }
                    for c in containers
                ],
            },
        }
    )


def migration(containers: tuple[str, ...] = ("main",), name: str = "web") -> MigrationPolicy:
    return MigrationPolicy.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "MigrationPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "runtime": "runc",
                "containers": [{"name": c} for c in containers],
            },
        }
    )


# -- telemetry -----------------------------------------------------------------------


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
