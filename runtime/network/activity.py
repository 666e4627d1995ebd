"""Activity telemetry of a managed container: last incoming packet, open connections.

Two modes, from the ``network-monitor`` annotation:

- packets: the container is active when packets arrive for its ports. The
  ``architect:count`` rules of its mangle chain (``rules.activity_chain``) count
  them; a sample that finds the count grown sets ``last_packet_at`` to the sample
  time (the resolution is the daemon's sampling period).
- connections: the container stays up while any incoming TCP connection to its
  ports is ESTABLISHED. Counted from the namespace's conntrack table, not from
  /proc/net/tcp: a shadow-port connection is REDIRECTed to appPort, so its socket
  is indistinguishable from a real one, while conntrack still records the
  original destination port (the shadow port, which is not a watched port).

Neither counts shadow-port traffic nor traffic from ``exclude_sources`` (the
health-check proxy's 127.0.0.6; add the node's address to exclude direct kubelet
probes). Parsing is pure; ``ActivitySampler`` is the I/O shell.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from . import iptables
from .netns import NetNs
from .rules import NetSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ContainerActivity:
    """One activity sample, as the engine's telemetry wants it."""

    last_packet_at: datetime | None
    open_connections: int
    activity_packets: int = 0  # cumulative counter the clock was derived from
    held_packets: int = 0  # waiting in the packet hold (hibernated containers)


# --- /proc/net/{tcp,tcp6,udp,udp6} ------------------------------------------

TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A
UDP_UNCONNECTED = 0x07  # an unconnected bound UDP socket shows TCP_CLOSE


@dataclass(frozen=True, slots=True)
class ProcSocket:
    local: IPAddress
    local_port: int
    remote: IPAddress
    remote_port: int
    state: int
    inode: int


def _hex_addr(text: str) -> IPAddress:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])  # one little-endian u32
    if len(raw) == 16:
        # four u32 words, each in host (little-endian) order
        return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    raise ValueError(f"address {text!r}: neither 8 nor 32 hex digits")


def _endpoint(text: str) -> tuple[IPAddress, int]:
    addr, _, port = text.partition(":")
    return _hex_addr(addr), int(port, 16)


def parse_proc_net_sockets(text: str) -> list[ProcSocket]:
    """Parse /proc/net/tcp, tcp6, udp or udp6; the header and odd lines are skipped."""
    out: list[ProcSocket] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or not f[0].endswith(":") or not f[0][:-1].isdigit():
            continue
        local, lport = _endpoint(f[1])
        remote, rport = _endpoint(f[2])
        out.append(ProcSocket(local, lport, remote, rport, int(f[3], 16), int(f[9])))
    return out


