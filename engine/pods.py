"""The few facts about a pod that decisions need, read once from its object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from architect.engine.telemetry import ContainerKey, ContainerState, ContainerTelemetry
from architect.policy.annotations import RUNTIME_CLASSES, STATUS_ANNOTATION, TEMPLATE_HASH_LABEL
from architect.policy.timestamps import parse_time

POD_SCOPE = ""  # the container name of a pod-scoped (runsc managed-pod) unit

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


def telemetry_from_pod(
    pod: Mapping[str, Any],
) -> tuple[dict[ContainerKey, ContainerTelemetry], list[str]]:
    """What the API shows of each container's state (the status annotation).

    Packet and connection counters live in the daemon only, so idle time is
    counted from the last state change: the hibernation time shown is the
    earliest it can happen.
    """
    info = pod_info(pod)
    meta = pod.get("metadata") or {}
    notes: list[str] = []
    raw = (meta.get("annotations") or {}).get(STATUS_ANNOTATION)
    states: dict[str, str] = {}
    if raw:
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                states = {str(k): str(v) for k, v in parsed.items()}
            else:
                notes.append(f"{STATUS_ANNOTATION}: value '{raw}': expected a JSON object")
        except json.JSONDecodeError:
            notes.append(f"{STATUS_ANNOTATION}: value '{raw}': not valid JSON")
    since = (
        parse_time((pod.get("status") or {}).get("startTime"))
        or parse_time(meta.get("creationTimestamp"))
        or datetime.now(UTC)
    )
    out: dict[ContainerKey, ContainerTelemetry] = {}
    units = (POD_SCOPE,) if info.runtime == "runsc" else info.containers
    for unit in units:
        value = states.get(unit or "pod", "RUNNING" if not states else None)
        if value is None:
            continue
        try:
            state = ContainerState(value)
        except ValueError:
            notes.append(f"{STATUS_ANNOTATION}: container '{unit}': unknown state '{value}'")
            continue
        out[ContainerKey(info.namespace, info.name, unit)] = ContainerTelemetry(
            state=state, state_since=since, resources_reduced=state is ContainerState.SCALED_DOWN
        )
    return out, notes
