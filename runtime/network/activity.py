"""Activity telemetry of a managed container: last incoming packet, open connections.

Two modes, from the ``network-monitor`` annotation:

- packets: the container is active when packets arrive for its ports. The
  ``architect:count`` rules of its mangle chain (``rules.activity_chain``) count
  them (and add to the container's nfacct object, read with one netlink request);
  a sample that finds the count grown sets ``last_packet_at`` to the sample
  time (the resolution is the daemon's sampling period). Only that counter is
  read: open connections decide nothing in this mode, and the conntrack read
  is most of a sample's cost (the kernel walks the node's whole conntrack hash,
  262,144 buckets here, for every namespace's /proc/net/nf_conntrack).
- connections: the container stays up while any incoming TCP connection to its
  ports is ESTABLISHED. Counted from the namespace's conntrack table, not from
  /proc/net/tcp: a shadow-port connection is REDIRECTed to appPort, so its socket
  is indistinguishable from a real one, while conntrack still records the
  original destination port (the shadow port, which is not a watched port).
  The table is read again only when the packet counter moved or the last read is
  ``CONNECTIONS_REFRESH_S`` old: a counted connection becomes ESTABLISHED only
  with a counted packet (the client's ACK), so an unmoved counter means no new
  one; one can end without a counted packet (the server's reset, a conntrack
  timeout), which the refresh sees, the count meanwhile overstated (awake a
  little longer, never hibernated early).

Neither counts shadow-port traffic nor traffic from ``exclude_sources`` (the
health-check proxy's 127.0.0.6; add the node's address to exclude direct kubelet
probes). Parsing is pure; ``ActivitySampler`` is the I/O shell.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import os
import re
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import iptables
from .netns import NetNs
from .nfacct import AcctError, AcctSocket
from .rules import NetSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CONNECTIONS_REFRESH_S = 10.0


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


def _ident(path: str) -> tuple[int, int]:
    """The namespace a path names now (nsfs device and inode)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


_nofile_raised = False


def _raise_nofile() -> None:
    """A few descriptors per watched namespace: hundreds of pods outgrow the usual
    soft limit of 1024, so take the hard limit (once)."""
    global _nofile_raised
    if _nofile_raised:
        return
    _nofile_raised = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))


class NsReader:
    """The namespace files and netlink socket one sampler reads, opened once (in
    a thread that entered the namespace) and read again every sample: a seek and
    a read per file, one request for the counter. Reopened when the path names
    another namespace (the pod's sandbox was re-created); a path that is gone
    fails the sample as it always did."""

    def __init__(self, ns: NetNs, proc_names: Iterable[str]) -> None:
        _raise_nofile()
        self.ns = ns
        self.ident = _ident(ns.path)
        names = tuple(proc_names)

        def open_all() -> tuple[AcctSocket | None, dict[str, io.FileIO | None]]:
            files: dict[str, io.FileIO | None] = {}
            for n in names:
                try:
                    files[n] = io.FileIO(f"/proc/thread-self/net/{n}", "r")
                except FileNotFoundError:  # e.g. no CONFIG_NF_CONNTRACK_PROCFS
                    files[n] = None
            try:
                acct: AcctSocket | None = AcctSocket(None)
            except OSError:  # no nfnetlink: counters from iptables-save
                acct = None
            return acct, files

        self.acct, self.files = ns.call(open_all)

    def current(self) -> bool:
        return _ident(self.ns.path) == self.ident

    def read(self, name: str) -> str | None:
        """The text of /proc/net/<name> in the namespace now; None: no such file."""
        f = self.files.get(name)
        if f is None:
            return None
        f.seek(0)  # a seq_file read from 0 is generated afresh
        chunks = []
        for _ in range(1 << 14):  # bounded: 1 GiB in 64 KiB reads
            b = f.read(1 << 16)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode("ascii", "replace")

    def close(self) -> None:
        if self.acct is not None:
            self.acct.close()
        for f in self.files.values():
            if f is not None:
                f.close()


class ActivitySampler:
    """Samples one container's activity in its pod's namespace.

    ``cached`` (default ``iptables.NFACCT``, off until verified): the namespace's files and a netlink socket are
    opened once and the packet count is the container's nfacct object (a few
    syscalls a sample). ``cached=False`` is the earlier way, kept as the fallback
    where nfacct is missing and as the benchmark's baseline: ``iptables-save -c``
    per family and a thread entering the namespace per read.
    """

    def __init__(self, ns: NetNs, spec: NetSpec, *, cached: bool | None = None) -> None:
        self.ns, self.spec = ns, spec
        self.cached = iptables.NFACCT if cached is None else cached
        self.clock = PacketClock()
        self.reader: NsReader | None = None
        # (packet count, open connections, when) of the last conntrack read
        self.conns: tuple[int, int, datetime] | None = None

    def _reader(self) -> NsReader | None:
        if not self.cached:
            return None
        if self.reader is not None and not self.reader.current():
            self.close()
        if self.reader is None:
            names: list[str] = []
            if self.spec.count_connections:
                names = ["nf_conntrack", *(("tcp", "tcp6") if self.spec.all_ports else ())]
            self.reader = NsReader(self.ns, names)
        return self.reader

    def close(self) -> None:
        """Release the namespace's files and socket (they keep it alive)."""
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()

    def _proc_net(self, name: str) -> str:
        reader = self._reader()
        text = reader.read(name) if reader is not None else None
        return text if text is not None else self.ns.read_proc_net(name)

    def packets(self) -> int:
        """The cumulative activity count: the nfacct object, else the rule counters."""
        reader = self._reader()
        if reader is not None and reader.acct is not None:
            try:
                return reader.acct.packets(self.spec.acct_name)
            except AcctError as e:
                if e.errno != errno.ENOENT:  # ENOENT: rules installed without nfacct
                    raise
        return iptables.activity_packets(self.ns, self.spec)

    def read_flows(self) -> list[Flow]:
        try:
            return parse_conntrack(self._proc_net("nf_conntrack"))
        except FileNotFoundError:  # kernel without CONFIG_NF_CONNTRACK_PROCFS
            return parse_conntrack(self.ns.run(["conntrack", "-L"]).stdout)

    def sample(self, now: datetime) -> ContainerActivity:
        count = self.packets()
        self.clock = self.clock.observe(count, now)
        conns = 0
        if self.spec.count_connections:
            last = self.conns
            refresh = timedelta(seconds=CONNECTIONS_REFRESH_S)
            if last is not None and last[0] == count and timedelta(0) <= now - last[2] < refresh:
                conns = last[1]
            else:
                flows = self.read_flows()
                conns = open_connections(flows, self.watched_tcp(), self.spec.exclude_sources)
                self.conns = (count, conns, now)
        return ContainerActivity(self.clock.last_packet_at, conns, count)

    def watched_tcp(self) -> tuple[int, ...]:
        """The TCP ports whose connections count. All-ports: the ports listened on in
        the namespace now (an accepted connection keeps its listener's port; an
        outgoing one has an ephemeral port nobody listens on), but the excluded ones."""
        if not self.spec.all_ports:
            return self.spec.tcp_ports
        tcp = [s for n in ("tcp", "tcp6") for s in parse_proc_net_sockets(self._proc_net(n))]
        return all_ports_watched(listening_ports(tcp, ())[0], self.spec.except_tcp)