def listening_ports(
    tcp: Iterable[ProcSocket], udp: Iterable[ProcSocket], inodes: set[int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The TCP and UDP ports listened on, optionally only by sockets in ``inodes``.

    For "all ports" policies: the daemon resolves them to the container's own
    listening ports when it hibernates it, so traffic for the pod's other
    containers neither wakes it nor is held.
    """

    def keep(s: ProcSocket, state: int) -> bool:
        return s.state == state and (inodes is None or s.inode in inodes)

    return (
        tuple(sorted({s.local_port for s in tcp if keep(s, TCP_LISTEN)})),
        tuple(sorted({s.local_port for s in udp if keep(s, UDP_UNCONNECTED)})),
    )


_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    out: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            m = _SOCKET_LINK.match(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:  # closed meanwhile
            continue
        if m:
            out.add(int(m.group(1)))
    return out


def container_listening_ports(ns: NetNs, pids: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """(tcp, udp) ports the given processes listen on, read in their namespace."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    tcp = [s for n in ("tcp", "tcp6") for s in parse_proc_net_sockets(ns.read_proc_net(n))]
    udp = [s for n in ("udp", "udp6") for s in parse_proc_net_sockets(ns.read_proc_net(n))]
    return listening_ports(tcp, udp, inodes)


# --- conntrack ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """One conntrack entry; ``orig_*`` is the direction of the first packet."""

    proto: str
    state: str  # TCP state, "" for other protocols
    orig_src: IPAddress
    orig_dst: IPAddress
    orig_sport: int
    orig_dport: int


_KV = re.compile(r"^(src|dst|sport|dport)=(.+)$")


def parse_conntrack(text: str) -> list[Flow]:
    """Parse /proc/net/nf_conntrack or ``conntrack -L`` output (same fields)."""
    out: list[Flow] = []
    for line in text.splitlines():
        f = line.split()
        if f and f[0] in ("ipv4", "ipv6"):
            f = f[2:]  # /proc format: family name and number first
        if len(f) < 3 or not f[1].isdigit():
            continue
        proto = f[0]
        state = f[3] if len(f) > 3 and "=" not in f[3] and proto == "tcp" else ""
        orig: dict[str, str] = {}
        for tok in f:
            m = _KV.match(tok)
            if m and m.group(1) not in orig:  # the first src/dst/... are the original tuple
                orig[m.group(1)] = m.group(2)
        if len(orig) < 4:
            continue
        try:
            out.append(
                Flow(
                    proto,
                    state,
                    ipaddress.ip_address(orig["src"]),
                    ipaddress.ip_address(orig["dst"]),
                    int(orig["sport"]),
                    int(orig["dport"]),
                )
            )
        except ValueError:
            continue
    return out


def open_connections(
    flows: Iterable[Flow], tcp_ports: Iterable[int], exclude_sources: Iterable[str] = ()
) -> int:
    """ESTABLISHED incoming TCP connections to ``tcp_ports``, not from excluded sources.

    Shadow-port connections are not counted: their original destination port is
    the shadow port, which is never a watched port (``NetSpec`` refuses that).
    """
    ports = set(tcp_ports)
    nets = [ipaddress.ip_network(s, strict=False) for s in exclude_sources]
    return sum(
        1
        for fl in flows
        if fl.proto == "tcp"
        and fl.state == "ESTABLISHED"
        and fl.orig_dport in ports
        and not any(fl.orig_src in n for n in nets)
    )


def all_ports_watched(listening: Iterable[int], excluded: Iterable[int]) -> tuple[int, ...]:
    """The listened-on ports an all-ports container's connections are counted on."""
    return tuple(sorted(set(listening) - set(excluded)))


# --- the packets clock -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketClock:
    """Turns a cumulative packet counter into a last-activity time."""

    last_count: int | None = None
    last_packet_at: datetime | None = None

    def observe(self, count: int, now: datetime) -> PacketClock:
        if self.last_count is None:
            # Packets counted before we looked: their time is unknown, so take
            # now rather than risk hibernating a container that was just used.
            return PacketClock(count, now if count > 0 else None)
        if count > self.last_count:
            return PacketClock(count, now)
        # A smaller count means the chain was re-created: a new baseline.
        return PacketClock(count, self.last_packet_at)


class ActivitySampler:
    """Samples one container's activity in its pod's namespace."""

    def __init__(self, ns: NetNs, spec: NetSpec) -> None:
        self.ns, self.spec = ns, spec
        self.clock = PacketClock()

    def read_flows(self) -> list[Flow]:
        try:
            return parse_conntrack(self.ns.read_proc_net("nf_conntrack"))
        except FileNotFoundError:  # kernel without CONFIG_NF_CONNTRACK_PROCFS
            return parse_conntrack(self.ns.run(["conntrack", "-L"]).stdout)

    def sample(self, now: datetime) -> ContainerActivity:
        count = iptables.activity_packets(self.ns, self.spec)
        self.clock = self.clock.observe(count, now)
        conns = open_connections(self.read_flows(), self.watched_tcp(), self.spec.exclude_sources)
        return ContainerActivity(self.clock.last_packet_at, conns, count)

    def watched_tcp(self) -> tuple[int, ...]:
        """The TCP ports whose connections count. All-ports: the ports listened on in
        the namespace now (an accepted connection keeps its listener's port; an
        outgoing one has an ephemeral port nobody listens on), but the excluded ones."""
        if not self.spec.all_ports:
            return self.spec.tcp_ports
        tcp = [s for n in ("tcp", "tcp6") for s in parse_proc_net_sockets(self.ns.read_proc_net(n))]
        return all_ports_watched(listening_ports(tcp, ())[0], self.spec.except_tcp)
