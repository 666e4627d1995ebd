"""CRIU's network lock: recorded as ``skip`` after a dump, removed by us after a restore.

CRIU's dump locks the pod's network namespace (iptables: a ``CRIU`` chain that
drops all but CRIU's own marked packets, jumped to first from INPUT and OUTPUT,
for IPv4 and IPv6) and keeps it until the restore. The restore takes the lock
method from the image's ``inventory.img`` (``check_img_inventory`` in CRIU's
image.c; a restore-time ``--network-lock`` is ignored) and, with iptables, locks
the namespace *again* (a fresh ``-I INPUT -j CRIU`` above the daemon's packet
hold, the chain flushed of its exemptions) until its unlock: a SYN for a held
port arriving meanwhile is dropped and waits for its retransmit (~1 s). A
restore that fails before CRIU's unlock leaves the namespace locked.

So, for a container joining a pod's namespace by path (the dump's lock stays
there until the restore):

- after the dump, before the image is packed and digested, the inventory's
  ``network_lock_method`` is rewritten iptables -> skip (:func:`skip_lock_in_image`):
  the restore neither locks nor unlocks (the dump's lock still covers the pod);
- after the restore, succeeded or not, whatever CRIU chain and jumps the
  namespace holds are removed (:func:`unlock_plan` + :func:`remove_lock`), our
  own rules (the hold, activity chains) untouched.

A restore from a copy (into another pod: a migration) gets CRIU's own lock back
in the copy (:func:`restore_lock_in_image`): no dump lock covers that namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint import rewrite
from architect.runtime.checkpoint.proc import Completed

log = logging.getLogger(__name__)

# What inventory.img records: CRIU's internal enum (criu/include/cr_options.h
# NETWORK_LOCK_METHOD, from 0; image.c writes opts.network_lock_method as is),
# not rpc.proto's criu_network_lock_method (from 1).
LOCK_IPTABLES = 0
LOCK_NFTABLES = 1
LOCK_SKIP = 2
CHAIN = "CRIU"  # criu/net.c iptables_network_lock_internal
INVENTORY = "inventory.img"

Runner = Callable[[Sequence[str], bytes | None], Awaitable[Completed]]


# ---------------------------------------------------------------- pure parts


def netns_path(config: dict[str, Any]) -> str | None:
    """The network namespace an OCI config joins by path (a pod's), else None."""
    try:
        for ns in config.get("linux", {}).get("namespaces", []) or []:
            if ns.get("type") == "network":
                path = ns.get("path")
                return str(path) if path else None
    except AttributeError:
        return None
    return None


def bundle_netns(bundle: Path) -> str | None:
    try:
        config = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return netns_path(config) if isinstance(config, dict) else None


_RULE = re.compile(r"^-A (\S+) (.*)$")


def unlock_plan(saved: str) -> str:
    """``iptables-restore --noflush`` text that removes CRIU's lock from the filter
    table in ``saved`` (``iptables-save`` output): every rule jumping to ``CRIU``,
    then the chain (flushed: it may hold the daemon's lock exemptions). "" when
    there is no lock. Nothing else is touched."""
    table: list[str] | None = None
    jumps: list[str] = []
    has_chain = False
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = [] if line == "*filter" else None
            continue
        if table is None:
            continue
        if line == "COMMIT":
            table = None
        elif line.startswith(f":{CHAIN} "):
            has_chain = True
        elif (m := _RULE.match(line)) is not None and m.group(1) != CHAIN:
            words = m.group(2).split()
            if any(w == "-j" and nxt == CHAIN for w, nxt in itertools.pairwise(words)):
                jumps.append(f"-D {m.group(1)} {m.group(2)}")
    if not jumps and not has_chain:
        return ""
    lines = ["*filter", *jumps]
    if has_chain:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    return "\n".join([*lines, "COMMIT", ""])


# ---------------------------------------------------------------- the image


def _inventory(criu_dir: Path) -> tuple[bytes, list[bytes], Any] | None:
    path = criu_dir / INVENTORY
    if not path.is_file():
        return None
    header, entries = rewrite.read_entries(path)
    if len(entries) != 1:
        return None
    inv = rewrite._pb().inventory_entry()
    inv.ParseFromString(entries[0])
    return header, entries, inv


def lock_method(criu_dir: Path) -> int | None:
    """The network lock method the image's inventory records (None: not recorded,
    which CRIU reads as iptables)."""
    got = _inventory(criu_dir)
    if got is None or not got[2].HasField("network_lock_method"):
        return None
    return int(got[2].network_lock_method)


def _set_method(criu_dir: Path, frm: int, to: int) -> bool:
    got = _inventory(criu_dir)
    if got is None:
        return False
    header, _, inv = got
    # Not recorded: CRIU falls back to iptables (image.c check_img_inventory).
    method = inv.network_lock_method if inv.HasField("network_lock_method") else LOCK_IPTABLES
    if method != frm:
        return False
    inv.network_lock_method = to
    rewrite.write_entries(criu_dir / INVENTORY, header, [inv.SerializeToString()])
    return True


def skip_lock_in_image(criu_dir: Path) -> bool:
    """Record ``skip`` for an iptables lock (nftables is left alone: its table is
    named by CRIU's run id, which only CRIU removes); whether it changed."""
    return _set_method(criu_dir, LOCK_IPTABLES, LOCK_SKIP)


def restore_lock_in_image(criu_dir: Path) -> bool:
    """Undo :func:`skip_lock_in_image` (in a copy of the image)."""
    return _set_method(criu_dir, LOCK_SKIP, LOCK_IPTABLES)


# ---------------------------------------------------------------- the namespace


# The dump's lock as CRIU's dump leaves it (iptables_network_lock_internal), the
# daemon's exemptions in its chain or not: removed in one transaction, no save
# first (each iptables process costs ~10-25 ms of a wake). Anything else (a
# second jump from an old restore's lock, no lock at all) makes the transaction
# fail as a whole, and the lock found by iptables-save is removed instead.
DUMP_UNLOCK = f"*filter\n-D INPUT -j {CHAIN}\n-D OUTPUT -j {CHAIN}\n-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n"


def _removed(plan: str) -> int:
    return plan.count("\n-D ") + plan.count("\n-X ")


async def remove_lock(netns: str, run: Runner, nsenter: str, tools: dict[str, str]) -> int:
    """Remove CRIU's lock from ``netns`` (both families, each in parallel); the
    rules removed. ``tools``: tool name -> path, resolved by the caller
    ({"iptables-save": path, ...}). Never raises: a namespace that is gone or a
    family without iptables has nothing to unlock."""

    async def family(save: str, restore: str) -> int:
        enter = [nsenter, f"--net={netns}", "--"]
        if (await run([*enter, tools[restore], "-w", "--noflush"], DUMP_UNLOCK.encode())).ok:
            return _removed(DUMP_UNLOCK)
        saved = await run([*enter, tools[save], "-t", "filter"], None)
        if not saved.ok:
            return 0
        plan = unlock_plan(saved.stdout)
        if not plan:
            return 0
        done = await run([*enter, tools[restore], "-w", "--noflush"], plan.encode())
        if not done.ok:
            log.warning("%s: CRIU's lock not removed (%s): %s", netns, restore, done.tail(3))
            return 0
        return _removed(plan)

    pairs = [("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")]
    counts = await asyncio.gather(
        *(family(s, r) for s, r in pairs if s in tools and r in tools), return_exceptions=True
    )
    return sum(c for c in counts if isinstance(c, int))
