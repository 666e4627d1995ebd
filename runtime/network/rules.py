"""iptables rules for one managed container, as pure functions of its spec.

Everything Architect installs in a pod's network namespace lives in chains named
``ARCHITECT-<KIND>-<tag>`` and every rule carries an ``architect:<kind>``
comment, so a daemon restart or a cluster teardown finds them by name alone
(``cleanup_plan``). Three kinds, one per container:

- ``ARCHITECT-HOLD-<tag>`` (filter INPUT, only while hibernated): the
  container's ports go to NFQUEUE with ``--queue-bypass``, so when no holder is
  bound (it crashed, or was never started) packets are accepted, never
  blackholed. Shadow-port connections are refused with a TCP reset, see below.
- ``ARCHITECT-ACT-<tag>`` (mangle INPUT, always): counts incoming packets to the
  container's ports for the packets-mode activity clock. mangle INPUT runs before
  filter INPUT, so held packets are counted when they arrive.
- ``ARCHITECT-SHD-<tag>`` (nat PREROUTING and OUTPUT, always): shadowPort is
  redirected to appPort.

Shadow ports while hibernated: a connection to the shadow port is refused at
once (``REJECT --reject-with tcp-reset``), it neither wakes the container nor
hangs. Chosen over serving the last scrape cached by the daemon because the daemon
has no listener inside the pod's namespace, and a cached scrape would pass stale
metrics off as current; a refused scrape is immediate and honest (Prometheus
records ``up == 0``).

Traffic that is not activity: packets whose conntrack original destination port
is a shadow port (after REDIRECT the socket only sees appPort, conntrack still
knows), and packets from ``exclude_sources`` (by default the health-check proxy's
source address ``127.0.0.6``).

A container that declares no ports (``NetSpec.all_ports``) is watched on every
port of the namespace except ``except_tcp``/``except_udp`` (the ports the pod's
other containers declare, the health-check sidecars' listeners among them):
those excluded ports RETURN first, then one rule per protocol matches the rest.
Only packets of flows started from outside (``--ctdir ORIGINAL``) are held or
counted, so the replies to connections the pod's containers open (an outgoing
request, a DNS answer) neither wake nor keep the container awake.

Installing is idempotent: the restore text declares each chain (which creates or
flushes it) and adds a jump only when ``iptables-save`` shows none, all in one
atomic ``iptables-restore --noflush``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
PREFIX = "ARCHITECT-"
HEALTH_PROXY_SOURCE = "127.0.0.6"
_TAG = re.compile(r"^[A-Za-z0-9_]{1,12}$")
_MULTIPORT_MAX = 15  # xt_multiport's limit on ports per rule


class SpecError(ValueError):
    """A network spec that cannot be turned into rules; the message names the field."""


def _check_port(where: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SpecError(f"{where}: port {port!r} is not an integer in 1..65535")


@dataclass(frozen=True, slots=True)
class ShadowPort:
    """TCP traffic to ``shadow_port`` reaches ``app_port`` without counting as activity."""

    app_port: int
    shadow_port: int

    def __post_init__(self) -> None:
        _check_port("shadow appPort", self.app_port)
        _check_port("shadow shadowPort", self.shadow_port)
        if self.app_port == self.shadow_port:
            raise SpecError(f"shadow port {self.shadow_port}: appPort equals shadowPort")


@dataclass(frozen=True, slots=True)
class NetSpec:
    """The network side of one managed container.

    ``tag`` names its chains (unique within the pod; the daemon derives it from
    the container's index). ``queue_num`` is its NFQUEUE number (unique within
    the pod's namespace, where queues live).
    """

    tag: str
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    shadow: tuple[ShadowPort, ...] = ()
    exclude_sources: tuple[str, ...] = (f"{HEALTH_PROXY_SOURCE}/32",)
    queue_num: int = 0
    # No declared ports: every port but except_tcp / except_udp (udp_all: UDP too).
    all_ports: bool = False
    udp_all: bool = False
    except_tcp: tuple[int, ...] = ()
    except_udp: tuple[int, ...] = ()
    # Ports the pod's other containers declare (the health-check proxy's listener
    # among them): let through CRIU's network lock while this one is hibernated.
    others_tcp: tuple[int, ...] = ()
    others_udp: tuple[int, ...] = ()
    # connections mode: open connections are counted (the namespace's conntrack
    # table, the costly part of a sample); packets mode needs only the counter.
    count_connections: bool = True

    def __post_init__(self) -> None:
        if not _TAG.match(self.tag):
            raise SpecError(f"tag {self.tag!r}: must be 1-12 of [A-Za-z0-9_]")
        for where, ports in (
            ("tcp_ports", self.tcp_ports),
            ("udp_ports", self.udp_ports),
            ("except_tcp", self.except_tcp),
            ("except_udp", self.except_udp),
        ):
            for p in ports:
                _check_port(where, p)
        if self.all_ports and (self.tcp_ports or self.udp_ports):
            raise SpecError(f"tag {self.tag}: all_ports watches every port; give no tcp/udp_ports")
        if not self.all_ports and (self.except_tcp or self.except_udp or self.udp_all):
            raise SpecError(f"tag {self.tag}: except_tcp/except_udp/udp_all need all_ports")
        if not self.all_ports and not self.tcp_ports and not self.udp_ports:
            raise SpecError(f"tag {self.tag}: no tcp_ports or udp_ports to watch")
        if not 0 <= self.queue_num <= 65535:
            raise SpecError(f"queue_num {self.queue_num}: must be in 0..65535")
        shadows = {s.shadow_port for s in self.shadow}
        if clash := shadows & set(self.tcp_ports):
            raise SpecError(f"shadow port(s) {sorted(clash)} are also watched tcp_ports")
        for src in self.exclude_sources:
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError as e:
                raise SpecError(f"exclude_sources: {src!r}: {e}") from None

    @property
    def hold_chain(self) -> str:
        return f"{PREFIX}HOLD-{self.tag}"

    @property
    def activity_chain(self) -> str:
        return f"{PREFIX}ACT-{self.tag}"

    @property
    def shadow_chain(self) -> str:
        return f"{PREFIX}SHD-{self.tag}"

    @property
    def acct_name(self) -> str:
        """The nfacct object its counting rules add to (named like its chain)."""
        return self.activity_chain


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain to install: its rules and the builtin chains that jump to it."""

    table: str
    name: str
    rules: tuple[str, ...]
    jumps_from: tuple[str, ...]
    jump_match: str = ""
    comment: str = ""


@dataclass(frozen=True, slots=True)
class SavedTable:
    chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, full "-A ..." line)
    counters: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


