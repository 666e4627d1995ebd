"""Pure: which container of which pod the daemon manages, and how to reach it.

A *target* is one governed container: its key, its containerd id (from the pod's
``containerStatuses``), the network spec its HibernationPolicy asks for, and
where its health-check proxy's status file lives. Everything here is computed
from plain dicts and policy models, so every mapping is table-tested.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from architect.engine.directives import PolicyRef
from architect.engine.pods import POD_SCOPE
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.policy.annotations import STATUS_ANNOTATION, TEMPLATE_HASH_LABEL
from architect.policy.models import HibernationContainer, HibernationPolicy, MigrationPolicy

CONTAINERD_PREFIX = "containerd://"
POD_STATE_KEY = "pod"
# The emptyDir volume admission mounts into the health-check proxy sidecar
# (engine/admission/pods.py STATUS_VOLUME); the daemon writes status.json into it.
STATUS_VOLUME_DIR = "volumes/kubernetes.io~empty-dir"


@dataclass(frozen=True, slots=True)
class Target:
    """One governed container as the daemon drives it."""

    key: ContainerKey
    pod_uid: str
    container_id: str | None  # None until the container has started
    index: int  # position in spec.containers: names its chains and NFQUEUE
    mode: str  # "none" | "packets" | "connections"
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    shadow_ports: tuple[tuple[int, int], ...]  # (appPort, shadowPort)
    exec_wakes: bool = True
    requests: tuple[tuple[str, str], ...] = ()  # as admitted, for the resize back
    # Declares no ports: every port is watched but these (other containers' ports).
    others_tcp: tuple[int, ...] = ()  # every other container's ports (CRIU's lock lets them by)
    others_udp: tuple[int, ...] = ()
    except_tcp: tuple[int, ...] = ()
    except_udp: tuple[int, ...] = ()
    note: str = ""  # why the policy's network mode is not applied (logged once)


def container_requests(pod: Mapping[str, Any], container: str) -> tuple[tuple[str, str], ...]:
    for c in (pod.get("spec") or {}).get("containers") or ():
        if c.get("name") == container:
            req = (c.get("resources") or {}).get("requests") or {}
            return tuple(sorted((str(k), str(v)) for k, v in req.items()))
    return ()


def container_ids(pod: Mapping[str, Any]) -> dict[str, str]:
    """Container name -> containerd id, for containers that have one."""
    out: dict[str, str] = {}
    for st in (pod.get("status") or {}).get("containerStatuses") or ():
        cid = str(st.get("containerID") or "")
        if cid.startswith(CONTAINERD_PREFIX) and st.get("name"):
            out[str(st["name"])] = cid.removeprefix(CONTAINERD_PREFIX)
    return out


def declared_ports(pod: Mapping[str, Any], container: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tcp, udp) containerPorts the pod declares for ``container``."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for c in (pod.get("spec") or {}).get("containers") or ():
        if c.get("name") != container:
            continue
        for p in c.get("ports") or ():
            port = p.get("containerPort")
            if not isinstance(port, int) or isinstance(port, bool):
                continue
            (udp if str(p.get("protocol") or "TCP").upper() == "UDP" else tcp).add(port)
    return tuple(sorted(tcp)), tuple(sorted(udp))


def other_ports(
    pod: Mapping[str, Any], container: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tcp, udp) ports declared by every other container of the pod, init and
    sidecar containers included (the health-check proxy's listener is one)."""
    spec = pod.get("spec") or {}
    tcp: set[int] = set()
    udp: set[int] = set()
    for c in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        name = str(c.get("name"))
        if name == container:
            continue
        t, u = declared_ports({"spec": {"containers": [c]}}, name)
        tcp.update(t)
        udp.update(u)
    return tuple(sorted(tcp)), tuple(sorted(udp))


def network_mode(
    pod: Mapping[str, Any], mode: str, tcp: tuple[int, ...], udp: tuple[int, ...]
) -> tuple[str, str]:
    """(the mode the daemon applies, why it differs from the policy's).

    hostNetwork: the pod's namespace is the node's; holding or counting its ports
    would hold the node's own traffic (kubelet, ssh), so nothing is installed and
    the container wakes by exec only. connections mode on a container that
    declares only UDP ports: no TCP connection to count, and no port to hold.
    Admission warns about both.
    """
    if mode == "none":
        return mode, ""
    if (pod.get("spec") or {}).get("hostNetwork"):
        return "none", f"hostNetwork pod: wakeOn.network {mode} not applied (wakes by exec only)"
    if mode == "connections" and udp and not tcp:
        return "none", "wakeOn.network connections, but the container declares only UDP ports"
    return mode, ""


def policy_container(policy: HibernationPolicy, name: str) -> HibernationContainer | None:
    return next((c for c in policy.spec.containers if c.name == name), None)


