"""Compile a workload's Architect annotations into HibernationPolicy and MigrationPolicy.

Annotations are sugar: one decision path reads only policy objects, and what a
workload's annotations mean is an object ``kubectl get`` shows. Compiled
objects spell out every default. Every problem of a workload is collected and
reported together, each as ``KEY: value 'VALUE': RULE``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from architect.policy import annotations as a
from architect.policy.durations import parse_positive_duration
from architect.policy.models import (
    HibernationContainer,
    HibernationPod,
    HibernationPolicy,
    HibernationPolicySpec,
    LabelSelector,
    MigrationContainer,
    MigrationPolicy,
    MigrationPolicySpec,
    ObjectMeta,
    PersistentCheckpointRef,
    PortMapping,
    StartFrom,
    WakeOn,
)

Policy = HibernationPolicy | MigrationPolicy

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_NETWORK_MODES = ("packets", "connections")
# A label value: at most 63 characters, alphanumerics with -_. inside.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_MAX = 63
_HASH_CHARS = 10
# Where the pod template lives, per kind.
_TEMPLATE_PATH: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}
WORKLOAD_KINDS = frozenset(_TEMPLATE_PATH)


@dataclass(frozen=True, order=True)
class Problem:
    """One broken rule: the annotation key (or field), the offending value, the rule."""

    key: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"{self.key}: value {_quote(self.value)}: {self.rule}"


def _quote(value: str) -> str:
    short = value if len(value) <= 200 else value[:197] + "..."
    return "'" + short.replace("'", "\\'") + "'"


class CompileError(Exception):
    """All problems found in one workload's annotations."""

    def __init__(self, problems: list[Problem], workload: str = "") -> None:
        self.problems = sorted(set(problems), key=_problem_order)
        self.workload = workload
        super().__init__("\n".join(str(p) for p in self.problems))


def _problem_order(p: Problem) -> tuple[int, str, str]:
    order = [x.key for x in a.ANNOTATIONS]
    return (order.index(p.key) if p.key in order else len(order), p.value, p.rule)


@dataclass
class _Template:
    kind: str
    name: str
    namespace: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: list[str]
    runtime_class: str | None


def pod_template(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of the pod template of a Pod or workload; KeyError if none."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _TEMPLATE_PATH:
        raise KeyError(f"kind {kind!r} has no pod template")
    node: Any = obj
    for step in _TEMPLATE_PATH[kind]:
        node = node.get(step) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        raise KeyError(f"{kind} has no {'.'.join(_TEMPLATE_PATH[kind])}")
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    return (
        dict(meta) if isinstance(meta, Mapping) else {},
        dict(spec) if isinstance(spec, Mapping) else {},
    )


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _read_template(obj: Mapping[str, Any]) -> _Template:
    meta_obj = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta_obj, Mapping)
    tmeta, tspec = pod_template(obj)
    name = meta_obj.get("name") or str(meta_obj.get("generateName") or "").rstrip("-")
    containers = [
        str(c.get("name"))
        for c in tspec.get("containers") or []
        if isinstance(c, Mapping) and c.get("name")
    ]
    runtime_class = tspec.get("runtimeClassName")
    return _Template(
        kind=str(obj.get("kind")),
        name=str(name or ""),
        namespace=meta_obj.get("namespace"),
        labels=_string_map(tmeta.get("labels")),
        annotations=_string_map(tmeta.get("annotations")),
        containers=containers,
        runtime_class=runtime_class if isinstance(runtime_class, str) else None,
    )


def pod_label_value(name: str) -> str:
    """The ``POD_LABEL`` value of the pod ``name``: the name itself when it is a
    valid label value, else (a pod name may have 253 characters, a label value
    63) its start and a hash of the whole name, so distinct names get distinct
    values."""
    if _LABEL_VALUE.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    start = re.sub(r"[^-A-Za-z0-9_.]", "", name)[: _LABEL_MAX - _HASH_CHARS - 1].strip("-_.")
    return f"{start}-{digest}" if start else digest


def generated_label_value(generate_name: str, token: str) -> str:
    """The ``POD_LABEL`` value of a pod that has only a ``generateName`` when it is
    admitted (the API server picks the name later): the prefix and a random token."""
    start = re.sub(r"[^-A-Za-z0-9_.]", "", generate_name)[: _LABEL_MAX - len(token) - 1]
    start = start.strip("-_.")
    return f"{start}-{token}" if start else token


