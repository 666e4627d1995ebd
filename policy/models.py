"""pydantic models of Architect's custom resources, the one source of the CRDs.

Python attributes are snake_case; the wire names (YAML, JSON, the CRD) are the
camelCase of ``shared/API.md`` through aliases. Rules that the API server must
enforce are CEL rules attached to the model they constrain (``cel(...)``); the
CRD generator copies them into ``x-kubernetes-validations`` and ``architect
validate`` evaluates the very same list offline. The models check shapes
only, so no rule is written twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from architect.policy.annotations import (
    API_VERSION,
    DEFAULT_SCALEDOWN_AFTER,
    DEFAULT_SCALEUP_TIMEOUT,
)
from architect.policy.durations import GO_DURATION_PATTERN

Runtime = Literal["runc", "runsc"]
NetworkWake = Literal["none", "packets", "connections"]

# Bounds keep every CEL rule's estimated cost within the API server's budget.
MAX_CONTAINERS = 64
MAX_MAPPINGS = 32
NAME_MAX = 63
SUBDOMAIN_MAX = 253
# An OCI repository reference with its registry host and no digest (distribution's
# grammar: host[:port]/component(/component)*[:tag]); no default registry.
REGISTRY_REPOSITORY = (
    r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?"
    r"(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$"
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules as (rule, message[, fieldPath])."""
    out = []
    for r in rules:
        entry = {"rule": r[0], "message": r[1]}
        if len(r) == 3:
            entry["fieldPath"] = r[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes expects it: camelCase keys, no nulls."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Resource(_Model):
    """A top-level custom resource: names for the CRD beside the schema."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    # Extra `kubectl get` columns: (name, JSONPath, type).
    COLUMNS: ClassVar[tuple[tuple[str, str, str], ...]] = ()


def _duration(description: str, default: str | None = None) -> Any:
    return Field(
        default=default,
        description=description,
        pattern=GO_DURATION_PATTERN,
        max_length=32,
    )


# --- shared pieces -----------------------------------------------------------


class LabelSelectorRequirement(_Model):
    """A label selector requirement: a key, an operator and values."""

    key: str = Field(description="The label key the selector applies to.", max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
    )


class LabelSelector(_Model):
    """A standard Kubernetes label selector; an empty selector matches no pods."""

    match_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a pod must carry, each with exactly this value.",
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        description="Requirements on pod labels; all must hold.",
    )


class OwnerReference(_Model):
    """The owner of an object, for garbage collection."""

    api_version: str = Field(description="API version of the owner.")
    kind: str = Field(description="Kind of the owner.")
    name: str = Field(description="Name of the owner.")
    uid: str = Field(description="UID of the owner.")
    controller: bool | None = Field(default=None, description="Whether the owner controls it.")
    block_owner_deletion: bool | None = Field(
        default=None, description="Whether the owner waits for this object's deletion."
    )


class ObjectMeta(_Model):
    """The part of Kubernetes object metadata Architect reads and writes."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="Object name.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    labels: dict[str, str] | None = Field(default=None, description="Object labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Object annotations.")
    owner_references: list[OwnerReference] | None = Field(
        default=None, description="Objects that own this one."
    )


class Condition(_Model):
    """A standard status condition."""

    type: str = Field(description="Condition type, e.g. Ready or Conflicted.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One-word CamelCase reason.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


class PortMapping(_Model):
    """A pair of ports of one container: the application's and its shadow."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.appPort >= 1 && self.appPort <= 65535",
                "appPort must be between 1 and 65535",
                ".appPort",
            ),
            (
                "self.shadowPort >= 1 && self.shadowPort <= 65535",
                "shadowPort must be between 1 and 65535",
                ".shadowPort",
            ),
            ("self.appPort != self.shadowPort", "appPort and shadowPort must differ"),
        )
    )

    app_port: int = Field(description="The port the application listens on.")
    shadow_port: int = Field(
        description="A second port that reaches appPort without counting as activity."
    )


class _PolicySpec(_Model):
    """What every policy spec has: whose pods, which runtime, how it ranks."""

    selector: LabelSelector = Field(description="Which pods of this namespace the policy governs.")
    runtime: Runtime = Field(
        description="runc (runtime class runc-architect, CRIU) or runsc (runsc-architect, gVisor)."
    )
    priority: int = Field(
        default=0,
        description=(
            "When several policies match a container the highest priority wins; at equal "
            "priority a policy compiled from annotations wins, then the first by name."
        ),
    )


# --- HibernationPolicy -------------------------------------------------------


class WakeOn(_Model):
    """What wakes a hibernated container."""

    network: NetworkWake = Field(
        default="none",
        description=(
            "none: traffic does not wake the container. packets: any incoming TCP or UDP "
            "packet wakes it (packets are held meanwhile, then released). connections: a "
            "TCP connection wakes it, and it stays up while any connection is open."
        ),
    )
    exec: bool = Field(default=True, description="kubectl exec into the container wakes it first.")


# A container's and a runsc pod's idle time: one rule, one message.
_POSITIVE_SCALEDOWN = (
    "duration(self.scaledownAfter) > duration('0s')",
    "scaledownAfter must be greater than 0",
    ".scaledownAfter",
)


class HibernationContainer(_Model):
    """How one managed container hibernates and wakes."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            _POSITIVE_SCALEDOWN,
            (
                "!has(self.scaleupTimeout) || duration(self.scaleupTimeout) > duration('0s')",
                "scaleupTimeout must be greater than 0",
                ".scaleupTimeout",
            ),
            (
                "size(self.healthCheckProxy) == 0 || self.wakeOn.network != 'none'",
                "healthCheckProxy needs wakeOn.network to be packets or connections",
                ".healthCheckProxy",
            ),
            (
                "size(self.shadowPorts) == 0 || self.wakeOn.network != 'none'",
                "shadowPorts needs wakeOn.network to be packets or connections",
                ".shadowPorts",
            ),
        )
    )

    name: str = Field(
        description="Name of a container of the selected pods.",
        max_length=NAME_MAX,
        pattern=DNS_LABEL,
    )
    scaledown_after: str = _duration(
        "Idle time before the container hibernates, as a Go duration (30s, 1m30s).",
        DEFAULT_SCALEDOWN_AFTER,
    )
    auto_scaledown: bool = Field(
        default=True,
        description="false: never hibernate on idle (the container still migrates).",
    )
    scaleup_timeout: str | None = _duration(
        "How long a starting container waits for a checkpoint to restore before it "
        "starts fresh. runc only.",
        DEFAULT_SCALEUP_TIMEOUT,
    )
    wake_on: WakeOn = Field(
        default_factory=WakeOn,
        description="What wakes the container once hibernated.",
        json_schema_extra={"default": {}},
    )
    health_check_proxy: list[PortMapping] = Field(
        default_factory=list,
        max_length=MAX_MAPPINGS,
        description=(
            "Probe ports answered with HTTP 200 by a sidecar while the container is "
            "hibernated, so kubelet does not restart it; forwarded to appPort while it runs."
        ),
    )
    shadow_ports: list[PortMapping] = Field(
        default_factory=list,
        max_length=MAX_MAPPINGS,
        description=(
            "Ports whose traffic reaches appPort without counting as activity "
            "(e.g. Prometheus scraping)."
        ),
    )


