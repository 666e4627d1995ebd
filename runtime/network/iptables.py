"""I/O shell: apply the chains of ``rules`` inside a pod's network namespace.

Every change is one ``iptables-save`` (to see what is there) and one atomic
``iptables-restore --noflush`` per address family. The activity counters are
also kept in an nfacct object per container (``nfacct``), read without a process;
where the kernel has no nfacct, the rules go without it and are read with
``iptables-save -c``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable

from .netns import NetNs, NetNsError
from .nfacct import AcctSocket
from .rules import (
    FAMILIES,
    PREFIX,
    Chain,
    Family,
    NetSpec,
    SavedTable,
    activity_chain,
    count_packets,
    hold_chain,
    hold_first_plan,
    install_plan,
    lock_exempt_plan,
    parse_save,
    removal_plan,
    shadow_chain,
)

log = logging.getLogger(__name__)
# The nfacct counters (install_base, the sampler's cached path): 27x cheaper a sample
# than iptables-save (bench/daemon_bench.py); a kernel that refuses them falls back.
NFACCT = True
_TOOLS = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}


def save(ns: NetNs, family: Family, *, counters: bool = False) -> dict[str, SavedTable]:
    cmd = [_TOOLS[family][0], *(["-c"] if counters else [])]
    return parse_save(ns.run(cmd).stdout)


def _restore(ns: NetNs, family: Family, text: str) -> None:
    if text:
        ns.run([_TOOLS[family][1], "-w", "--noflush"], stdin=text)


def _apply(
    ns: NetNs, spec: NetSpec, build: Iterable[Callable[[NetSpec, Family], Chain | None]]
) -> None:
    builders = list(build)
    for family in FAMILIES:
        chains = [c for b in builders if (c := b(spec, family)) is not None]
        _restore(ns, family, install_plan(chains, save(ns, family)))


def install_base(ns: NetNs, spec: NetSpec, *, use_acct: bool | None = None) -> bool:
    """Install the always-on chains: activity counting and shadow-port redirects.

    True when the counting rules also count into the container's nfacct object;
    False when the kernel refused it or ``use_acct`` (default ``NFACCT``) is off (then
    only ``iptables-save -c`` reads them)."""
    if not (NFACCT if use_acct is None else use_acct):
        _apply(ns, spec, (activity_chain, shadow_chain))
        return False
    try:
        acct = AcctSocket(ns)
    except OSError as e:  # no nfnetlink in this kernel
        log.info("%s: no nfacct (%s); activity read with iptables-save", ns.path, e)
        _apply(ns, spec, (activity_chain, shadow_chain))
        return False
    try:
        try:
            acct.add(spec.acct_name)
            _apply(ns, spec, (functools.partial(activity_chain, acct=spec.acct_name), shadow_chain))
            return True
        except (OSError, NetNsError) as e:  # no nfnetlink_acct, or no xt_nfacct match
            log.info("%s: no nfacct (%s); activity read with iptables-save", ns.path, e)
        _apply(ns, spec, (activity_chain, shadow_chain))
        with contextlib.suppress(OSError):
            acct.delete(spec.acct_name, tries=1)
        return False
    finally:
        acct.close()


def install_hold(ns: NetNs, spec: NetSpec) -> None:
    """Send the container's ports to its NFQUEUE (fail-open when nobody listens)."""
    _apply(ns, spec, (hold_chain,))


def remove_hold(ns: NetNs, spec: NetSpec) -> None:
    remove(ns, [spec.hold_chain])


def remove_container(ns: NetNs, spec: NetSpec) -> None:
    remove(ns, [spec.hold_chain, spec.activity_chain, spec.shadow_chain])


def remove(ns: NetNs, chains: Iterable[str] | None = None) -> None:
    """Delete the named chains (default: every ``ARCHITECT-*`` chain) and their jumps,
    and the nfacct objects of the activity chains among them."""
    wanted = list(chains) if chains is not None else None
    for family in FAMILIES:
        _restore(ns, family, removal_plan(save(ns, family), wanted))
    _remove_acct(ns, wanted)


def _remove_acct(ns: NetNs, wanted: list[str] | None, prefix: str = PREFIX) -> None:
    """Delete the nfacct objects named in ``wanted`` (None: all with ``prefix``),
    after their rules: an object in use cannot go."""
    if not NFACCT:
        return
    if wanted is not None and not any(n.startswith(f"{PREFIX}ACT-") for n in wanted):
        return  # only activity chains have one
    try:
        acct = AcctSocket(ns)
    except (OSError, NetNsError):
        return  # no nfnetlink: nothing was made; or the namespace is gone
    try:
        names = acct.names() if wanted is None else wanted
        for name in names:
            ours = name.startswith(f"{PREFIX}ACT-") and name.startswith(prefix)
            if ours and not acct.delete(name):
                log.warning("%s: nfacct %s still in use; left", ns.path, name)
    except OSError as e:
        log.warning("%s: nfacct cleanup: %s", ns.path, e)
    finally:
        acct.close()


def cleanup(ns: NetNs, prefix: str = PREFIX) -> list[str]:
    """Remove every Architect chain whose name starts with ``prefix``; return their names.

    For a daemon restart (``prefix="ARCHITECT-HOLD-"``: drop stale holds) and for
    teardown (default: everything).
    """
    removed: list[str] = []
    for family in FAMILIES:
        saved = save(ns, family)
        names = [c for t in saved.values() for c in t.chains if c.startswith(prefix)]
        removed.extend(n for n in names if n not in removed)
        _restore(ns, family, removal_plan(saved, names))
    if f"{PREFIX}ACT-".startswith(prefix) or prefix.startswith(f"{PREFIX}ACT-"):
        _remove_acct(ns, None, prefix)
    return removed


def architect_chains(ns: NetNs) -> list[str]:
    """Names of the Architect chains present, over both families and all tables."""
    found: list[str] = []
    for family in FAMILIES:
        for t in save(ns, family).values():
            found.extend(c for c in t.chains if c.startswith(PREFIX) and c not in found)
    return found


def activity_packets(ns: NetNs, spec: NetSpec) -> int:
    """Packets counted as activity so far (both families); grows monotonically."""
    return sum(
        count_packets(save(ns, family, counters=True), spec.activity_chain) for family in FAMILIES
    )


def exempt_from_lock(ns: NetNs, spec: NetSpec) -> bool:
    """Let the other containers' ports through CRIU's lock (``rules.lock_exempt_plan``)."""
    changed = False
    for family in FAMILIES:
        text = lock_exempt_plan(save(ns, family), spec)
        _restore(ns, family, text)
        changed = changed or bool(text)
    return changed


def move_hold_first(ns: NetNs, spec: NetSpec) -> bool:
    """Put the jump to the container's hold first in INPUT again (see
    ``rules.hold_first_plan``); whether anything moved."""
    moved = False
    for family in FAMILIES:
        text = hold_first_plan(save(ns, family), spec.hold_chain)
        _restore(ns, family, text)
        moved = moved or bool(text)
    return moved
