"""Table-driven tests of the activity parsers and the packet clock (pure)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from architect.runtime.network.activity import (
    Flow,
    PacketClock,
    ProcSocket,
    all_ports_watched,
    listening_ports,
    open_connections,
    parse_conntrack,
    parse_proc_net_sockets,
)

TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48863 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:DB9E 01 00000000:00000000 00:00000000 00000000     0        0 48865 1 0 20 0 0 10 -1
   2: 02D5A80A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0 20 0 0 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48866 1 0 100 0 0 10 0
"""
UDP4 = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 2016: 00000000:14E9 00000000:0000 07 00000000:00000340 00:00000000 00000000     0        0 48869 2 0 0
"""


def test_proc_net_tcp4() -> None:
    socks = parse_proc_net_sockets(TCP4)
    assert socks[0] == ProcSocket(
        ipaddress.ip_address("127.0.0.1"), 8080, ipaddress.ip_address("0.0.0.0"), 0, 0x0A, 48863
    )
    assert (socks[1].remote_port, socks[1].state) == (56222, 0x01)
    assert socks[2].local == ipaddress.ip_address("10.168.213.2")


def test_proc_net_tcp6_word_order() -> None:
    (s,) = parse_proc_net_sockets(TCP6)
    assert s.local == ipaddress.ip_address("::1") and s.local_port == 8080


@pytest.mark.parametrize(
    ("inodes", "expected"),
    [
        (None, ((8080, 8081), (5353,))),
        ({48863}, ((8080,), ())),
        ({777, 48869}, ((8081,), (5353,))),
        (set(), ((), ())),
    ],
)
def test_listening_ports(inodes: set[int] | None, expected: tuple[tuple[int, ...], ...]) -> None:
    tcp = parse_proc_net_sockets(TCP4) + parse_proc_net_sockets(TCP6)
    assert listening_ports(tcp, parse_proc_net_sockets(UDP4), inodes) == expected


PROC_CT = """\
ipv6     10 tcp      6 432000 ESTABLISHED src=0000:0000:0000:0000:0000:0000:0000:0001 dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=41428 dport=8080 src=0000:0000:0000:0000:0000:0000:0000:0001 dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=8080 dport=41428 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 30 src=127.0.0.1 dst=127.0.0.1 sport=60589 dport=5353 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5353 dport=60589 mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.213.9.1 dst=10.213.9.2 sport=58576 dport=9080 src=10.213.9.2 dst=10.213.9.1 sport=8080 dport=58576 [ASSURED] mark=0 zone=0 use=2
"""
TOOL_CT = """\
tcp      6 431999 ESTABLISHED src=10.213.9.1 dst=10.213.9.2 sport=40000 dport=8080 src=10.213.9.2 dst=10.213.9.1 sport=8080 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.213.9.1 dst=10.213.9.2 sport=40001 dport=9080 src=10.213.9.2 dst=10.213.9.1 sport=8080 dport=40001 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=127.0.0.6 dst=127.0.0.1 sport=40002 dport=8080 src=127.0.0.1 dst=127.0.0.6 sport=8080 dport=40002 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.213.9.2 dst=10.9.9.9 sport=50000 dport=5432 src=10.9.9.9 dst=10.213.9.2 sport=5432 dport=50000 [ASSURED] mark=0 use=1
tcp      6 86399 CLOSE_WAIT src=10.213.9.1 dst=10.213.9.2 sport=40003 dport=8080 src=10.213.9.2 dst=10.213.9.1 sport=8080 dport=40003 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.
"""


def test_parse_conntrack_proc_format() -> None:
    flows = parse_conntrack(PROC_CT)
    assert [(f.proto, f.state, f.orig_dport) for f in flows] == [
        ("tcp", "ESTABLISHED", 8080),
        ("udp", "", 5353),
        ("tcp", "TIME_WAIT", 9080),
    ]
    assert flows[0].orig_src == ipaddress.ip_address("::1")


def test_parse_conntrack_tool_format_takes_original_tuple() -> None:
    flows = parse_conntrack(TOOL_CT)
    assert len(flows) == 5  # the tool's summary line is skipped
    assert flows[1] == Flow(
        "tcp",
        "ESTABLISHED",
        ipaddress.ip_address("10.213.9.1"),
        ipaddress.ip_address("10.213.9.2"),
        40001,
        9080,
    )


@pytest.mark.parametrize(
    ("ports", "exclude", "expected"),
    [
        # 8080 direct: counted; via shadow 9080: not; from 127.0.0.6: not;
        # outgoing to 5432: not; CLOSE_WAIT: not.
        ((8080,), ("127.0.0.6/32",), 1),
        ((8080,), (), 2),
        ((8080, 5432), (), 3),
        ((7000,), (), 0),
        ((8080,), ("10.213.9.0/24", "127.0.0.0/8"), 0),
    ],
)
def test_open_connections(ports: tuple[int, ...], exclude: tuple[str, ...], expected: int) -> None:
    assert open_connections(parse_conntrack(TOOL_CT), ports, exclude) == expected


T = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([0], None),  # first look, nothing counted
        ([5], 0),  # first look, packets of unknown age: now
        ([0, 0, 0], None),
        ([0, 3, 3], 1),
        ([0, 3, 4, 4], 2),
        ([0, 3, 1], 1),  # counter reset (chain re-created): keep the last time
        ([0, 3, 1, 2], 3),
    ],
)
def test_packet_clock(counts: list[int], expected: int | None) -> None:
    clock = PacketClock()
    for i, c in enumerate(counts):
        clock = clock.observe(c, T + timedelta(seconds=i))
    want = None if expected is None else T + timedelta(seconds=expected)
    assert clock.last_packet_at == want


def test_all_ports_connections_count_on_listened_ports_but_the_others() -> None:
    # Listening: 8080 (ours), 9000 (another container's). An outgoing connection's
    # ephemeral port is not listened on, so it never counts.
    assert all_ports_watched((8080, 9000), (9000, 18080)) == (8080,)
    assert all_ports_watched((), (9000,)) == ()


def test_conntrack_is_read_again_only_when_the_counter_moved_or_it_is_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """connections mode: a new connection comes with counted packets, so an unmoved
    counter reuses the last count; a refresh bounds how long an end nobody's packet
    announced (a server reset, a timeout) is missed."""
    from architect.runtime.network.activity import CONNECTIONS_REFRESH_S, ActivitySampler, Flow
    from architect.runtime.network.netns import NetNs
    from architect.runtime.network.rules import NetSpec

    spec = NetSpec(tag="a", tcp_ports=(80,))
    sampler = ActivitySampler(NetNs("/nonexistent"), spec, cached=False)
    state = {"count": 0, "reads": 0}
    est = Flow("tcp", "ESTABLISHED", ipaddress.ip_address("10.0.0.1"),
               ipaddress.ip_address("10.0.0.2"), 40000, 80)  # fmt: skip
    flows: list[Flow] = []

    def read_flows() -> list[Flow]:
        state["reads"] += 1
        return list(flows)

    monkeypatch.setattr(sampler, "packets", lambda: state["count"])
    monkeypatch.setattr(sampler, "read_flows", read_flows)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert sampler.sample(t0).open_connections == 0 and state["reads"] == 1
    assert sampler.sample(t0 + timedelta(seconds=1)).open_connections == 0
    assert state["reads"] == 1  # nothing moved
    flows.append(est)
    state["count"] = 3  # the handshake's packets
    assert sampler.sample(t0 + timedelta(seconds=2)).open_connections == 1
    assert sampler.sample(t0 + timedelta(seconds=3)).open_connections == 1
    assert state["reads"] == 2
    flows.clear()  # the server reset it: no counted packet
    assert sampler.sample(t0 + timedelta(seconds=4)).open_connections == 1  # overstated
    late = t0 + timedelta(seconds=2 + CONNECTIONS_REFRESH_S)
    assert sampler.sample(late).open_connections == 0 and state["reads"] == 3
    assert sampler.sample(late - timedelta(seconds=5)).open_connections == 0  # clock went back
    assert state["reads"] == 4
    # packets mode never reads the table
    p = ActivitySampler(NetNs("/nonexistent"), NetSpec(tag="b", tcp_ports=(80,),
                        count_connections=False), cached=False)  # fmt: skip
    monkeypatch.setattr(p, "packets", lambda: 7)
    monkeypatch.setattr(p, "read_flows", lambda: pytest.fail("conntrack read"))
    assert p.sample(t0).open_connections == 0
