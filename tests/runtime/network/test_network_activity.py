"""Activity telemetry and shadow ports against the real kernel, in test namespaces."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from network_apps import GREETING, NetPair, connect_and_greet, start_tcp_app

from architect.runtime.network import iptables
from architect.runtime.network.activity import ActivitySampler
from architect.runtime.network.hold import PacketHold
from architect.runtime.network.nfacct import AcctSocket
from architect.runtime.network.rules import NetSpec, ShadowPort

pytestmark = pytest.mark.root

APP, SHADOW = 8080, 9080
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(**kw: object) -> NetSpec:
    return NetSpec(tag="a", tcp_ports=(APP,), shadow=(ShadowPort(APP, SHADOW),), **kw)  # type: ignore[arg-type]


async def _request(pair: NetPair, port: int) -> None:
    s = pair.sock(pair.client)
    try:
        assert await connect_and_greet(s, (pair.pod_ip, port)) == GREETING
    finally:
        s.close()
    # Let the closing handshake (FIN, ACK: packets of this request too) land
    # before the caller samples.
    await asyncio.sleep(0.3)


async def test_packets_clock_counts_app_traffic_not_shadow_traffic(netpair: NetPair) -> None:
    spec = _spec()
    iptables.install_base(netpair.pod, spec)
    server = await start_tcp_app(netpair.pod, APP)
    sampler = ActivitySampler(netpair.pod, spec)
    try:
        assert sampler.sample(T0).last_packet_at is None  # nothing yet
        await _request(netpair, APP)
        t1 = T0 + timedelta(seconds=10)
        assert sampler.sample(t1).last_packet_at == t1
        # Shadow traffic reaches the app (the greeting above) but is not activity.
        await _request(netpair, SHADOW)
        await _request(netpair, SHADOW)
        assert sampler.sample(T0 + timedelta(seconds=20)).last_packet_at == t1
        await _request(netpair, APP)
        t3 = T0 + timedelta(seconds=30)
        assert sampler.sample(t3).last_packet_at == t3
    finally:
        server.close()
        iptables.remove_container(netpair.pod, spec)
    assert iptables.architect_chains(netpair.pod) == []


async def test_shadow_port_from_inside_the_pod_is_redirected_and_not_counted(
    netpair: NetPair,
) -> None:
    # A scraper in the pod itself (e.g. a metrics sidecar) reaches the shadow port
    # over localhost: nat OUTPUT redirects it too.
    spec = _spec()
    iptables.install_base(netpair.pod, spec)
    server = await start_tcp_app(netpair.pod, APP)
    try:
        for _ in range(2):
            s = netpair.sock(netpair.pod)
            try:
                assert await connect_and_greet(s, ("127.0.0.1", SHADOW)) == GREETING
            finally:
                s.close()
        await asyncio.sleep(0.3)
        assert iptables.activity_packets(netpair.pod, spec) == 0
        s = netpair.sock(netpair.pod)
        try:
            assert await connect_and_greet(s, ("127.0.0.1", APP)) == GREETING
        finally:
            s.close()
        assert iptables.activity_packets(netpair.pod, spec) > 0  # the app port counts
    finally:
        server.close()
        iptables.remove_container(netpair.pod, spec)


async def test_connections_mode_counts_open_connections_until_closed(netpair: NetPair) -> None:
    spec = _spec()
    iptables.install_base(netpair.pod, spec)
    server = await start_tcp_app(netpair.pod, APP)
    sampler = ActivitySampler(netpair.pod, spec)
    socks = netpair.sockets(netpair.client, 3)
    try:
        assert sampler.sample(T0).open_connections == 0
        for s in socks[:2]:
            assert await connect_and_greet(s, (netpair.pod_ip, APP)) == GREETING
        # A scrape through the shadow port stays open too, but is not counted.
        assert await connect_and_greet(socks[2], (netpair.pod_ip, SHADOW)) == GREETING
        assert sampler.sample(T0).open_connections == 2
        socks[0].close()
        await _until(lambda: sampler.sample(T0).open_connections == 1)
        socks[1].close()
        await _until(lambda: sampler.sample(T0).open_connections == 0)
    finally:
        for s in socks:
            s.close()
        server.close()
        iptables.remove_container(netpair.pod, spec)


async def test_packets_mode_reads_no_conntrack(
    netpair: NetPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packets-mode sample is the counter alone: an open connection is not read
    (it decides nothing there), and no conntrack file is opened or parsed."""
    monkeypatch.setattr(iptables, "NFACCT", True)
    spec = _spec(count_connections=False)
    assert iptables.install_base(netpair.pod, spec, use_acct=True) is True
    server = await start_tcp_app(netpair.pod, APP)
    sampler = ActivitySampler(netpair.pod, spec, cached=True)
    s = netpair.sock(netpair.client)
    try:
        assert await connect_and_greet(s, (netpair.pod_ip, APP)) == GREETING
        monkeypatch.setattr(sampler, "read_flows", lambda: pytest.fail("conntrack read"))
        t1 = T0 + timedelta(seconds=1)
        act = sampler.sample(t1)
        assert (act.last_packet_at, act.open_connections) == (t1, 0)
        assert act.activity_packets > 0
        assert sampler.reader is not None and sampler.reader.files == {}
    finally:
        s.close()
        sampler.close()
        server.close()
        iptables.remove_container(netpair.pod, spec)


