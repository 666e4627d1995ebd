"""Decisions of the shim: where a container starts from, and where images live.

No I/O beyond looking at paths handed in and claiming a handover (one file
created exclusively); tested without containerd.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from architect.policy import annotations as keys
from architect.policy import durations

# The annotation contract has one home (architect.policy.annotations); these are
# the keys the shim reads, under the names this module has always used.
ANN_PERSISTENT = keys.START_FROM_PERSISTENT
ANN_TEMPLATE_HASH = keys.TEMPLATE_HASH_LABEL
ANN_SCALEUP_TIMEOUT = keys.SCALEUP_TIMEOUT
ANN_MANAGED = keys.MANAGED_CONTAINERS
ANN_MANAGED_POD = keys.MANAGED_POD
ANN_MIGRATION = keys.MIGRATION_CONTAINERS
ANN_MIGRATE_EMPTYDIR = keys.MIGRATE_EMPTYDIR
ANN_AUTOSCALEUP = keys.POSTMIGRATION_AUTOSCALEUP
ANN_REWRITE_LISTENER = keys.REWRITE_LISTENER
ANN_REWRITE_ESTABLISHED = keys.REWRITE_ESTABLISHED
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
DEFAULT_SCALEUP_TIMEOUT = durations.parse_duration(keys.DEFAULT_SCALEUP_TIMEOUT).total_seconds()
READY_MARK = "ready"  # handover dirs hold an image once this file exists
PENDING_MARK = "pending"  # the daemon is still transferring: wait up to scaleup-timeout
# The daemon marked a replacement's slot pending before asking the API whether
# anything comes (the Create may look any moment), then found nothing: start fresh
# at once, no handover was ever on its way.
NOTHING_MARK = "nothing"
# A replacement on the source node took this handover (the file holds its pod's
# name): two replicas of a template deleted on one node leave two handovers, and
# each replacement must take a different one.
CLAIMED_MARK = "claimed"
# The namespace of the pod that left a handover. Pod-template hashes are the same
# for the same template in any namespace: only a pod of that namespace restores it.
NAMESPACE_MARK = "namespace"
# A PersistentCheckpoint's image is handed out only as the daemon's grant says:
# the namespaces that may start from it (the object's and allowedNamespaces) and
# the digest of its manifest as the object's status records it.
GRANT_FILE = "grant.json"
# A PersistentCheckpoint in a registry is pulled by the daemon when it sees a pod
# naming it on this node: it marks the dir pending at once, then ready, or leaves
# UNAVAILABLE_MARK holding why not. The shim waits CLAIM_S for the daemon to say
# anything (the pod reaches both at once), then up to FETCH_WAIT_S for the pull.
UNAVAILABLE_MARK = "unavailable"
# Generous: the daemon sees the pod before its Create; only a slow or absent
# daemon makes the pod wait this long before it starts fresh.
CLAIM_S = 10.0
FETCH_WAIT_S = 120.0
# How long a migration-expected container's Create waits for the daemon's word
# (pending or nothing) on its slot when it finds none: the daemon marks every
# replacement it governs before asking the API, but only on its next pass, and
# the kubelet's Create can come first (a drain on a busy node: the replacement
# started fresh while its handover was on its way).
MARK_WAIT_S = 3.0


class PlanError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``500ms``, ``30s``, ``1m30s``), by the policy's parser."""
    try:
        return durations.parse_duration(text).total_seconds()
    except ValueError as e:
        raise PlanError(f"duration: {e}") from None


@dataclass(frozen=True)
class StartPlan:
    path: str  # "fresh" | "restore"
    reason: str
    image: Path | None = None
    wait_seconds: float = 0.0  # how long to wait for a pending handover
    consume: bool = True  # remove the image once restored (not a PersistentCheckpoint's)
    # A handover: restore and run (postmigration-autoscaleup lists the container),
    # or stay hibernated with the image as its hibernation image (False).
    wake: bool = True
    handover: bool = False  # the image is another pod's (its emptyDirs may travel)
    claim_seconds: float = 0.0  # a PersistentCheckpoint: how long the daemon may take to mark it
    mark_seconds: float = 0.0  # a handover slot with no mark yet: how long the daemon may take