def _sources(spec: NetSpec, family: Family) -> list[str]:
    return [
        s for s in spec.exclude_sources if ipaddress.ip_network(s, strict=False).version == family
    ]


def _port_groups(ports: Sequence[int]) -> list[str]:
    uniq = sorted(set(ports))
    return [
        ",".join(str(p) for p in uniq[i : i + _MULTIPORT_MAX])
        for i in range(0, len(uniq), _MULTIPORT_MAX)
    ]


def _c(kind: str) -> str:
    return f'-m comment --comment "architect:{kind}"'


def hold_chain(spec: NetSpec, family: Family) -> Chain:
    """filter chain that queues the container's traffic while it is hibernated."""
    name, c = spec.hold_chain, _c("hold")
    rules = [f"-A {name} -s {s} {c} -j RETURN" for s in _sources(spec, family)]
    for sh in spec.shadow:
        # Shadow traffic must neither wake nor hang: refuse it at once.
        rules.append(
            f"-A {name} -p tcp -m conntrack --ctstate DNAT --ctorigdstport {sh.shadow_port} "
            f"{c} -j REJECT --reject-with tcp-reset"
        )
    queue = f"-j NFQUEUE --queue-num {spec.queue_num} --queue-bypass"
    if spec.all_ports:
        rules.extend(_all_ports_rules(spec, name, c, f"-m conntrack --ctdir ORIGINAL {c} {queue}"))
    for proto, ports in (("tcp", spec.tcp_ports), ("udp", spec.udp_ports)):
        for group in _port_groups(ports):
            rules.append(f"-A {name} -p {proto} -m multiport --dports {group} {c} {queue}")
    return Chain("filter", name, tuple(rules), ("INPUT",), comment="hold")