async def test_connections_from_excluded_source_are_not_counted(netpair: NetPair) -> None:
    spec = _spec(exclude_sources=(f"{netpair.client_ip}/32",))
    iptables.install_base(netpair.pod, spec)
    server = await start_tcp_app(netpair.pod, APP)
    sampler = ActivitySampler(netpair.pod, spec)
    s = netpair.sock(netpair.client)
    try:
        assert await connect_and_greet(s, (netpair.pod_ip, APP)) == GREETING
        act = sampler.sample(T0)
        assert act.open_connections == 0
        assert act.last_packet_at is None
    finally:
        s.close()
        server.close()
        iptables.remove_container(netpair.pod, spec)


async def _until(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_shadow_port_while_hibernated_is_refused_at_once_and_does_not_wake(
    netpair: NetPair,
) -> None:
    spec = _spec(queue_num=7)
    iptables.install_base(netpair.pod, spec)
    wakes = 0
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        nonlocal wakes
        wakes += 1
        servers.append(await start_tcp_app(netpair.pod, APP))

    hold = PacketHold(netpair.pod, spec, wake)
    await hold.start()
    s = netpair.sock(netpair.client)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await connect_and_greet(s, (netpair.pod_ip, SHADOW), timeout=5)
        assert time.monotonic() - t0 < 1.0  # a reset, not a timeout
        assert wakes == 0 and hold.core.seen == 0
        # The app port still wakes it, and the shadow port works once it runs.
        await _request(netpair, APP)
        assert wakes == 1
        await hold.close()
        await _request(netpair, SHADOW)
    finally:
        s.close()
        await hold.close()
        for srv in servers:
            srv.close()
        iptables.remove_container(netpair.pod, spec)


def test_rules_install_and_remove_are_idempotent(netpair: NetPair) -> None:
    spec = _spec()
    for _ in range(2):
        iptables.install_base(netpair.pod, spec)
        iptables.install_hold(netpair.pod, spec)
    for family in (4, 6):
        saved = iptables.save(netpair.pod, family)
        jumps = [
            (table, chain)
            for table, t in saved.items()
            for chain, rule in t.rules
            if "-j ARCHITECT-" in rule
        ]
        assert sorted(jumps) == [
            ("filter", "INPUT"),
            ("mangle", "INPUT"),
            ("nat", "OUTPUT"),
            ("nat", "PREROUTING"),
        ]
    assert sorted(iptables.architect_chains(netpair.pod)) == [
        "ARCHITECT-ACT-a",
        "ARCHITECT-HOLD-a",
        "ARCHITECT-SHD-a",
    ]
    iptables.remove_hold(netpair.pod, spec)
    iptables.remove_hold(netpair.pod, spec)
    assert sorted(iptables.architect_chains(netpair.pod)) == ["ARCHITECT-ACT-a", "ARCHITECT-SHD-a"]
    assert sorted(iptables.cleanup(netpair.pod)) == ["ARCHITECT-ACT-a", "ARCHITECT-SHD-a"]
    assert iptables.cleanup(netpair.pod) == []
    assert iptables.architect_chains(netpair.pod) == []


@pytest.mark.parametrize("all_ports", [False, True], ids=["declared", "all-ports"])
async def test_nfacct_counter_sees_the_watched_port_not_the_excluded_ones(
    netpair: NetPair, all_ports: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sampler's counter is the nfacct object the counting rules add to, read
    # over netlink: it must count what the rule counters (iptables-save) count.
    monkeypatch.setattr(iptables, "NFACCT", True)  # off by default until verified here
    other = 8081  # another container's declared port
    if all_ports:
        spec = NetSpec(tag="a", all_ports=True, except_tcp=(other,), shadow=(ShadowPort(APP, SHADOW),))
    else:
        spec = _spec()
    assert iptables.install_base(netpair.pod, spec, use_acct=True) is True  # not the fallback
    servers = [await start_tcp_app(netpair.pod, p) for p in (APP, other)]
    sampler = ActivitySampler(netpair.pod, spec, cached=True)
    try:
        assert sampler.packets() == 0
        assert sampler.reader is not None and sampler.reader.acct is not None
        await _request(netpair, SHADOW)  # shadow: reaches the app, not activity
        await _request(netpair, other)  # excluded: another container's port
        assert sampler.packets() == 0 == iptables.activity_packets(netpair.pod, spec)
        await _request(netpair, APP)
        count = sampler.packets()
        assert count > 0 and count == iptables.activity_packets(netpair.pod, spec)
        t1 = T0 + timedelta(seconds=1)
        assert sampler.sample(t1).last_packet_at == t1
        # Re-installing (a daemon restart) starts the count again, as the chain's.
        iptables.install_base(netpair.pod, spec, use_acct=True)
        assert sampler.packets() == 0
    finally:
        sampler.close()
        for srv in servers:
            srv.close()
        iptables.remove_container(netpair.pod, spec)
    assert iptables.architect_chains(netpair.pod) == []
    acct = AcctSocket(netpair.pod)
    try:
        assert spec.acct_name not in acct.names()  # removed with its chain
    finally:
        acct.close()