def index_policies(
    policies: Sequence[HibernationPolicy | MigrationPolicy],
) -> dict[PolicyRef, HibernationPolicy | MigrationPolicy]:
    out: dict[PolicyRef, HibernationPolicy | MigrationPolicy] = {}
    for p in policies:
        ref = PolicyRef(p.kind, p.metadata.namespace or "default", p.metadata.name or "")
        out[ref] = p
    return out


def pod_idle_rule(policy: HibernationPolicy | None) -> bool:
    """Whether the daemon drives a runsc pod unit: only one with an idle rule
    (spec.pod); the others are checkpointed by PersistentCheckpoint alone."""
    return policy is not None and policy.spec.pod is not None


def state_key(container: str) -> str:
    """The status annotation's key of a unit: a runsc pod's own is "pod"
    (engine/pods.py telemetry_from_pod reads it so)."""
    return container or POD_STATE_KEY


def _pod_target(pod: Mapping[str, Any], key: ContainerKey) -> Target:
    """A runsc pod as one unit: reached through its first app container (the shim
    hibernates and wakes the whole sandbox for any member), no packet hold (a held
    SYN is lost to gVisor's netstack, critiques "Shim"), no resize."""
    meta = pod.get("metadata") or {}
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or ()]
    tcp, udp = other_ports(pod, "")  # every container's: none is "other" to the pod
    return Target(
        key=key,
        pod_uid=str(meta.get("uid") or ""),
        container_id=container_ids(pod).get(names[0]) if names else None,
        index=0,
        mode="none",
        tcp_ports=tcp,
        udp_ports=udp,
        shadow_ports=(),
    )


def build_target(
    pod: Mapping[str, Any], key: ContainerKey, policy: HibernationPolicy | None
) -> Target:
    """The target of ``key``; a container only migrated (no HibernationPolicy) has
    mode "none": no hold, no activity counting."""
    if key.container == POD_SCOPE:
        return _pod_target(pod, key)
    meta = pod.get("metadata") or {}
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or ()]
    index = names.index(key.container) if key.container in names else 0
    hc = policy_container(policy, key.container) if policy is not None else None
    tcp, udp = declared_ports(pod, key.container)
    mode, note = network_mode(pod, hc.wake_on.network if hc is not None else "none", tcp, udp)
    others_tcp, others_udp = other_ports(pod, key.container)
    ex_tcp, ex_udp = (others_tcp, others_udp) if not tcp and not udp else ((), ())
    return Target(
        key=key,
        pod_uid=str(meta.get("uid") or ""),
        container_id=container_ids(pod).get(key.container),
        index=index,
        mode=mode,
        tcp_ports=tcp,
        udp_ports=udp,
        shadow_ports=tuple((m.app_port, m.shadow_port) for m in hc.shadow_ports) if hc else (),
        exec_wakes=hc.wake_on.exec if hc is not None else True,
        requests=container_requests(pod, key.container),
        except_tcp=ex_tcp,
        except_udp=ex_udp,
        others_tcp=others_tcp,
        others_udp=others_udp,
        note=note,
    )


def handover_key(pod: Mapping[str, Any]) -> str | None:
    """The template hash the shim keys a handover by: the pod *annotation*
    (containerd passes ``architect.loopholelabs.io/*`` pod annotations into the
    OCI spec, not labels). None: no replacement could ever find the checkpoint."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH_LABEL)
    return str(value) if value else None


def annotated_states(pod: Mapping[str, Any]) -> dict[str, ContainerState]:
    """The states the pod's status annotation records (unknown values are dropped)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(STATUS_ANNOTATION)
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, ContainerState] = {}
    for name, value in doc.items():
        try:
            out[str(name)] = ContainerState(str(value))
            if name == POD_STATE_KEY:  # a runsc pod's unit, by its container name
                out[POD_SCOPE] = out[str(name)]
        except ValueError:
            continue
    return out


def status_annotation(states: Mapping[str, ContainerState]) -> str:
    """The annotation value: a JSON object container -> state, keys sorted so an
    unchanged state gives an unchanged string (no needless patches)."""
    named = {state_key(k): v.value for k, v in states.items()}
    return json.dumps({k: named[k] for k in sorted(named)}, separators=(",", ":"))


def status_patch(states: Mapping[str, ContainerState]) -> dict[str, Any]:
    return {"metadata": {"annotations": {STATUS_ANNOTATION: status_annotation(states)}}}


def status_file_path(kubelet_root: str, pod_uid: str, volume: str) -> str:
    """Where the pod's health-proxy volume sits on the host."""
    return os.path.join(kubelet_root, "pods", pod_uid, STATUS_VOLUME_DIR, volume, "status.json")


def network_namespace(config: Mapping[str, Any]) -> str | None:
    """The network namespace path of an OCI runtime spec (config.json), if it joins one.

    containerd's CRI gives every container of a pod the sandbox's pinned namespace
    file (``/var/run/netns/cni-...``), which outlives the processes: the hold can be
    installed while the container is hibernated and has no process at all.
    """
    for ns in ((config.get("linux") or {}).get("namespaces")) or ():
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None