def is_bare_unlabelled_pod(obj: Mapping[str, Any]) -> bool:
    """A Pod without any label: its policies select it by ``POD_LABEL``."""
    if obj.get("kind") != "Pod":
        return False
    meta = obj.get("metadata")
    return not (isinstance(meta, Mapping) and _string_map(meta.get("labels")))


def compile_notes(obj: Mapping[str, Any]) -> list[str]:
    """What ``architect compile`` cannot show but admission will do (printed as notes)."""
    if not is_bare_unlabelled_pod(obj) or not architect_annotations(obj):
        return []
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name, generate = str(meta.get("name") or ""), str(meta.get("generateName") or "")
    owned = "the policies are owned by the Pod (ownerReference) and deleted with it"
    if name:
        return [
            f"the Pod has no labels: admission labels it {a.POD_LABEL}={pod_label_value(name)} "
            f"and the policies select it by that label; {owned}"
        ]
    shown = pod_label_value(generate.rstrip("-")) if generate.rstrip("-") else ""
    return [
        f"the Pod has no labels and no name (generateName {generate!r}): admission labels it "
        f"{a.POD_LABEL}=<generateName and a random suffix> and names the policies after the "
        f"pod's generated name; the selector shown uses {shown!r}; {owned}"
    ]


def architect_annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    """The Architect annotations of a workload's pod template (none for other kinds)."""
    try:
        meta, _ = pod_template(obj)
    except KeyError:
        return {}
    return {
        k: v
        for k, v in _string_map(meta.get("annotations")).items()
        if a.is_architect_key(k) and k not in a.WRITTEN_BY_ARCHITECT
    }


# --- value parsers: each returns the parsed value or records problems -----------


@dataclass
class _Ctx:
    tpl: _Template
    problems: list[Problem] = field(default_factory=list)

    def fail(self, key: str, value: str, rule: str) -> None:
        self.problems.append(Problem(key, value, rule))


def _json(ctx: _Ctx, key: str, raw: str, expect: type, shape: str) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        ctx.fail(key, raw, f"not valid JSON ({e.msg} at column {e.colno}); expected {shape}")
        return None
    if not isinstance(value, expect):
        ctx.fail(key, raw, f"expected {shape}")
        return None
    return value


def _container_list(ctx: _Ctx, key: str, raw: str) -> list[str] | None:
    shape = a.Shape.CONTAINER_LIST.value + ', e.g. ["app"]'
    value = _json(ctx, key, raw, list, shape)
    if value is None:
        return None
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            ctx.fail(key, json.dumps(item), f"expected a container name (string); {shape}")
        elif item in names:
            ctx.fail(key, item, "container listed twice")
        else:
            names.append(item)
    return names


def _container_map(
    ctx: _Ctx, key: str, raw: str, shape: a.Shape, parse: Callable[[str], Any], example: str
) -> dict[str, Any] | None:
    value = _json(ctx, key, raw, dict, f"{shape.value}, e.g. {example}")
    if value is None:
        return None
    out: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(item, str):
            ctx.fail(
                key, json.dumps(item), f"container '{name}': expected a string, e.g. {example}"
            )
            continue
        try:
            out[name] = parse(item)
        except ValueError as e:
            ctx.fail(key, item, f"container '{name}': {e}")
    return out


def _duration(text: str) -> str:
    try:
        parse_positive_duration(text)
    except ValueError as e:
        # The message names the text; the Problem already shows it as the value.
        raise ValueError(str(e).replace(f"'{text}' ", "", 1)) from None
    return text


def _network_mode(text: str) -> str:
    if text not in _NETWORK_MODES:
        raise ValueError("expected packets or connections")
    return text


def _port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 65535 else None


