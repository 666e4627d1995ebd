"""A runsc pod's sandbox as one unit: who belongs to it, and its network namespace.

runsc checkpoints a sandbox as a whole (the pause container's sandbox process and
every app container inside it), so a runsc-architect pod hibernates as one:
``members`` names the sandbox (pause) container first, then its app containers.

gVisor's sandbox takes the pod's addresses off the netns's interfaces when it starts
("steal IP address from NIC", runsc/sandbox/network.go), and its routes go with
them; a restore in the same netns then finds no address and skips the interface.
So the shim snapshots the netns as CNI made it, before the sandbox's ``runsc
create``, and puts it back once the sandbox is checkpointed: the restore finds the
pod's interface as the first start did, and meanwhile the netns answers like a
runc pod's (the daemon's packet hold sees the pod's traffic).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint import CheckpointError
from architect.runtime.checkpoint.proc import Spawner, run, which
from architect.runtime.shim import plan
from architect.runtime.shim.process import Container

log = logging.getLogger(__name__)

NETNS_FILE = "netns.json"  # in the sandbox container's state dir


def pod_scoped(c: Container) -> bool:
    """A container of a runsc pod that CRI made (its annotations name its sandbox):
    it hibernates with its whole sandbox. A runsc container run by ``ctr`` has no
    sandbox annotations and hibernates alone, as before."""
    return c.runtime == "runsc" and c.annotations.get(plan.CRI_CONTAINER_TYPE) in (
        "sandbox", "container")


def sandbox_id(c: Container) -> str:
    if c.annotations.get(plan.CRI_CONTAINER_TYPE) == "sandbox":
        return c.id
    return c.annotations.get(plan.CRI_SANDBOX_ID, "") or c.id


def members(c: Container, containers: Iterable[Container]) -> list[Container]:
    """The sandbox container of ``c``'s pod, then its app containers (pure); empty
    when the sandbox container is not among ``containers``."""
    sid = sandbox_id(c)
    every = list(containers)
    root = next((x for x in every if x.id == sid), None)
    if root is None:
        return []
    apps = [x for x in every if x is not root and pod_scoped(x) and sandbox_id(x) == sid]
    return [root, *sorted(apps, key=lambda x: x.id)]


# -- the network namespace ------------------------------------------------------------


def address_commands(addr_json: str) -> list[list[str]]:
    """``ip`` argv tails that put back the global addresses of every interface but
    loopback, from ``ip -json address show`` (pure)."""
    try:
        links = json.loads(addr_json or "[]")
    except ValueError:
        return []
    out: list[list[str]] = []
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict) or link.get("ifname") in (None, "lo"):
            continue
        for a in link.get("addr_info") or ():
            if not isinstance(a, dict) or a.get("scope") != "global" or not a.get("local"):
                continue
            out.append(["address", "replace", f"{a['local']}/{a.get('prefixlen', 32)}",
                        "dev", str(link["ifname"])])
    return out


def route_commands(route_json: str) -> list[list[str]]:
    """``ip`` argv tails for the routes of ``ip -json route show`` that an address
    does not bring back by itself (the kernel's own connected routes are skipped)
    (pure). Link-scope routes first: a gateway route needs its gateway reachable."""
    try:
        routes = json.loads(route_json or "[]")
    except ValueError:
        return []
    first: list[list[str]] = []
    then: list[list[str]] = []
    for r in routes if isinstance(routes, list) else ():
        if not isinstance(r, dict) or r.get("protocol") == "kernel" or not r.get("dst"):
            continue
        argv = ["route", "replace", str(r["dst"])]
        if r.get("gateway"):
            argv += ["via", str(r["gateway"])]
        if r.get("dev"):
            argv += ["dev", str(r["dev"])]
        if r.get("scope") and r["scope"] != "global":
            argv += ["scope", str(r["scope"])]
        if r.get("prefsrc"):
            argv += ["src", str(r["prefsrc"])]
        if "onlink" in (r.get("flags") or ()):
            argv.append("onlink")
        (then if r.get("gateway") else first).append(argv)
    return first + then


async def _ip(netns: str, args: list[str], spawner: Spawner | None) -> tuple[bool, str]:
    """(ok, stdout or the error); never raises for a missing tool or a failed run:
    neither the pod's Create nor its hibernation may fail for the snapshot."""
    try:
        argv = [which("nsenter"), f"--net={netns}", which("ip"), *args]
        done = await run(argv, 15, spawner=spawner)
    except (CheckpointError, OSError, TimeoutError) as e:
        return False, str(e)
    return done.ok, done.stdout if done.ok else done.tail()


async def snapshot(netns: str, state_dir: Path, spawner: Spawner | None) -> None:
    """Record the netns's addresses and routes (before the sandbox takes them)."""
    got: dict[str, Any] = {"netns": netns}
    for key, args in (("addresses", ["-json", "address", "show"]),
                      ("routes4", ["-json", "-4", "route", "show"]),
                      ("routes6", ["-json", "-6", "route", "show"])):
        ok, text = await _ip(netns, args, spawner)
        if not ok:
            log.warning("netns %s: ip %s: %s", netns, " ".join(args), text)
        got[key] = text if ok else "[]"
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{NETNS_FILE}"
    tmp.write_text(json.dumps(got))
    tmp.replace(state_dir / NETNS_FILE)


async def put_back(state_dir: Path, spawner: Spawner | None) -> list[str]:
    """Put the snapshot's addresses and routes back into its netns; the errors
    (empty: all put back, or no snapshot to put back)."""
    try:
        got = json.loads((state_dir / NETNS_FILE).read_text())
    except (OSError, ValueError):
        return []
    netns = str(got.get("netns") or "")
    if not netns or not Path(netns).exists():
        return [f"netns {netns!r} is gone"]
    errors = []
    cmds = address_commands(got.get("addresses", "[]"))
    cmds += route_commands(got.get("routes4", "[]"))
    cmds += [["-6", *c] for c in route_commands(got.get("routes6", "[]"))]
    for args in cmds:
        ok, text = await _ip(netns, args, spawner)
        if not ok:
            errors.append(f"ip {' '.join(args)}: {text.strip()}")
    return errors