class HibernationPod(_Model):
    """How a managed runsc pod hibernates on idle: its whole gVisor sandbox at once."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            _POSITIVE_SCALEDOWN,
        )
    )

    scaledown_after: str = _duration(
        "Idle time before the pod hibernates, as a Go duration (30s, 1m30s).",
        DEFAULT_SCALEDOWN_AFTER,
    )
    auto_scaledown: bool = Field(
        default=True,
        description="false: never hibernate on idle.",
    )


class HibernationPolicySpec(_PolicySpec):
    """Which pods' containers hibernate when idle, and what wakes them."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.containers.all(c, self.containers.exists_one(d, d.name == c.name))",
                "container names must be unique",
                ".containers",
            ),
            ("!self.managedPod || self.runtime == 'runsc'", "managedPod needs runtime runsc"),
            (
                "self.runtime != 'runsc' || self.managedPod",
                "runtime runsc checkpoints whole pods: set managedPod: true",
            ),
            (
                "!self.managedPod || size(self.containers) == 0",
                "containers must be empty when managedPod is true",
                ".containers",
            ),
            (
                "self.managedPod || size(self.containers) > 0",
                "list at least one container (or set managedPod with runtime runsc)",
                ".containers",
            ),
            (
                "!has(self.pod) || self.managedPod",
                "pod needs managedPod: true",
                ".pod",
            ),
            (
                "self.runtime == 'runc' || self.containers.all(c, !has(c.scaleupTimeout))",
                "scaleupTimeout is for runtime runc only",
                ".containers",
            ),
        )
    )

    managed_pod: bool = Field(
        default=False,
        description="runsc only: the pod is managed and checkpointed as a whole.",
    )
    containers: list[HibernationContainer] = Field(
        default_factory=list,
        max_length=MAX_CONTAINERS,
        description="runc: one entry per managed container; unlisted containers run normally.",
    )
    pod: HibernationPod | None = Field(
        default=None,
        description=(
            "managedPod only: the pod hibernates in place when idle (kubectl exec wakes "
            "it). Absent: it is checkpointed only by a PersistentCheckpoint or for migration."
        ),
    )