def _all_ports_rules(spec: NetSpec, name: str, c: str, action: str) -> list[str]:
    """The excluded ports RETURN (go on through INPUT untouched), then every other
    port of each watched protocol gets ``action``."""
    rules: list[str] = []
    protos = (("tcp", spec.except_tcp), *((("udp", spec.except_udp),) if spec.udp_all else ()))
    for proto, excluded in protos:
        for group in _port_groups(excluded):
            rules.append(f"-A {name} -p {proto} -m multiport --dports {group} {c} -j RETURN")
    for proto, _ in protos:
        rules.append(f"-A {name} -p {proto} {action}")
    return rules


def activity_chain(spec: NetSpec, family: Family, acct: str | None = None) -> Chain:
    """mangle chain whose ``architect:count`` rules count activity packets.

    ``acct``: an nfacct object the counting rules add to as well, as their last
    match (so it counts what the rule counters count; see ``nfacct``)."""
    name, c = spec.activity_chain, _c("count")
    if acct is not None:
        c = f"{c} -m nfacct --nfacct-name {acct}"
    rules = [f"-A {name} -s {s} {_c('activity')} -j RETURN" for s in _sources(spec, family)]
    for sh in spec.shadow:
        rules.append(
            f"-A {name} -p tcp -m conntrack --ctstate DNAT --ctorigdstport {sh.shadow_port} "
            f"{_c('activity')} -j RETURN"
        )
    if spec.all_ports:
        rules.extend(
            _all_ports_rules(spec, name, _c("activity"), f"-m conntrack --ctdir ORIGINAL {c} -j RETURN")
        )
    for proto, ports in (("tcp", spec.tcp_ports), ("udp", spec.udp_ports)):
        for group in _port_groups(ports):
            # --ctdir ORIGINAL: only packets of flows started from outside (not
            # replies to the pod's own connections); it also turns conntrack on in
            # the namespace, which connections mode reads.
            rules.append(
                f"-A {name} -p {proto} -m multiport --dports {group} "
                f"-m conntrack --ctdir ORIGINAL {c} -j RETURN"
            )
    return Chain("mangle", name, tuple(rules), ("INPUT",), comment="activity")


