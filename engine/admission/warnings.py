"""Admission warnings: configurations that are valid but cannot do what they seem to.

Pure: the workload (or Pod) and its compiled policies in, ``kubectl`` warnings out.
Nothing here refuses anything (the compiler does that); each warning names the key
or field, the container and what will actually happen. Each stays under the API
server's 256-character limit for one warning.

The ones that are real:

- network-monitor on a hostNetwork pod: its namespace is the node's, where the
  daemon installs no hold or counting (it would hold the node's own traffic), so
  the container wakes by exec only.
- a managed container without network-monitor: once hibernated, incoming
  traffic does not wake it; only ``kubectl exec`` does.
- connections mode on a container that declares only UDP ports: UDP has no
  connection; nothing is watched.
- two network-monitor containers that declare no port: both are watched on every
  undeclared port, so one's traffic wakes and keeps awake the other.
- a liveness or readiness probe of a managed container that does not go through
  the health-check proxy: an exec probe wakes it at every probe; a network probe
  either is activity (keeps it awake when its period is shorter than
  scaledownAfter, else wakes it at every probe) or, with no network wake, is not
  answered while it is hibernated (kubelet restarts it, or marks it not ready).
- a health-check-proxy mapping whose appPort no probe of the container uses: the
  sidecar is injected but answers nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from architect.policy.annotations import HEALTH_CHECK_PROXY, MANAGED_CONTAINERS, NETWORK_MONITOR
from architect.policy.compiler import Policy, pod_template
from architect.policy.durations import parse_positive_duration
from architect.policy.models import HibernationContainer, HibernationPolicy

MAX_WARNING = 256
DEFAULT_PERIOD_S = 10  # a probe's periodSeconds when unset
_WATCHED_PROBES = ("livenessProbe", "readinessProbe")  # a startup probe ends before idling
_NETWORK_HANDLERS = ("httpGet", "tcpSocket", "grpc")


def _ports(container: Mapping[str, Any]) -> tuple[set[int], set[int]]:
    tcp: set[int] = set()
    udp: set[int] = set()
    for p in container.get("ports") or ():
        port = p.get("containerPort") if isinstance(p, Mapping) else None
        if isinstance(port, int) and not isinstance(port, bool):
            (udp if str(p.get("protocol") or "TCP").upper() == "UDP" else tcp).add(port)
    return tcp, udp


def _probe_port(probe: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[str, int | None]:
    """(handler, port) of a probe; port None for exec or an unresolvable name."""
    for handler in _NETWORK_HANDLERS:
        h = probe.get(handler)
        if isinstance(h, Mapping):
            port = h.get("port")
            if isinstance(port, str):
                for p in container.get("ports") or ():
                    if p.get("name") == port and isinstance(p.get("containerPort"), int):
                        return handler, int(p["containerPort"])
                return handler, None
            return handler, port if isinstance(port, int) else None
    return ("exec", None) if isinstance(probe.get("exec"), Mapping) else ("", None)


def _watcher(tcp: set[int], udp: set[int], others: set[int]) -> Callable[[int | None], bool]:
    """Whether the daemon watches a TCP port for this container: its declared
    ports, or (it declares none) every port the other containers do not declare."""

    def watched(port: int | None) -> bool:
        if port is None:
            return False
        return port in tcp if tcp or udp else port not in others

    return watched


def _period(probe: Mapping[str, Any]) -> int:
    value = probe.get("periodSeconds")
    return value if isinstance(value, int) and value > 0 else DEFAULT_PERIOD_S


def _probe_warnings(
    hc: HibernationContainer,
    container: Mapping[str, Any],
    watched: bool,
    watched_port: Callable[[int | None], bool],
) -> list[str]:
    name = hc.name
    proxied = {m.app_port for m in hc.health_check_proxy} | {
        m.shadow_port for m in hc.health_check_proxy
    }
    try:
        scaledown = parse_positive_duration(hc.scaledown_after).total_seconds()
    except ValueError:
        scaledown = 0.0
    out = []
    for kind in _WATCHED_PROBES:
        probe = container.get(kind)
        if not isinstance(probe, Mapping):
            continue
        handler, port = _probe_port(probe, container)
        period = _period(probe)
        where = f"{kind} of managed container '{name}'"
        if handler == "exec":
            if hc.wake_on.exec:
                out.append(
                    f"{where} runs a command in it (exec): while it is hibernated every probe "
                    f"wakes it, so it never stays hibernated longer than {period}s"
                )
            continue
        if not handler or port is None or port in proxied:
            continue
        fix = f"add a {HEALTH_CHECK_PROXY} mapping for port {port}"
        if watched and watched_port(port):
            effect = (
                f"keeps it from ever hibernating (every {period}s, scaledownAfter "
                f"{hc.scaledown_after})"
                if period < scaledown
                else f"wakes it at every probe (every {period}s)"
            )
            out.append(
                f"{where} reaches port {port} directly: probe traffic is activity and "
                f"{effect}; {fix}"
            )
        else:
            effect = "kubelet restarts it" if kind == "livenessProbe" else "the pod turns not ready"
            out.append(
                f"{where} (port {port}) gets no answer while it is hibernated and nothing "
                f"wakes it: {effect}; {fix}"
            )
    for m in hc.health_check_proxy:
        used = any(
            _probe_port(container[kind], container)[1] in (m.app_port, m.shadow_port)
            for kind in (*_WATCHED_PROBES, "startupProbe")
            if isinstance(container.get(kind), Mapping)
        )
        if not used:
            out.append(
                f"{HEALTH_CHECK_PROXY}: container '{name}' appPort {m.app_port}: no probe of the "
                "container uses that port, so its health-check sidecar answers nothing"
            )
    return out


def config_warnings(obj: Mapping[str, Any], policies: Sequence[Policy]) -> list[str]:
    """Warnings for a Pod or workload whose annotations compiled into ``policies``."""
    hp = next((p for p in policies if isinstance(p, HibernationPolicy)), None)
    if hp is None or not hp.spec.containers:
        return []
    try:
        _, spec = pod_template(obj)
    except KeyError:
        return []
    containers = {
        str(c.get("name")): c for c in spec.get("containers") or () if isinstance(c, Mapping)
    }
    host_network = bool(spec.get("hostNetwork"))
    declared = {n: _ports(c) for n, c in containers.items()}
    others_tcp = {
        n: {p for m, (t, _) in declared.items() if m != n for p in t} for n in containers
    }
    out: list[str] = []
    portless = [
        hc.name
        for hc in hp.spec.containers
        if hc.wake_on.network != "none" and declared.get(hc.name) == (set(), set())
    ]
    if len(portless) > 1 and not host_network:
        names = ", ".join(f"'{n}'" for n in portless)
        out.append(
            f"{NETWORK_MONITOR}: containers {names} declare no containerPort: each is watched on "
            "every port no container declares, so traffic for one wakes and keeps awake the "
            "others; declare their ports"
        )
    for hc in hp.spec.containers:
        c = containers.get(hc.name)
        if c is None:
            continue
        mode = hc.wake_on.network
        tcp, udp = declared[hc.name]
        if mode != "none" and host_network:
            out.append(
                f"{NETWORK_MONITOR}: container '{hc.name}': the pod uses hostNetwork (the node's "
                "own network namespace), where Architect holds and counts nothing: it wakes "
                "only by kubectl exec"
            )
        elif mode == "connections" and udp and not tcp:
            out.append(
                f"{NETWORK_MONITOR}: container '{hc.name}' is in connections mode but declares "
                "only UDP ports, which have no connections: nothing wakes it; use packets"
            )
        elif mode == "none" and hc.auto_scaledown:
            out.append(
                f"{MANAGED_CONTAINERS}: container '{hc.name}' has no {NETWORK_MONITOR} entry: once "
                "hibernated, incoming traffic does not wake it, only kubectl exec does"
            )
        if not hc.auto_scaledown:
            continue
        watched = mode != "none" and not host_network
        out.extend(_probe_warnings(hc, c, watched, _watcher(tcp, udp, others_tcp[hc.name])))
    return [w if len(w) <= MAX_WARNING else w[: MAX_WARNING - 3] + "..." for w in out]