class HibernationPolicyStatus(_Model):
    """What Architect observed for this policy."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready; Conflicted when another policy wins for some container.",
    )
    matched_pods: int = Field(default=0, description="Pods the selector matches.")
    hibernated_containers: int = Field(
        default=0, description="Containers this policy governs that are hibernated now."
    )


class HibernationPolicy(Resource):
    """Hibernate idle containers of the selected pods and wake them on demand."""

    KIND: ClassVar[str] = "HibernationPolicy"
    PLURAL: ClassVar[str] = "hibernationpolicies"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("hp",)
    COLUMNS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Runtime", ".spec.runtime", "string"),
        ("Priority", ".spec.priority", "integer"),
        ("Pods", ".status.matchedPods", "integer"),
        ("Hibernated", ".status.hibernatedContainers", "integer"),
    )

    api_version: Literal["architect.loopholelabs.io/v1alpha1"] = Field(
        default="architect.loopholelabs.io/v1alpha1", description=f"Always {API_VERSION}."
    )
    kind: Literal["HibernationPolicy"] = Field(default="HibernationPolicy", description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: HibernationPolicySpec = Field(description="The desired behaviour.")
    status: HibernationPolicyStatus | None = Field(default=None, description="Observed state.")


# --- MigrationPolicy ---------------------------------------------------------


class MigrationContainer(_Model):
    """How one container's state moves to the replacement pod."""

    name: str = Field(
        description="Name of a container of the selected pods.",
        max_length=NAME_MAX,
        pattern=DNS_LABEL,
    )
    auto_scaleup_after_migration: bool = Field(
        default=False,
        description=(
            "Wake the container as soon as it is restored on the replacement pod. false "
            "(the default) keeps it hibernated until traffic or exec arrives, so a drain "
            "does not wake every container at once."
        ),
    )
    migrate_empty_dir: bool = Field(
        default=False,
        description="emptyDir volumes mounted by this container move with the checkpoint.",
    )
    rewrite_listener_addresses: bool = Field(
        default=False,
        description=(
            "Listening sockets bound to the old pod IP are rebound to 0.0.0.0 / :: on "
            "restore. runc only."
        ),
    )
    rewrite_established_addresses: bool = Field(
        default=False,
        description=(
            "Established TCP connections get the new pod IP as their source address on "
            "restore (IPv4 and IPv6). runc only."
        ),
    )


class PersistentCheckpointRef(_Model):
    """A PersistentCheckpoint, by namespace and name."""

    namespace: str | None = Field(
        default=None,
        description="Namespace of the PersistentCheckpoint; the pod's own when empty.",
        max_length=NAME_MAX,
        pattern=DNS_LABEL,
    )
    name: str = Field(
        description="Name of the PersistentCheckpoint.",
        max_length=SUBDOMAIN_MAX,
        pattern=DNS_SUBDOMAIN,
    )


class StartFrom(_Model):
    """Where a starting pod restores from instead of its template-hash Checkpoints."""

    persistent_checkpoint: PersistentCheckpointRef = Field(
        description=(
            "Restore from this PersistentCheckpoint at startup. On any failure the pod "
            "starts fresh; it never falls back to template-hash Checkpoints."
        )
    )


class MigrationPolicySpec(_PolicySpec):
    """What moves to a replacement pod when a selected pod is deleted."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.containers.all(c, self.containers.exists_one(d, d.name == c.name))",
                "container names must be unique",
                ".containers",
            ),
            (
                "self.runtime == 'runc' || self.containers.all(c, "
                "!c.rewriteListenerAddresses && !c.rewriteEstablishedAddresses)",
                "rewriteListenerAddresses and rewriteEstablishedAddresses are for runtime runc only",
                ".containers",
            ),
        )
    )

    containers: list[MigrationContainer] = Field(
        default_factory=list,
        max_length=MAX_CONTAINERS,
        description="One entry per migrated container (runc); empty for whole-pod runsc.",
    )
    start_from: StartFrom | None = Field(
        default=None,
        description="Restore new pods from a PersistentCheckpoint instead (runsc).",
    )


class MigrationPolicyStatus(_Model):
    """What Architect observed for this policy."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready; Conflicted when another policy wins for some container.",
    )
    matched_pods: int = Field(default=0, description="Pods the selector matches.")