def shadow_chain(spec: NetSpec, family: Family) -> Chain | None:
    """nat chain redirecting each shadowPort to its appPort (TCP)."""
    if not spec.shadow:
        return None
    name, c = spec.shadow_chain, _c("shadow")
    rules = tuple(
        f"-A {name} -p tcp --dport {sh.shadow_port} {c} -j REDIRECT --to-ports {sh.app_port}"
        for sh in spec.shadow
    )
    # OUTPUT: so that a scraper in the pod itself (via localhost) is redirected too.
    return Chain(
        "nat",
        name,
        rules,
        ("PREROUTING", "OUTPUT"),
        jump_match="-m addrtype --dst-type LOCAL",
        comment="shadow",
    )


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse ``iptables-save [-c]`` output into tables of chains and rules."""
    tables: dict[str, SavedTable] = {}
    current: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            current = tables.setdefault(line[1:], SavedTable())
            continue
        if current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith(":"):
            current.chains.append(line[1:].split()[0])
            continue
        count = 0
        m = re.match(r"^\[(\d+):(\d+)\]\s+(.*)$", line)
        if m:
            count, line = int(m.group(1)), m.group(3)
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "-A":
            current.rules.append((parts[1], line))
            current.counters.setdefault(parts[1], []).append((count, line))
    return tables


def _jump_target(line: str) -> str | None:
    m = re.search(r"(?:^|\s)-j\s+(\S+)", line)
    return m.group(1) if m else None


def install_plan(chains: Iterable[Chain], saved: dict[str, SavedTable]) -> str:
    """Restore text (for ``--noflush``) that makes ``chains`` exactly as given."""
    by_table: dict[str, list[Chain]] = {}
    for ch in chains:
        by_table.setdefault(ch.table, []).append(ch)
    out: list[str] = []
    for table, chs in by_table.items():
        have = saved.get(table, SavedTable())
        out.append(f"*{table}")
        out.extend(f":{ch.name} - [0:0]" for ch in chs)  # creates or flushes
        for ch in chs:
            out.extend(ch.rules)
            for parent in ch.jumps_from:
                present = any(
                    chain == parent and _jump_target(rule) == ch.name for chain, rule in have.rules
                )
                if not present:
                    match = f"{ch.jump_match} " if ch.jump_match else ""
                    out.append(f"-I {parent} 1 {match}{_c(ch.comment)} -j {ch.name}")
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def removal_plan(saved: dict[str, SavedTable], wanted: Iterable[str] | None = None) -> str:
    """Restore text that deletes chains (default: every ``ARCHITECT-*``) and jumps to them.

    Empty when there is nothing to remove, so removal is idempotent.
    """
    wanted_set = set(wanted) if wanted is not None else None

    def ours(name: str) -> bool:
        return name.startswith(PREFIX) and (wanted_set is None or name in wanted_set)

    out: list[str] = []
    for table, t in saved.items():
        doomed = [c for c in t.chains if ours(c)]
        jumps = [
            rule
            for chain, rule in t.rules
            if not ours(chain) and (target := _jump_target(rule)) is not None and ours(target)
        ]
        if not doomed and not jumps:
            continue
        out.append(f"*{table}")
        out.extend("-D" + rule[2:] for rule in jumps)
        out.extend(f"-F {c}" for c in doomed)
        out.extend(f"-X {c}" for c in doomed)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def count_packets(saved: dict[str, SavedTable], chain: str) -> int:
    """Sum of the ``architect:count`` rule counters of ``chain`` (from ``iptables-save -c``)."""
    total = 0
    for t in saved.values():
        for count, rule in t.counters.get(chain, []):
            if "architect:count" in rule:
                total += count
    return total


LOCK_EXEMPT = "architect:lock-exempt"


def lock_exempt_plan(saved: dict[str, SavedTable], spec: NetSpec) -> str:
    """Restore text that lets the pod's other containers' ports through CRIU's lock
    (first rules of its own ``CRIU`` chain, which CRIU flushes and deletes at the
    restore, so nothing is left to clean); "" without a lock, without ports, or
    when they are let through already.

    The lock exists for the dumped process's sockets; the sidecars' (the
    health-check proxy answering probes, anything else the pod runs) are not
    dumped, and dropping their traffic makes the kubelet restart a hibernated pod.
    """
    table = saved.get("filter")
    if table is None:
        return ""
    criu = [rule for chain, rule in table.rules if chain == "CRIU"]
    if not criu or any(LOCK_EXEMPT in rule for rule in criu):
        return ""
    lines = []
    for proto, ports in (("tcp", spec.others_tcp), ("udp", spec.others_udp)):
        if ports:
            plist = ",".join(str(p) for p in ports)
            lines += [f'-I CRIU 1 -p {proto} -m multiport --{d} {plist} '
                      f'-m comment --comment "{LOCK_EXEMPT}" -j ACCEPT'
                      for d in ("dports", "sports")]
    return "\n".join(["*filter", *lines, "COMMIT", ""]) if lines else ""


def hold_first_plan(saved: dict[str, SavedTable], hold_chain: str) -> str:
    """Restore text that moves the jump to ``hold_chain`` to the top of filter INPUT;
    "" when it is there already (or absent).

    CRIU's dump locks the pod's network with a ``CRIU`` chain it inserts first in
    INPUT (DROP all but its own marked packets) and keeps until the restore: the
    lock keeps peers of dumped TCP connections from seeing resets. Inserted after
    our hold, it drops the very packets the hold must queue. With our jump first,
    the container's ports are queued (and its connections' packets too, which
    then wake it); everything else still meets CRIU's lock.
    """
    table = saved.get("filter")
    if table is None:
        return ""
    inputs = [rule for chain, rule in table.rules if chain == "INPUT"]
    ours = [r for r in inputs if r.split(" -j ")[-1].strip() == hold_chain]
    if not ours or inputs[0] == ours[0]:
        return ""
    rule = ours[0]
    return "\n".join(
        ["*filter", "-D" + rule[2:], "-I INPUT 1" + rule[len("-A INPUT"):], "COMMIT", ""]
    )