def scaleup_timeout(annotations: dict[str, str], container: str) -> float:
    raw = annotations.get(ANN_SCALEUP_TIMEOUT)
    if not raw:
        return DEFAULT_SCALEUP_TIMEOUT
    try:
        table = json.loads(raw)
    except ValueError as e:
        raise PlanError(f"{ANN_SCALEUP_TIMEOUT}: value {raw!r}: not JSON") from e
    if not isinstance(table, dict):
        raise PlanError(f"{ANN_SCALEUP_TIMEOUT}: value {raw!r}: want a JSON object")
    value = table.get(container)
    return parse_duration(str(value)) if value is not None else DEFAULT_SCALEUP_TIMEOUT


def container_list(annotations: Mapping[str, str], key: str) -> tuple[str, ...]:
    """The container names of a JSON-list annotation (none when absent)."""
    raw = annotations.get(key)
    if not raw:
        return ()
    want = keys.Shape.CONTAINER_LIST.value
    try:
        value = json.loads(raw)
    except ValueError:
        raise PlanError(f"{key}: value {raw!r}: not JSON; want a {want}") from None
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise PlanError(f"{key}: value {raw!r}: want a {want}")
    return tuple(value)


def managed_containers(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """The container names of the managed-containers annotation (none when absent)."""
    return container_list(annotations, ANN_MANAGED)


@dataclass(frozen=True)
class MigrationChoices:
    """What a migration does for one container, by its pod's annotations. Every
    default is the seed's: nothing listed, so emptyDirs stay behind, the
    replacement stays hibernated, and no socket address is rewritten."""

    empty_dirs: bool = False  # migrate-emptydir-containers: its emptyDirs travel
    wake: bool = False  # postmigration-autoscaleup-containers: it runs right after
    rewrite_listeners: bool = False  # rewrite-listener-addresses-containers
    rewrite_established: bool = False  # rewrite-established-addresses-containers
    # Malformed annotations, read as their default (admission rejects them; a pod
    # that got past it must still start).
    problems: tuple[str, ...] = ()


def admitted_migrations(annotations: Mapping[str, str]) -> dict[str, dict[str, bool]]:
    """What admission wrote in ``ANN_MIGRATION``: the containers a MigrationPolicy
    object selects, each with its choices (none when absent). PlanError when
    malformed."""
    raw = annotations.get(ANN_MIGRATION)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise PlanError(f"{ANN_MIGRATION}: value {raw!r}: not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(v, dict) and all(isinstance(b, bool) for b in v.values())
        for v in value.values()
    ):
        raise PlanError(f"{ANN_MIGRATION}: value {raw!r}: want container -> {{choice: bool}}")
    return value


def migration_choices(annotations: Mapping[str, str], container: str) -> MigrationChoices:
    """The migration choices for ``container``: those of the MigrationPolicy object
    admission found for it (``ANN_MIGRATION``, the governing policy's), else the
    four per-container migration annotations; never raises."""
    problems: list[str] = []
    try:
        entry = admitted_migrations(annotations).get(container)
    except PlanError as e:
        problems.append(str(e))
        entry = None
    if entry is not None:
        return MigrationChoices(
            empty_dirs=entry.get("migrateEmptyDir", False),
            wake=entry.get("autoScaleupAfterMigration", False),
            rewrite_listeners=entry.get("rewriteListenerAddresses", False),
            rewrite_established=entry.get("rewriteEstablishedAddresses", False),
        )

    def listed(key: str) -> bool:
        try:
            return container in container_list(annotations, key)
        except PlanError as e:
            problems.append(str(e))
            return False

    return MigrationChoices(
        empty_dirs=listed(ANN_MIGRATE_EMPTYDIR),
        wake=listed(ANN_AUTOSCALEUP),
        rewrite_listeners=listed(ANN_REWRITE_LISTENER),
        rewrite_established=listed(ANN_REWRITE_ESTABLISHED),
        problems=tuple(problems),
    )


def migration_expected(annotations: Mapping[str, str]) -> bool:
    """A container of a pod with a template hash that a MigrationPolicy governs:
    managed (compiled annotations give it one) or listed by admission as selected
    by a MigrationPolicy object. The daemon then decides on the pod's deletion
    whether its stop checkpoints first, and a replacement's Create waits for the
    daemon's mark. Raises PlanError on a malformed list."""
    name = annotations.get(CRI_CONTAINER_NAME, "")
    if not name or not annotations.get(ANN_TEMPLATE_HASH):
        return False
    return name in managed_containers(annotations) or name in admitted_migrations(annotations)


def handover_dir(root: Path, template_hash: str, container: str, slot: str) -> Path:
    """One handover of (template hash, container): ``slot`` says whose, so replicas of
    one template never share a directory (source_slot / destination_slot)."""
    return root / "handover" / template_hash / container / slot


def handover_root(slot_dir: Path) -> Path:
    """The state root a ``handover_dir`` lies under."""
    return slot_dir.parents[3]


def source_slot(namespace: str, pod: str) -> str:
    """The handover a pod deleted on this node leaves (``_``: never in a name)."""
    return f"from_{namespace}_{pod}"


def destination_slot(namespace: str, pod: str) -> str:
    """The handover fetched from another node for the replacement ``pod``."""
    return f"to_{namespace}_{pod}"


def claim_local(
    root: Path, template_hash: str, container: str, namespace: str, pod: str
) -> Path | None:
    """Take a handover that a pod of ``namespace`` deleted on this node left (ready
    ones first, then pending ones, oldest first) for ``pod``; None when there is
    none to take. Exclusive (O_EXCL on CLAIMED_MARK): each replacement of two
    replicas deleted at once takes its own."""
    base = root / "handover" / template_hash / container
    prefix = source_slot(namespace, "")
    found: list[tuple[int, float, Path]] = []
    try:
        for d in base.iterdir():
            if not d.name.startswith(prefix) or not d.is_dir():
                continue
            try:
                rank = 0 if (d / READY_MARK).exists() else 1 if (d / PENDING_MARK).exists() else 2
                if rank < 2:
                    found.append((rank, d.stat().st_mtime, d))
            except OSError:  # taken and removed meanwhile
                continue
    except OSError:
        return None
    for _, _, d in sorted(found):  # this pod's own, from a Create that was retried
        try:
            if (d / CLAIMED_MARK).read_text(encoding="utf-8") == pod:
                return d
        except OSError:
            pass
    for _, _, d in sorted(found):
        if claim_slot(d, pod):
            return d
    return None


def claim_slot(d: Path, who: str) -> bool:
    """Take handover slot ``d`` for ``who`` (a replacement pod, or the daemon
    withdrawing it): O_EXCL on CLAIMED_MARK, so exactly one taker wins. True also
    when ``who`` holds it already (a retried Create, a resumed withdrawal)."""
    try:
        fd = os.open(d / CLAIMED_MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            return (d / CLAIMED_MARK).read_text(encoding="utf-8") == who
        except OSError:
            return False
    except OSError:  # removed meanwhile
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(who)
    return True


def mark_slot_pending(d: Path) -> bool:
    """Handover slot ``d`` is coming: a Create waits for it. False (nothing
    written) when it holds a ready image already."""
    d.mkdir(parents=True, exist_ok=True)
    if (d / READY_MARK).exists():
        return False
    (d / PENDING_MARK).touch()
    (d / NOTHING_MARK).unlink(missing_ok=True)  # an earlier "nothing": now one comes
    return True


def mark_slot_nothing(d: Path) -> None:
    """Nothing comes to slot ``d`` (unless it is ready): a waiting Create starts
    fresh at once. NOTHING before PENDING goes: it never sees neither."""
    if not d.is_dir() or (d / READY_MARK).exists():
        return
    (d / NOTHING_MARK).touch()
    (d / PENDING_MARK).unlink(missing_ok=True)


def clear_slot(d: Path) -> None:
    """Nobody waits on slot ``d``: its marks and, once empty, it and its empty
    parents go. A ready image stays; a transfer writing into it keeps it."""
    if (d / READY_MARK).exists():
        return
    (d / PENDING_MARK).unlink(missing_ok=True)
    (d / NOTHING_MARK).unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        return
    prune_handover_parents(d)


def prune_handover_parents(d: Path) -> None:
    """After handover ``d`` was removed: its container's and template hash's
    directories too, once empty (another replica's handover may remain)."""
    for parent in (d.parent, d.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            return


def persistent_dir(root: Path, namespace: str, ref: str) -> Path:
    """Where the daemon puts a downloaded PersistentCheckpoint (``name`` or ``ns/name``)."""
    ns, _, name = ref.rpartition("/")
    return root / "persistent" / (ns or namespace) / name


def plan_start(
    runtime: str,
    annotations: dict[str, str],
    state_root: Path,
    own_image: Path | None,
) -> StartPlan:
    """Decide where a container being created starts from.

    - its own hibernation image (the shim died while it was hibernated): restore;
    - runsc: the PersistentCheckpoint named by the annotation, or fresh; never the
      template-hash path;
    - runc: a handover image for the same pod-template-hash and container name
      (the one fetched for this pod, else one a pod deleted on this node left,
      claimed), waiting up to scaleup-timeout while it is pending; else fresh.
      It runs at once only when postmigration-autoscaleup-containers lists the
      container; else it stays hibernated (``wake`` False) until a packet or exec.
    """
    if own_image is not None and (own_image / READY_MARK).exists():
        return StartPlan("restore", "own hibernation image", own_image)
    name = annotations.get(CRI_CONTAINER_NAME, "")
    if runtime == "runsc":
        ref = annotations.get(ANN_PERSISTENT, "")
        if not ref:
            return StartPlan("fresh", "no start-from-persistent-checkpoint")
        ns = annotations.get(CRI_SANDBOX_NAMESPACE, "default")
        d = persistent_dir(state_root, ns, ref)
        if not (d / READY_MARK).exists():
            why = unavailable(d)
            if why and not (d / PENDING_MARK).exists():
                return StartPlan("fresh", why)
            return StartPlan("restore", f"PersistentCheckpoint {ref}", d, FETCH_WAIT_S,
                             consume=False, handover=True, claim_seconds=CLAIM_S)
        refused = persistent_refusal(d, ns, ref)
        if refused:
            return StartPlan("fresh", refused)
        return StartPlan("restore", f"PersistentCheckpoint {ref}", d, consume=False,
                         handover=True)
    thash = annotations.get(ANN_TEMPLATE_HASH, "")
    if not thash or not name:
        return StartPlan("fresh", "no pod-template-hash / container name")
    ns = annotations.get(CRI_SANDBOX_NAMESPACE, "")
    pod = annotations.get(CRI_SANDBOX_NAME, "")
    # Fetched from another node for this pod; else one a pod deleted here left;
    # else the one on its way here (the daemon marks this pod's slot pending
    # before it knows whether anything comes: a local one goes first).
    d = handover_dir(state_root, thash, name, destination_slot(ns, pod))
    if not (d / READY_MARK).exists():
        d = claim_local(state_root, thash, name, ns, pod) or d
    wake = migration_choices(annotations, name).wake
    if (d / READY_MARK).exists():
        refused = foreign_handover(d, annotations.get(CRI_SANDBOX_NAMESPACE, ""))
        if refused:
            return StartPlan("fresh", refused)
        return StartPlan("restore", f"handover checkpoint for {thash}/{name} [{d.name}]", d,
                         wake=wake, handover=True)
    if (d / PENDING_MARK).exists():
        wait = scaleup_timeout(annotations, name)
        return StartPlan("restore", f"handover checkpoint for {thash}/{name} [{d.name}] pending",
                         d, wait,
                         wake=wake, handover=True)
    if not (d / NOTHING_MARK).exists() and _expected(annotations):
        wait = scaleup_timeout(annotations, name)
        return StartPlan("restore", f"handover checkpoint for {thash}/{name} [{d.name}] "
                         "awaiting the daemon", d, wait + MARK_WAIT_S, wake=wake,
                         handover=True, mark_seconds=MARK_WAIT_S)
    return StartPlan("fresh", f"no checkpoint for {thash}/{name}")


def _expected(annotations: Mapping[str, str]) -> bool:
    try:
        return migration_expected(annotations)
    except PlanError:  # admission validates it; never fail the pod's start for it
        return False


def manifest_digest(d: Path) -> str:
    """The digest a PersistentCheckpoint's status records: sha256 of the manifest
    (which lists every file's sha256, checked again when the image restores)."""
    return "sha256:" + hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()


def write_grant(d: Path, namespace: str, allowed: list[str], digest: str) -> bool:
    """The daemon's grant for the image in ``d`` (atomic); False when unchanged."""
    text = json.dumps({"namespace": namespace, "allowed": sorted(allowed), "digest": digest})
    path = d / GRANT_FILE
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    tmp = d / (GRANT_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def persistent_refusal(d: Path, namespace: str, ref: str) -> str:
    """Why a pod of ``namespace`` must not start from the PersistentCheckpoint image
    in ``d`` ("" when it may): the daemon's grant is missing, does not list the
    namespace, or records another digest than the image's manifest has."""
    what = f"PersistentCheckpoint {ref}"
    try:
        grant = json.loads((d / GRANT_FILE).read_text(encoding="utf-8"))
        owner, allowed, digest = grant["namespace"], grant["allowed"], grant["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{what}: no grant from the daemon (not Ready as far as it knows)"
    if namespace != owner and namespace not in allowed:
        return (f"{what} does not list namespace {namespace} in allowedNamespaces: "
                "not handed out")
    try:
        got = manifest_digest(d)
    except OSError:
        return f"{what}: image has no manifest"
    if got != digest:
        return f"{what}: digest mismatch (image {got}, object {digest})"
    return ""


def unavailable(d: Path) -> str:
    """Why the daemon could not bring the PersistentCheckpoint in ``d`` here ("" if it did not say)."""
    try:
        return (d / UNAVAILABLE_MARK).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def foreign_handover(d: Path, namespace: str) -> str:
    """Why a pod of ``namespace`` must not restore the handover in ``d`` ("" when it
    may): another namespace left it, or it records none (then nobody can tell)."""
    try:
        owner = (d / NAMESPACE_MARK).read_text(encoding="utf-8").strip()
    except OSError:
        return f"handover {d} records no namespace: not restored"
    if owner != namespace:
        return f"handover {d} belongs to namespace {owner!r}, not {namespace!r}: not restored"
    return ""


# A container created hibernated waits in Create, bounded, for the daemon to arm its
# hold: it is Ready to the kubelet once Create returns, and the daemon learns its
# container ID from the pod status only later. The shim names it here by pod; the
# daemon answers with the control op "held".
HOLDS_DIR = "holds"


def hold_marker(run_dir: Path, namespace: str, pod: str, container: str) -> Path:
    """The file (holding the container ID) a shim waiting for its hold writes.

    ``_`` separates: namespace, pod and container names never contain one."""
    return run_dir / HOLDS_DIR / f"{namespace}_{pod}_{container}"