def _mappings(ctx: _Ctx, key: str, raw: str) -> dict[str, list[PortMapping]] | None:
    shape = a.Shape.PORT_MAPPINGS.value
    value = _json(ctx, key, raw, dict, shape)
    if value is None:
        return None
    entries = value.get("mappings")
    if not isinstance(entries, list) or set(value) != {"mappings"}:
        ctx.fail(key, raw, f"expected {shape}")
        return None
    out: dict[str, list[PortMapping]] = {}
    seen: set[tuple[str, int]] = set()
    for entry in entries:
        text = json.dumps(entry)
        if not isinstance(entry, dict) or set(entry) != {"containerName", "appPort", "shadowPort"}:
            ctx.fail(key, text, "each mapping needs exactly containerName, appPort and shadowPort")
            continue
        name, app, shadow = (
            entry["containerName"],
            _port(entry["appPort"]),
            _port(entry["shadowPort"]),
        )
        if not isinstance(name, str) or not name:
            ctx.fail(key, text, "containerName must be a container name")
            continue
        if app is None or shadow is None:
            ctx.fail(key, text, "appPort and shadowPort must be integers between 1 and 65535")
            continue
        if app == shadow:
            ctx.fail(key, text, "appPort and shadowPort must differ")
            continue
        if (name, shadow) in seen:
            ctx.fail(key, text, f"shadowPort {shadow} is mapped twice for container '{name}'")
            continue
        seen.add((name, shadow))
        out.setdefault(name, []).append(PortMapping(app_port=app, shadow_port=shadow))
    return out


def _true(ctx: _Ctx, key: str, raw: str) -> bool | None:
    if raw in ("true", "false"):
        return raw == "true"
    ctx.fail(key, raw, 'expected "true" or "false"')
    return None


def _reference(ctx: _Ctx, key: str, raw: str) -> PersistentCheckpointRef | None:
    parts = raw.split("/")
    if len(parts) == 1 and _DNS_SUBDOMAIN.match(parts[0]):
        return PersistentCheckpointRef(name=parts[0])
    if len(parts) == 2 and _DNS_LABEL.match(parts[0]) and _DNS_SUBDOMAIN.match(parts[1]):
        return PersistentCheckpointRef(namespace=parts[0], name=parts[1])
    ctx.fail(
        key,
        raw,
        'expected "name" or "namespace/name" of a PersistentCheckpoint (lowercase DNS names)',
    )
    return None


# --- the compiler -------------------------------------------------------------


@dataclass
class _Parsed:
    managed: list[str] | None = None
    scaledown: dict[str, str] = field(default_factory=dict)
    network: dict[str, str] = field(default_factory=dict)
    health: dict[str, list[PortMapping]] = field(default_factory=dict)
    shadow: dict[str, list[PortMapping]] = field(default_factory=dict)
    autoscaleup: list[str] = field(default_factory=list)
    no_autoscaledown: list[str] = field(default_factory=list)
    scaleup_timeout: dict[str, str] = field(default_factory=dict)
    emptydir: list[str] = field(default_factory=list)
    rewrite_listener: list[str] = field(default_factory=list)
    rewrite_established: list[str] = field(default_factory=list)
    managed_pod: bool = False
    start_from: PersistentCheckpointRef | None = None


def _parse_all(ctx: _Ctx, ann: Mapping[str, str]) -> _Parsed:
    p = _Parsed()
    for key, raw in ann.items():
        spec = a.BY_KEY.get(key)
        if spec is None:
            known = ", ".join(x.short for x in a.ANNOTATIONS)
            ctx.fail(key, raw, f"unknown Architect annotation; known keys: {known}")
            continue
        if spec.shape is a.Shape.CONTAINER_LIST:
            names = _container_list(ctx, key, raw)
            if names is not None:
                attr = {
                    a.MANAGED_CONTAINERS: "managed",
                    a.POSTMIGRATION_AUTOSCALEUP: "autoscaleup",
                    a.DISABLE_AUTOSCALEDOWN: "no_autoscaledown",
                    a.MIGRATE_EMPTYDIR: "emptydir",
                    a.REWRITE_LISTENER: "rewrite_listener",
                    a.REWRITE_ESTABLISHED: "rewrite_established",
                }[key]
                setattr(p, attr, names)
        elif spec.shape is a.Shape.DURATION_MAP:
            durations = _container_map(ctx, key, raw, spec.shape, _duration, '{"app": "30s"}')
            if durations is not None:
                setattr(
                    p, "scaledown" if key == a.SCALEDOWN_DURATIONS else "scaleup_timeout", durations
                )
        elif spec.shape is a.Shape.NETWORK_MAP:
            modes = _container_map(ctx, key, raw, spec.shape, _network_mode, '{"app": "packets"}')
            if modes is not None:
                p.network = modes
        elif spec.shape is a.Shape.PORT_MAPPINGS:
            maps = _mappings(ctx, key, raw)
            if maps is not None:
                setattr(p, "health" if key == a.HEALTH_CHECK_PROXY else "shadow", maps)
        elif spec.shape is a.Shape.TRUE:
            flag = _true(ctx, key, raw)
            p.managed_pod = bool(flag)
        elif spec.shape is a.Shape.REFERENCE:
            p.start_from = _reference(ctx, key, raw)
    return p


