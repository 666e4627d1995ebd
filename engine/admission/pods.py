"""What admission does to a Pod: the health-check proxy sidecar and probe rewrites.

``mutate_pod`` is pure: a pod dict and the pod's compiled HibernationPolicy in,
the mutated pod dict out (the input is not modified).
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from architect.engine.admission.workloads import (
    AdmissionDenied,
    compile_or_deny,
    describe,
    owns_its_policies,
)
from architect.engine.labels import compile_selector
from architect.policy.annotations import (
    COMPILED_FROM_ANNOTATIONS,
    COMPILED_LABEL,
    MIGRATION_CONTAINERS,
    POD_LABEL,
    RUNTIME_CLASSES,
    TEMPLATE_HASH_ANNOTATION,
    TEMPLATE_HASH_LABEL,
)
from architect.policy.compiler import (
    Policy,
    generated_label_value,
    is_bare_unlabelled_pod,
    pod_label_value,
    pod_template,
)
from architect.policy.models import (
    HibernationPolicy,
    MigrationContainer,
    MigrationPolicy,
    PortMapping,
)

STATUS_DIR = "/run/architect"
STATUS_FILE = f"{STATUS_DIR}/status.json"
STATUS_VOLUME = "architect-run"
SIDECAR_PREFIX = "architect-health-"
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
# Labels a controller puts on its pods that identify the pod template; the
# replacement of a deleted pod carries the same value.
TEMPLATE_HASH_SOURCES = ("pod-template-hash", "controller-revision-hash")


@dataclass(frozen=True)
class SidecarConfig:
    image: str = "ghcr.io/loopholelabs/architect:latest"
    image_pull_policy: str = "IfNotPresent"
    cpu_request: str = "10m"
    memory_request: str = "16Mi"
    memory_limit: str = "64Mi"


def build_sidecar_spec(
    container: str, mapping: PortMapping, config: SidecarConfig
) -> dict[str, Any]:
    """The health-check proxy for one mapping, as a native sidecar (init container
    with restartPolicy Always): it starts before the app, and it does not keep a
    Job's pod running after the app exits."""
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if mapping.shadow_port < 1024:
        caps["add"] = ["NET_BIND_SERVICE"]
    return {
        "name": f"{SIDECAR_PREFIX}{mapping.shadow_port}",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "restartPolicy": "Always",
        # The flags of runtime/network/healthproxy.parse_args (a test holds the two
        # together: they once drifted apart and every proxied pod crash-looped).
        "command": [
            "architect",
            "health-proxy",
            "--map",
            f"{container}:{mapping.app_port}:{mapping.shadow_port}",
            "--status-file",
            STATUS_FILE,
        ],
        "ports": [{"name": f"hc-{mapping.shadow_port}", "containerPort": mapping.shadow_port}],
        "resources": {
            "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
            "limits": {"memory": config.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": caps,
        },
        "volumeMounts": [{"name": STATUS_VOLUME, "mountPath": STATUS_DIR, "readOnly": True}],
    }


def _resolve_port(port: Any, container: Mapping[str, Any]) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or ():
        if p.get("name") == port:
            value = p.get("containerPort")
            return value if isinstance(value, int) else None
    return None


def _rewrite_probe(probe: dict[str, Any], container: Mapping[str, Any], to: dict[int, int]) -> bool:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        h = probe.get(handler)
        if not isinstance(h, dict):
            continue
        app_port = _resolve_port(h.get("port"), container)
        if app_port in to:
            h["port"] = to[app_port]
            return True
    return False


def template_hash(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key in TEMPLATE_HASH_SOURCES:
        if labels.get(key):
            return str(labels[key])
    return None


def _token() -> str:
    return secrets.token_hex(5)


def pod_label(pod: Mapping[str, Any], new_token: Callable[[], str] = _token) -> str | None:
    """The ``POD_LABEL`` value a bare, unlabelled Pod gets; None for any other pod.

    Its name when it has one; a pod created with only ``generateName`` has no
    name yet at this point (the API server picks it after the mutating
    webhooks), so it gets the prefix and a random token: two pods of one
    generateName never select each other.
    """
    if not is_bare_unlabelled_pod(pod) or not owns_its_policies(pod):
        return None
    meta = pod.get("metadata") or {}
    if meta.get("name"):
        return pod_label_value(str(meta["name"]))
    return generated_label_value(str(meta.get("generateName") or ""), new_token())


def migration_containers(
    pod: Mapping[str, Any], policies: Iterable[MigrationPolicy]
) -> dict[str, dict[str, bool]]:
    """The pod's containers that a MigrationPolicy of its namespace and runtime
    selects, each with the migration choices of the policy that governs it (the
    evaluator's precedence: priority, then compiled from annotations, then name),
    in the pod's order. The shim reads them: it sees annotations, not policies."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    runtime = RUNTIME_CLASSES.get(spec.get("runtimeClassName") or "")
    if runtime != "runc":  # a runsc pod moves whole, by PersistentCheckpoint only
        return {}
    namespace = meta.get("namespace") or "default"
    labels = meta.get("labels") or {}
    selecting = [
        p
        for p in policies
        if (p.metadata.namespace or "default") == namespace
        and p.spec.runtime == runtime
        and compile_selector(p.spec.selector)(labels)
    ]
    selecting.sort(key=_precedence)
    chosen: dict[str, MigrationContainer] = {}
    for p in selecting:
        for c in p.spec.containers:
            chosen.setdefault(c.name, c)
    return {
        str(c.get("name")): _choices(chosen[c["name"]])
        for c in spec.get("containers") or ()
        if c.get("name") in chosen
    }


def _precedence(p: MigrationPolicy) -> tuple[int, int, str]:
    compiled = (p.metadata.labels or {}).get(COMPILED_LABEL) == COMPILED_FROM_ANNOTATIONS
    return (-p.spec.priority, 0 if compiled else 1, p.metadata.name or "")


def _choices(c: MigrationContainer) -> dict[str, bool]:
    # The spec's own field names, so the annotation reads like the policy.
    return {
        "autoScaleupAfterMigration": c.auto_scaleup_after_migration,
        "migrateEmptyDir": c.migrate_empty_dir,
        "rewriteListenerAddresses": c.rewrite_listener_addresses,
        "rewriteEstablishedAddresses": c.rewrite_established_addresses,
    }


def mutate_pod(
    pod: Mapping[str, Any],
    policy: HibernationPolicy | None,
    config: SidecarConfig,
    new_token: Callable[[], str] = _token,
    migration: Iterable[MigrationPolicy] = (),
) -> dict[str, Any]:
    """The pod with sidecars, probe rewrites and the template-hash label and annotation
    added, and a bare pod without labels labelled ``POD_LABEL`` (its policies select it
    by that label). A pod with a template hash whose containers a MigrationPolicy in
    ``migration`` selects gets them in ``MIGRATION_CONTAINERS`` (a value a user
    wrote there is replaced: only admission says it).

    Idempotent: a pod that already has them (a reinvoked webhook) is unchanged.
    """
    out = copy.deepcopy(dict(pod))
    meta = out.setdefault("metadata", {})
    label = pod_label(out, new_token)
    if label is not None:
        meta["labels"] = {POD_LABEL: label}
    th = template_hash(out)
    if th and not (meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL):
        meta.setdefault("labels", {})[TEMPLATE_HASH_LABEL] = th
    if th and not (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION):
        meta.setdefault("annotations", {})[TEMPLATE_HASH_ANNOTATION] = th
    moving = migration_containers(out, migration) if th else {}
    if moving:
        meta.setdefault("annotations", {})[MIGRATION_CONTAINERS] = json.dumps(
            moving, separators=(",", ":")
        )
    elif MIGRATION_CONTAINERS in (meta.get("annotations") or {}):
        del meta["annotations"][MIGRATION_CONTAINERS]
    if policy is None:
        return out
    spec = out.setdefault("spec", {})
    containers = {c.get("name"): c for c in spec.get("containers") or ()}
    init = spec.setdefault("initContainers", [])
    present = {c.get("name") for c in init}
    injected = False
    for hc in policy.spec.containers:
        if not hc.health_check_proxy or hc.name not in containers:
            continue
        target = containers[hc.name]
        rewrite = {m.app_port: m.shadow_port for m in hc.health_check_proxy}
        for probe in PROBES:
            if isinstance(target.get(probe), dict):
                _rewrite_probe(target[probe], target, rewrite)
        for m in hc.health_check_proxy:
            sidecar = build_sidecar_spec(hc.name, m, config)
            if sidecar["name"] not in present:
                init.append(sidecar)
                present.add(sidecar["name"])
                injected = True
    if not init:
        del spec["initContainers"]
    volumes = spec.get("volumes") or []
    if injected and not any(v.get("name") == STATUS_VOLUME for v in volumes):
        volumes.append(
            {"name": STATUS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
        )
        spec["volumes"] = volumes
    return out


def check_ports(pod: Mapping[str, Any], policy: HibernationPolicy | None) -> list[str]:
    """Problems a pod's port layout has with its mappings (shared network namespace)."""
    if policy is None:
        return []
    problems = []
    used: dict[int, str] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        for p in c.get("ports") or ():
            if isinstance(p.get("containerPort"), int):
                used[p["containerPort"]] = str(c.get("name"))
    shadows: dict[int, str] = {}
    for hc in policy.spec.containers:
        for m in [*hc.health_check_proxy, *hc.shadow_ports]:
            if m.shadow_port in used:
                problems.append(
                    f"shadowPort {m.shadow_port} of container '{hc.name}' is already a port of "
                    f"container '{used[m.shadow_port]}'"
                )
        for m in hc.health_check_proxy:
            if m.shadow_port in shadows and shadows[m.shadow_port] != hc.name:
                problems.append(
                    f"shadowPort {m.shadow_port} is used by containers '{shadows[m.shadow_port]}' "
                    f"and '{hc.name}': pod containers share one network namespace"
                )
            shadows[m.shadow_port] = hc.name
    return problems


def hibernation_policy(policies: list[Policy]) -> HibernationPolicy | None:
    return next((p for p in policies if isinstance(p, HibernationPolicy)), None)


def _compile_and_check(obj: Mapping[str, Any]) -> list[Policy]:
    policies = compile_or_deny(obj)
    _, spec = pod_template(obj)
    problems = check_ports({"spec": spec}, hibernation_policy(policies))
    if problems:
        raise AdmissionDenied(
            f"{describe(obj)}: invalid Architect annotations:\n" + "\n".join(problems)
        )
    return policies


def validate_workload(obj: Mapping[str, Any]) -> list[Policy]:
    """Compile a Pod's or workload's annotations and check its ports; deny on any problem.

    A stored Pod (validation, after mutation) that still has no labels was never
    labelled by the mutating webhook (created before it, or its annotations were
    added later): its policies could select nothing, so the edit is refused with
    the label to add.
    """
    policies = _compile_and_check(obj)
    meta = obj.get("metadata") or {}
    if policies and meta.get("uid") and is_bare_unlabelled_pod(obj) and owns_its_policies(obj):
        value = pod_label_value(str(meta.get("name") or ""))
        raise AdmissionDenied(
            f"{describe(obj)}: the pod has no labels, so its compiled policies cannot select "
            f"it: label it first (kubectl label pod {meta.get('name')} {POD_LABEL}={value})"
        )
    return policies


def admit_pod(
    pod: Mapping[str, Any],
    config: SidecarConfig,
    new_token: Callable[[], str] = _token,
    migration: Iterable[MigrationPolicy] = (),
) -> dict[str, Any]:
    """The mutated pod, or AdmissionDenied with the compiler's message.
    ``migration``: the cluster's MigrationPolicies as the operator knows them."""
    policies = _compile_and_check(pod)
    return mutate_pod(pod, hibernation_policy(policies), config, new_token, migration)