class MigrationPolicy(Resource):
    """Move the state of deleted pods' containers to their replacements."""

    KIND: ClassVar[str] = "MigrationPolicy"
    PLURAL: ClassVar[str] = "migrationpolicies"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("mp",)
    COLUMNS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Runtime", ".spec.runtime", "string"),
        ("Priority", ".spec.priority", "integer"),
        ("Pods", ".status.matchedPods", "integer"),
    )

    api_version: Literal["architect.loopholelabs.io/v1alpha1"] = Field(
        default="architect.loopholelabs.io/v1alpha1", description=f"Always {API_VERSION}."
    )
    kind: Literal["MigrationPolicy"] = Field(default="MigrationPolicy", description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: MigrationPolicySpec = Field(description="The desired behaviour.")
    status: MigrationPolicyStatus | None = Field(default=None, description="Observed state.")


# --- Checkpoint --------------------------------------------------------------


class CheckpointImage(_Model):
    """Where a checkpoint image is and how to check it."""

    location: str = Field(
        description="Where the image is: an OCI reference, or node://NODE/PATH for node-local."
    )
    digest: str = Field(
        description="sha256 digest of the image manifest, sha256:<64 hex>.",
        pattern=r"^sha256:[a-f0-9]{64}$",
    )
    size_bytes: int = Field(ge=0, description="Total size of the image in bytes.")


CheckpointPhase = Literal["Pending", "Ready", "Restoring", "Consumed", "Failed"]


class CheckpointSpec(_Model):
    """One checkpoint of a container (runc) or a pod (runsc)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.runtime == 'runsc' ? self.container == '' : self.container != ''",
                "container names the checkpointed container for runtime runc and is empty "
                "for runsc (pod-scoped)",
                ".container",
            ),
        )
    )

    template_hash: str = Field(
        description="The source pod's pod-template-hash; replacements find checkpoints by it.",
        max_length=NAME_MAX,
    )
    container: str = Field(
        default="",
        description="The checkpointed container; empty for a pod-scoped (runsc) checkpoint.",
        max_length=NAME_MAX,
    )
    runtime: Runtime = Field(description="The engine that made the checkpoint: runc or runsc.")
    source_pod: str = Field(description="Name of the pod the checkpoint was taken from.")
    source_node: str = Field(description="Node that holds the image until it is transferred.")
    image: CheckpointImage | None = Field(default=None, description="The image, once written.")
    reason: Literal["Migration", "Hibernation"] = Field(
        description="Migration: taken because the pod was deleted; Hibernation: taken on idle."
    )


class CheckpointTransfer(_Model):
    """The control plane's arrangement for moving an image between node daemons."""

    destination_node: str = Field(description="Node of the replacement pod that will restore.")
    source_endpoint: str = Field(
        default="", description="https://host:port of the source node's transfer server."
    )
    grant: str = Field(
        default="", description="NAMESPACE/NAME of the Secret holding this transfer's ticket."
    )
    expires: datetime | None = Field(default=None, description="When the ticket expires.")


class CheckpointStatus(_Model):
    """Where the checkpoint is in its lifecycle."""

    phase: CheckpointPhase = Field(
        default="Pending",
        description="Pending, Ready, Restoring, Consumed or Failed.",
    )
    consumed_by: str = Field(default="", description="The pod that restored from it.")
    message: str = Field(default="", description="Details of the last transition.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the phase last changed."
    )
    transfer: CheckpointTransfer | None = Field(
        default=None,
        description="Set while the image moves to the replacement pod's node (Restoring).",
    )


class Checkpoint(Resource):
    """A container's (runc) or pod's (runsc) checkpoint, written by Architect."""

    KIND: ClassVar[str] = "Checkpoint"
    PLURAL: ClassVar[str] = "checkpoints"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ckpt",)
    COLUMNS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Phase", ".status.phase", "string"),
        ("Template-Hash", ".spec.templateHash", "string"),
        ("Container", ".spec.container", "string"),
        ("Source-Node", ".spec.sourceNode", "string"),
    )

    api_version: Literal["architect.loopholelabs.io/v1alpha1"] = Field(
        default="architect.loopholelabs.io/v1alpha1", description=f"Always {API_VERSION}."
    )
    kind: Literal["Checkpoint"] = Field(default="Checkpoint", description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: CheckpointSpec = Field(description="What was checkpointed and where the image is.")
    status: CheckpointStatus | None = Field(default=None, description="Observed state.")


# --- PersistentCheckpoint ----------------------------------------------------


class CheckpointStorage(_Model):
    """Where a PersistentCheckpoint's image is stored: a registry or the node."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.registry) != (has(self.nodeLocal) && self.nodeLocal)",
                "set exactly one of registry or nodeLocal: true",
            ),
        )
    )

    registry: str | None = Field(
        default=None,
        description="OCI repository for the image, e.g. registry.local:5000/checkpoints/app "
        "(HOST[:PORT]/REPOSITORY[:TAG]; the tag defaults to NAMESPACE.NAME of the object).",
        max_length=SUBDOMAIN_MAX + 256,
        pattern=REGISTRY_REPOSITORY,
    )
    node_local: bool | None = Field(
        default=None, description="Keep the image on the source pod's node."
    )


class PersistentCheckpointSpec(_Model):
    """A gVisor pod to checkpoint once, for other pods to start from."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.allowedNamespaces.all(n, self.allowedNamespaces.exists_one(m, m == n))",
                "allowedNamespaces must not repeat a namespace",
                ".allowedNamespaces",
            ),
        )
    )

    source_pod: str = Field(
        description="Pod of this namespace to checkpoint (runsc-architect with managed-pod).",
        max_length=SUBDOMAIN_MAX,
        pattern=DNS_SUBDOMAIN,
    )
    storage: CheckpointStorage = Field(description="Where the image is kept.")
    allowed_namespaces: list[
        Annotated[str, StringConstraints(max_length=NAME_MAX, pattern=DNS_LABEL)]
    ] = Field(
        default_factory=list,
        max_length=MAX_CONTAINERS,
        description=(
            "Namespaces besides its own whose pods may start from this checkpoint. The "
            "image holds process memory, secrets included, so nobody else may."
        ),
    )