def _names_in(key: str, raw_value: str, parsed: _Parsed) -> list[str]:
    """Container names an annotation's value mentions."""
    if key == a.MANAGED_CONTAINERS:
        return list(parsed.managed or [])
    lists: dict[str, Mapping[str, Any] | list[str]] = {
        a.SCALEDOWN_DURATIONS: parsed.scaledown,
        a.NETWORK_MONITOR: parsed.network,
        a.HEALTH_CHECK_PROXY: parsed.health,
        a.SHADOW_PORTS: parsed.shadow,
        a.POSTMIGRATION_AUTOSCALEUP: parsed.autoscaleup,
        a.DISABLE_AUTOSCALEDOWN: parsed.no_autoscaledown,
        a.SCALEUP_TIMEOUT: parsed.scaleup_timeout,
        a.MIGRATE_EMPTYDIR: parsed.emptydir,
        a.REWRITE_LISTENER: parsed.rewrite_listener,
        a.REWRITE_ESTABLISHED: parsed.rewrite_established,
    }
    return list(lists.get(key, []))


def _check_rules(ctx: _Ctx, ann: Mapping[str, str], p: _Parsed, runtime: str | None) -> None:
    tpl = ctx.tpl
    for key, raw in ann.items():
        spec = a.BY_KEY.get(key)
        if spec is None:
            continue
        if runtime is not None and spec.runtime is not None and spec.runtime != runtime:
            cls = a.RUNC_CLASS if spec.runtime == "runc" else a.RUNSC_CLASS
            hint = (
                f"; with {a.RUNSC_CLASS} use {a.MANAGED_POD}" if key == a.MANAGED_CONTAINERS else ""
            )
            ctx.fail(
                key,
                raw,
                f"only for runtimeClassName {cls} (this pod uses {tpl.runtime_class}){hint}",
            )
            continue
        requires = (a.MANAGED_POD,) if runtime == "runsc" and spec.pod_too else spec.requires
        for needed in requires:
            if needed not in ann:
                ctx.fail(key, raw, f"requires the annotation {needed}")
        for name in _names_in(key, raw, p):
            if name not in tpl.containers:
                have = ", ".join(tpl.containers) or "none"
                ctx.fail(key, name, f"not a container of the pod (containers: {have})")
            elif spec.names_managed and p.managed is not None and name not in p.managed:
                ctx.fail(
                    key,
                    name,
                    f"not a managed container (listed in {a.MANAGED_CONTAINERS}: "
                    f"{', '.join(p.managed) or 'none'})",
                )
    if a.MANAGED_CONTAINERS in ann and p.managed == []:
        ctx.fail(a.MANAGED_CONTAINERS, ann[a.MANAGED_CONTAINERS], "list at least one container")
    for key, maps in ((a.HEALTH_CHECK_PROXY, p.health), (a.SHADOW_PORTS, p.shadow)):
        for name in maps:
            if a.NETWORK_MONITOR in ann and name in (p.managed or []) and name not in p.network:
                ctx.fail(key, name, f"container has no network wake: add it to {a.NETWORK_MONITOR}")
    if a.MANAGED_POD in ann and not p.managed_pod:
        for key in (a.START_FROM_PERSISTENT, a.SCALEDOWN_DURATIONS, a.DISABLE_AUTOSCALEDOWN):
            if key in ann:
                ctx.fail(key, ann[key], f'requires {a.MANAGED_POD}: "true"')


def _metadata(tpl: _Template) -> ObjectMeta:
    return ObjectMeta(
        name=tpl.name,
        namespace=tpl.namespace,
        labels={a.COMPILED_LABEL: a.COMPILED_FROM_ANNOTATIONS},
        annotations={a.WORKLOAD_ANNOTATION: f"{tpl.kind}/{tpl.name}"},
    )


