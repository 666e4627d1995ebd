"""The annotation contract: every key users write, as data.

One table (``ANNOTATIONS``) is read by the compiler, the docs generator and the
tests, so the keys, their defaults and their rules are stated exactly once.
The keys are those of the product documents and never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

GROUP: Final = "architect.loopholelabs.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
PREFIX: Final = f"{GROUP}/"

MANAGED_CONTAINERS: Final = PREFIX + "managed-containers"
SCALEDOWN_DURATIONS: Final = PREFIX + "scaledown-durations"
NETWORK_MONITOR: Final = PREFIX + "network-monitor"
HEALTH_CHECK_PROXY: Final = PREFIX + "health-check-proxy"
SHADOW_PORTS: Final = PREFIX + "shadow-ports"
POSTMIGRATION_AUTOSCALEUP: Final = PREFIX + "postmigration-autoscaleup-containers"
DISABLE_AUTOSCALEDOWN: Final = PREFIX + "disable-autoscaledown-containers"
SCALEUP_TIMEOUT: Final = PREFIX + "scaleup-timeout-containers"
MIGRATE_EMPTYDIR: Final = PREFIX + "migrate-emptydir-containers"
REWRITE_LISTENER: Final = PREFIX + "rewrite-listener-addresses-containers"
REWRITE_ESTABLISHED: Final = PREFIX + "rewrite-established-addresses-containers"
MANAGED_POD: Final = PREFIX + "managed-pod"
START_FROM_PERSISTENT: Final = PREFIX + "start-from-persistent-checkpoint"

# Written by Architect, never by users; the compiler passes over them.
STATUS_ANNOTATION: Final = PREFIX + "status"
WORKLOAD_ANNOTATION: Final = PREFIX + "compiled-from-workload"
# Both a label (the API server filters replacements by it) and an annotation
# (containerd passes pod annotations, not labels, to the shim, which keys handovers by it).
TEMPLATE_HASH_LABEL: Final = PREFIX + "pod-template-hash"
TEMPLATE_HASH_ANNOTATION: Final = TEMPLATE_HASH_LABEL
COMPILED_LABEL: Final = PREFIX + "compiled-from"
# Put by admission on a bare Pod that has no labels, so its compiled policies
# can select it (and only it); the value names the pod (compiler.pod_label_value).
POD_LABEL: Final = PREFIX + "pod"
COMPILED_FROM_ANNOTATIONS: Final = "annotations"
# Put by admission: the containers a MigrationPolicy object selected when the pod
# was created, with the governing policy's choices (JSON object: container ->
# {autoScaleupAfterMigration, migrateEmptyDir, rewriteListenerAddresses,
# rewriteEstablishedAddresses}). The shim only sees annotations: a replacement's
# Create must know a handover may come before the daemon has marked its slot,
# and a checkpoint and a restore must do what the policy object says.
MIGRATION_CONTAINERS: Final = PREFIX + "migration-containers"
WRITTEN_BY_ARCHITECT: Final = frozenset(
    {STATUS_ANNOTATION, TEMPLATE_HASH_ANNOTATION, MIGRATION_CONTAINERS}
)

# Keys the control plane and the daemons write on Architect's own objects
# (Checkpoints, PersistentCheckpoints, Secrets), never on users' pods.
NODE_LABEL: Final = PREFIX + "node"  # the node a checkpoint or Secret belongs to
NODE_CERT_LABEL: Final = PREFIX + "node-certificate"  # "true" on every node certificate Secret
ADDRESSES_ANNOTATION: Final = PREFIX + "addresses"  # the addresses a node certificate was issued for
# The phase the control plane last saw and since when, so TTLs and durations
# survive operator restarts without a status field for them.
OBSERVED_PHASE: Final = PREFIX + "observed-phase"
PHASE_SINCE: Final = PREFIX + "phase-since"
GRANT_LABEL: Final = PREFIX + "transfer-grant"  # "true" on every grant Secret
GRANT_TYPE: Final = PREFIX + "transfer-grant"  # the grant Secret's type
# On the Checkpoint (engine-set annotations; see docs/engine.md).
GRANT_ANNOTATION: Final = PREFIX + "transfer-grant"  # NAMESPACE/NAME of the grant Secret
SOURCE_ANNOTATION: Final = PREFIX + "transfer-source"  # https://HOST:PORT of the source daemon
DESTINATION_ANNOTATION: Final = PREFIX + "transfer-destination"  # the destination node
CHECKPOINT_ANNOTATION: Final = PREFIX + "checkpoint"  # on the grant: NAMESPACE/NAME

RUNC_CLASS: Final = "runc-architect"
RUNSC_CLASS: Final = "runsc-architect"
RUNTIME_CLASSES: Final = {RUNC_CLASS: "runc", RUNSC_CLASS: "runsc"}

DEFAULT_SCALEDOWN_AFTER: Final = "60s"
DEFAULT_SCALEUP_TIMEOUT: Final = "30s"


class Shape(Enum):
    """How an annotation's value is written."""

    CONTAINER_LIST = "JSON list of container names"
    DURATION_MAP = "JSON object: container name -> duration"
    NETWORK_MAP = 'JSON object: container name -> "packets" | "connections"'
    PORT_MAPPINGS = 'JSON object {"mappings": [{"containerName", "appPort", "shadowPort"}]}'
    TRUE = '"true" or "false"'
    REFERENCE = '"name" or "namespace/name"'