PersistentPhase = Literal["Pending", "Checkpointing", "Ready", "Failed"]


class PersistentCheckpointStatus(_Model):
    """Where the persistent checkpoint is in its lifecycle."""

    phase: PersistentPhase = Field(
        default="Pending", description="Pending, Checkpointing, Ready or Failed."
    )
    image: CheckpointImage | None = Field(default=None, description="The image, once Ready.")
    completed_at: datetime | None = Field(default=None, description="When it became Ready.")
    message: str = Field(default="", description="Details of the last transition.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the phase last changed."
    )


class PersistentCheckpoint(Resource):
    """A user-requested checkpoint of a gVisor pod that new pods start from."""

    KIND: ClassVar[str] = "PersistentCheckpoint"
    PLURAL: ClassVar[str] = "persistentcheckpoints"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("pckpt",)
    COLUMNS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Phase", ".status.phase", "string"),
        ("Source-Pod", ".spec.sourcePod", "string"),
    )

    api_version: Literal["architect.loopholelabs.io/v1alpha1"] = Field(
        default="architect.loopholelabs.io/v1alpha1", description=f"Always {API_VERSION}."
    )
    kind: Literal["PersistentCheckpoint"] = Field(
        default="PersistentCheckpoint", description="Kind."
    )
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: PersistentCheckpointSpec = Field(description="What to checkpoint and where to keep it.")
    status: PersistentCheckpointStatus | None = Field(default=None, description="Observed state.")


RESOURCES: tuple[type[Resource], ...] = (
    HibernationPolicy,
    MigrationPolicy,
    Checkpoint,
    PersistentCheckpoint,
)
BY_KIND: dict[str, type[Resource]] = {m.KIND: m for m in RESOURCES}


def parse_policies(
    objs: Sequence[Mapping[str, Any]],
) -> tuple[list[HibernationPolicy | MigrationPolicy], list[str]]:
    """The policies among ``objs`` (raw HibernationPolicy / MigrationPolicy dicts),
    and a note for each one that does not validate (skipped, not fatal)."""
    out: list[HibernationPolicy | MigrationPolicy] = []
    notes = []
    for obj in objs:
        model = HibernationPolicy if obj.get("kind") == "HibernationPolicy" else MigrationPolicy
        try:
            out.append(model.model_validate(obj))
        except ValidationError as err:
            name = (obj.get("metadata") or {}).get("name")
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            notes.append(f"{obj.get('kind')} {name} ignored: {where}: {first['msg']}")
    return out, notes
