"""What a container's OCI spec and network namespace say about its pod.

Pure readers of config.json (emptyDir host paths, network namespace path) and of
``ip -json address`` output, plus the one I/O call that lists a netns's addresses.
A replacement pod has a new pod IP and new emptyDir paths: the shim hands these to
the checkpoint backend so sockets and emptyDir data follow the container.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint._proc import Spawner, run, which

# kubelet's host path of an emptyDir volume: .../volumes/kubernetes.io~empty-dir/<name>
EMPTY_DIR_MARK = "/volumes/kubernetes.io~empty-dir/"


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
