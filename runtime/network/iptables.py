"""I/O shell: apply the chains of ``rules`` inside a pod's network namespace.

Every change is one ``iptables-save`` (to see what is there) and one atomic
``iptables-restore --noflush`` per address family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .netns import NetNs
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


def install_base(ns: NetNs, spec: NetSpec) -> None:
    """Install the always-on chains: activity counting and shadow-port redirects."""
    _apply(ns, spec, (activity_chain, shadow_chain))


def install_hold(ns: NetNs, spec: NetSpec) -> None:
    """Send the container's ports to its NFQUEUE (fail-open when nobody listens)."""
    _apply(ns, spec, (hold_chain,))


def remove_hold(ns: NetNs, spec: NetSpec) -> None:
    remove(ns, [spec.hold_chain])


def remove_container(ns: NetNs, spec: NetSpec) -> None:
    remove(ns, [spec.hold_chain, spec.activity_chain, spec.shadow_chain])


def remove(ns: NetNs, chains: Iterable[str] | None = None) -> None:
    """Delete the named chains (default: every ``ARCHITECT-*`` chain) and their jumps."""
    wanted = list(chains) if chains is not None else None
    for family in FAMILIES:
        _restore(ns, family, removal_plan(save(ns, family), wanted))


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
