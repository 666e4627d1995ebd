"""Plain pod and policy objects as the API server returns them."""

from __future__ import annotations

from typing import Any

from architect.policy.models import HibernationPolicy, MigrationPolicy

NS = "shop"


def pod(
    name: str = "web",
    *,
    containers: tuple[str, ...] = ("main",),
    started: bool = True,
    runtime_class: str = "runc-architect",
    labels: dict[str, str] | None = None,
    status: str | None = None,
    deleting: bool = False,
    ports: tuple[int, ...] = (8080,),
    template_hash: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
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


def hibernation(
    containers: tuple[str, ...] = ("main",),
    network: str = "packets",
    after: str = "3s",
    name: str = "web",
    shadow: tuple[tuple[int, int], ...] = (),
) -> HibernationPolicy:
    return HibernationPolicy.model_validate(
        {
            "apiVersion": "architect.loopholelabs.io/v1alpha1",
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
            "apiVersion": "architect.loopholelabs.io/v1alpha1",
            "kind": "MigrationPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "runtime": "runc",
                "containers": [{"name": c} for c in containers],
            },
        }
    )