def _pod_rule(tpl: _Template, p: _Parsed) -> HibernationPod | None:
    """The idle rule of a managed runsc pod, None when no scaledown key asks for one
    (the seed checkpoints gVisor pods explicitly; idle hibernation is opt-in). The
    sandbox hibernates as one, so only when every container may: after the longest
    of their durations (the default for one not listed), never if one is disabled."""
    if not p.scaledown and not p.no_autoscaledown:
        return None
    durations = [p.scaledown.get(n, a.DEFAULT_SCALEDOWN_AFTER) for n in tpl.containers]
    longest = max(durations, key=parse_positive_duration, default=a.DEFAULT_SCALEDOWN_AFTER)
    return HibernationPod(scaledown_after=longest, auto_scaledown=not p.no_autoscaledown)


def _build(tpl: _Template, p: _Parsed, runtime: str) -> list[Policy]:
    labels = tpl.labels or {a.POD_LABEL: pod_label_value(tpl.name)}
    selector = LabelSelector(match_labels=dict(sorted(labels.items())))
    if runtime == "runsc":
        if not p.managed_pod:
            return []
        hp_spec = HibernationPolicySpec(
            selector=selector, runtime="runsc", managed_pod=True, pod=_pod_rule(tpl, p)
        )
        mp_spec = MigrationPolicySpec(
            selector=selector,
            runtime="runsc",
            start_from=StartFrom(persistent_checkpoint=p.start_from) if p.start_from else None,
        )
    else:
        managed = p.managed or []
        hp_spec = HibernationPolicySpec(
            selector=selector,
            runtime="runc",
            containers=[
                HibernationContainer(
                    name=name,
                    scaledown_after=p.scaledown.get(name, a.DEFAULT_SCALEDOWN_AFTER),
                    auto_scaledown=name not in p.no_autoscaledown,
                    scaleup_timeout=p.scaleup_timeout.get(name, a.DEFAULT_SCALEUP_TIMEOUT),
                    wake_on=WakeOn.model_validate({"network": p.network.get(name, "none")}),
                    health_check_proxy=p.health.get(name, []),
                    shadow_ports=p.shadow.get(name, []),
                )
                for name in managed
            ],
        )
        mp_spec = MigrationPolicySpec(
            selector=selector,
            runtime="runc",
            containers=[
                MigrationContainer(
                    name=name,
                    auto_scaleup_after_migration=name in p.autoscaleup,
                    migrate_empty_dir=name in p.emptydir,
                    rewrite_listener_addresses=name in p.rewrite_listener,
                    rewrite_established_addresses=name in p.rewrite_established,
                )
                for name in managed
            ],
        )
    return [
        HibernationPolicy(metadata=_metadata(tpl), spec=hp_spec),
        MigrationPolicy(metadata=_metadata(tpl), spec=mp_spec),
    ]


def compile_workload(obj: Mapping[str, Any]) -> list[Policy]:
    """The policies a workload's annotations stand for; [] when it has none.

    Raises CompileError with every problem found.
    """
    ann = architect_annotations(obj)
    if not ann:
        return []
    tpl = _read_template(obj)
    ctx = _Ctx(tpl)
    runtime = a.RUNTIME_CLASSES.get(tpl.runtime_class or "")
    if runtime is None:
        for key, raw in ann.items():
            ctx.fail(
                key,
                raw,
                f"needs runtimeClassName {a.RUNC_CLASS} or {a.RUNSC_CLASS} "
                f"(the pod template has {tpl.runtime_class or 'none'})",
            )
    if not tpl.name:
        ctx.fail("metadata.name", "", f"the {tpl.kind} needs a name to name its policies")
    if not tpl.labels and tpl.kind != "Pod":
        # A bare Pod is selected by the label admission gives it (POD_LABEL).
        ctx.fail(
            "metadata.labels",
            "{}",
            "the pod template needs labels: the compiled policies select its pods by them",
        )
    parsed = _parse_all(ctx, ann)
    _check_rules(ctx, ann, parsed, runtime)
    if runtime == "runc" and parsed.managed is None and a.MANAGED_CONTAINERS not in ann:
        # Every other runc key requires managed-containers; that rule already failed.
        pass
    if runtime == "runsc" and a.MANAGED_POD not in ann:
        for key, raw in ann.items():
            if (
                a.BY_KEY.get(key)
                and key != a.START_FROM_PERSISTENT
                and a.BY_KEY[key].runtime != "runc"
            ):
                ctx.fail(key, raw, f"requires the annotation {a.MANAGED_POD} under {a.RUNSC_CLASS}")
    if ctx.problems:
        raise CompileError(ctx.problems, f"{tpl.kind}/{tpl.name}")
    assert runtime is not None
    return _build(tpl, parsed, runtime)