@dataclass(frozen=True)
class Annotation:
    """One key of the contract and the rules that follow from the seeds."""

    key: str
    shape: Shape
    default: str
    summary: str
    runtime: str | None = None  # "runc" / "runsc": allowed under that runtime class only
    requires: tuple[str, ...] = ()  # keys that must be present too
    names_managed: bool = True  # container names in the value must be managed containers
    # Also under runsc-architect with managed-pod (which it then requires instead of
    # managed-containers): every container of a managed pod is managed, and the
    # pod hibernates as one (compiler: the longest duration; any disabled: never).
    pod_too: bool = False

    @property
    def short(self) -> str:
        return self.key.removeprefix(PREFIX)


ANNOTATIONS: Final[tuple[Annotation, ...]] = (
    Annotation(
        MANAGED_CONTAINERS,
        Shape.CONTAINER_LIST,
        "none: nothing is managed",
        "Which containers Architect manages; unlisted containers run normally.",
        runtime="runc",
        names_managed=False,
    ),
    Annotation(
        SCALEDOWN_DURATIONS,
        Shape.DURATION_MAP,
        f"{DEFAULT_SCALEDOWN_AFTER} per managed container",
        "Idle time before a container hibernates; under managed-pod the pod hibernates "
        "after the longest of its containers' durations (60s for one not listed), "
        "idle by its sandbox's CPU and open exec sessions; `kubectl exec` wakes it.",
        requires=(MANAGED_CONTAINERS,),
        pod_too=True,
    ),
    Annotation(
        NETWORK_MONITOR,
        Shape.NETWORK_MAP,
        "none: no network wake",
        "packets: any incoming TCP/UDP packet wakes; connections: wake on a TCP connection "
        "and stay up while any is open.",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        HEALTH_CHECK_PROXY,
        Shape.PORT_MAPPINGS,
        "none",
        "Inject a sidecar that answers HTTP 200 to probes while the container is hibernated.",
        requires=(MANAGED_CONTAINERS, NETWORK_MONITOR),
    ),
    Annotation(
        SHADOW_PORTS,
        Shape.PORT_MAPPINGS,
        "none",
        "Traffic to shadowPort reaches appPort without counting as activity.",
        requires=(MANAGED_CONTAINERS, NETWORK_MONITOR),
    ),
    Annotation(
        POSTMIGRATION_AUTOSCALEUP,
        Shape.CONTAINER_LIST,
        "none: containers stay hibernated after migration",
        "Containers that wake by themselves after a migration.",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        DISABLE_AUTOSCALEDOWN,
        Shape.CONTAINER_LIST,
        "none",
        "Containers that never hibernate on idle (they still migrate); under managed-pod "
        "one listed keeps the whole pod from hibernating on idle.",
        requires=(MANAGED_CONTAINERS,),
        pod_too=True,
    ),
    Annotation(
        SCALEUP_TIMEOUT,
        Shape.DURATION_MAP,
        f"{DEFAULT_SCALEUP_TIMEOUT} per managed container",
        "How long startup waits for a checkpoint before starting fresh.",
        runtime="runc",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        MIGRATE_EMPTYDIR,
        Shape.CONTAINER_LIST,
        "none: emptyDir volumes are not migrated",
        "emptyDir volumes mounted by these containers move with the checkpoint.",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        REWRITE_LISTENER,
        Shape.CONTAINER_LIST,
        "none",
        "Rewrite listening sockets bound to the old pod IP to 0.0.0.0 / :: on restore.",
        runtime="runc",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        REWRITE_ESTABLISHED,
        Shape.CONTAINER_LIST,
        "none",
        "Rewrite the source IP of established TCP connections to the new pod IP on restore.",
        runtime="runc",
        requires=(MANAGED_CONTAINERS,),
    ),
    Annotation(
        MANAGED_POD,
        Shape.TRUE,
        "false",
        "The whole gVisor pod is managed and checkpointed together.",
        runtime="runsc",
        names_managed=False,
    ),
    Annotation(
        START_FROM_PERSISTENT,
        Shape.REFERENCE,
        "none: start fresh",
        "Restore from this PersistentCheckpoint at startup; on any failure start fresh.",
        runtime="runsc",
        requires=(MANAGED_POD,),
        names_managed=False,
    ),
)

BY_KEY: Final = {a.key: a for a in ANNOTATIONS}


def is_architect_key(key: str) -> bool:
    return key.startswith(PREFIX)
