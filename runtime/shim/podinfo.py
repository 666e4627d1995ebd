"""What a container's OCI spec and network namespace say about its pod.

Pure readers of config.json (emptyDir host paths, network namespace path, the
/etc/hosts kubelet wrote), of that hosts file and of ``ip -json address`` output,
plus the I/O calls that read a hosts file and list a netns's addresses. A
replacement pod has a new pod IP and new emptyDir paths: the shim hands these to
the checkpoint backend so sockets and (when asked) emptyDir data follow the
container.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint.proc import Spawner, run, which

# kubelet's host path of an emptyDir volume: .../volumes/kubernetes.io~empty-dir/<name>
EMPTY_DIR_MARK = "/volumes/kubernetes.io~empty-dir/"
HOSTS = "/etc/hosts"
# kubelet's managed hosts file lists the pod's own IPs before this line, the
# user's hostAliases (other hosts' addresses) after it.
HOST_ALIASES_MARK = "# Entries added by HostAliases."


def read_spec(bundle: Path) -> dict[str, Any]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def empty_dirs(spec: dict[str, Any]) -> tuple[Path, ...]:
    """Host paths of the pod's emptyDir volumes mounted into the container, in the
    order of the spec's mounts (kubelet keeps the pod's volumeMounts order, so a
    replacement from the same template lists them alike), each once."""
    seen: list[Path] = []
    for m in spec.get("mounts") or ():
        src = str((m or {}).get("source") or "") if isinstance(m, dict) else ""
        if EMPTY_DIR_MARK in src and Path(src) not in seen:
            seen.append(Path(src))
    return tuple(seen)


def netns_path(spec: dict[str, Any]) -> str | None:
    """The path of the network namespace the container joins; None if it has its
    own unnamed one or shares the host's (nothing to rewrite then)."""
    for ns in (spec.get("linux") or {}).get("namespaces") or ():
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path")
            return str(path) if path else None
    return None


def hosts_file(spec: dict[str, Any]) -> Path | None:
    """The host path mounted at the container's /etc/hosts (kubelet's etc-hosts)."""
    for m in spec.get("mounts") or ():
        if isinstance(m, dict) and m.get("destination") == HOSTS and m.get("source"):
            return Path(str(m["source"]))
    return None


def parse_hosts(text: str, hostname: str = "") -> tuple[str, ...]:
    """The pod's own IPs in a kubelet-managed hosts file (pure).

    kubelet writes one line per pod IP naming the pod's hostname, after the
    loopback and ip6-* lines and before the hostAliases section. Lines naming
    ``hostname`` when it is given and any such line exists; else every
    global unicast address before hostAliases."""
    named: list[str] = []
    other: list[str] = []
    for line in text.splitlines():
        if line.strip() == HOST_ALIASES_MARK:
            break
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved:
            continue
        if ip.is_unspecified:
            continue
        text_ip = str(ip)
        names = {n.split(".", 1)[0] for n in fields[1:]} | set(fields[1:])
        bucket = named if hostname and hostname in names else other
        if text_ip not in bucket:
            bucket.append(text_ip)
    return tuple(named) if named else tuple(other)


def hosts_addresses(spec: dict[str, Any]) -> tuple[str, ...]:
    """The pod IPs the container's /etc/hosts names (empty if it has none)."""
    path = hosts_file(spec)
    if path is None:
        return ()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    return parse_hosts(text, str(spec.get("hostname") or ""))


def parse_addresses(ip_json: str) -> tuple[str, ...]:
    """Global-scope IPv4/IPv6 addresses of every interface but loopback, from
    ``ip -json address show`` (pure)."""
    try:
        links = json.loads(ip_json or "[]")
    except ValueError:
        return ()
    out: list[str] = []
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict) or link.get("ifname") == "lo":
            continue
        for a in link.get("addr_info") or ():
            if not isinstance(a, dict) or a.get("scope") != "global":
                continue
            try:
                out.append(str(ipaddress.ip_address(str(a.get("local")))))
            except ValueError:
                continue
    return tuple(out)


async def netns_addresses(path: str, spawner: Spawner | None = None) -> tuple[str, ...]:
    """The pod IPs of the network namespace at ``path`` (empty if unreadable)."""
    if not Path(path).exists():
        return ()
    argv = [which("nsenter"), f"--net={path}", which("ip"), "-json", "address", "show"]
    done = await run(argv, 15, spawner=spawner)
    return parse_addresses(done.stdout) if done.ok else ()
