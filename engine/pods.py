"""The few facts about a pod that decisions need, read once from its object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from architect.policy.annotations import RUNTIME_CLASSES, TEMPLATE_HASH_LABEL

# The label the ReplicaSet controller puts on every pod of a Deployment.
K8S_TEMPLATE_HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod as the evaluator sees it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    runtime_class: str | None
    containers: tuple[str, ...]
    deleting: bool = False
    node: str | None = None
    template_hash: str | None = None

    @property
    def runtime(self) -> str | None:
        """runc / runsc when the pod runs on an Architect runtime class."""
        return RUNTIME_CLASSES.get(self.runtime_class or "")


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    """Read a Pod object (a dict as the API returns it)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    return PodInfo(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        labels=labels,
        runtime_class=spec.get("runtimeClassName"),
        containers=tuple(c.get("name", "") for c in spec.get("containers") or ()),
        deleting=meta.get("deletionTimestamp") is not None,
        node=spec.get("nodeName"),
        template_hash=labels.get(TEMPLATE_HASH_LABEL) or labels.get(K8S_TEMPLATE_HASH_LABEL),
    )
