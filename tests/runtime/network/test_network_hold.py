"""Packet hold against the real kernel: NFQUEUE in a namespace the test creates."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from network_apps import (
    GREETING,
    NetPair,
    connect_and_greet,
    start_tcp_app,
    start_udp_app,
    tcp_total_retrans,
)

from architect.runtime.network import iptables
from architect.runtime.network.hold import PacketHold, Phase, queue_stats
from architect.runtime.network.netns import NetNsError
from architect.runtime.network.rules import NetSpec

pytestmark = pytest.mark.root

PORT = 8080


async def test_control_without_hold_connect_is_refused(netpair: NetPair) -> None:
    # The baseline the hold exists to change: nothing listens, the kernel resets.
    s = netpair.sock(netpair.client)
    with pytest.raises(ConnectionRefusedError):
        await connect_and_greet(s, (netpair.pod_ip, PORT), timeout=5)
    s.close()


async def test_syn_held_until_wake_then_answered_without_reset(netpair: NetPair) -> None:
    servers: list[asyncio.Server] = []
    wakes = 0

    async def wake() -> None:
        nonlocal wakes
        wakes += 1
        await asyncio.sleep(0.3)  # the restore
        servers.append(await start_tcp_app(netpair.pod, PORT))

    hold = PacketHold(netpair.pod, NetSpec(tag="t", tcp_ports=(PORT,), queue_num=1), wake)
    await hold.start()
    s = netpair.sock(netpair.client)
    try:
        assert await connect_and_greet(s, (netpair.pod_ip, PORT)) == GREETING
        assert wakes == 1
        assert hold.core.outcome == "woken"
        assert hold.phase is Phase.RELEASED
        assert hold.stats.released_packets == 1  # one SYN held, not a storm
        assert tcp_total_retrans(s) == 0
    finally:
        s.close()
        await hold.close()
        for srv in servers:
            srv.close()
    assert iptables.architect_chains(netpair.pod) == []


async def test_wake_longer_than_syn_timeout_holds_retransmits_and_still_connects(
    netpair: NetPair,
) -> None:
    # A 2.5 s restore: the client retransmits its SYN meanwhile; every copy is
    # held (duplicates of one connection, not a storm), released together, and
    # the connection comes up without a reset.
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        await asyncio.sleep(2.5)
        servers.append(await start_tcp_app(netpair.pod, PORT))

    hold = PacketHold(netpair.pod, NetSpec(tag="l", tcp_ports=(PORT,), queue_num=13), wake)
    await hold.start()
    s = netpair.sock(netpair.client)
    try:
        assert await connect_and_greet(s, (netpair.pod_ip, PORT)) == GREETING
        # Every held packet is one of the client's own SYN transmissions (its
        # retransmit schedule is the kernel's, e.g. linear 1 s timeouts on 6.x).
        retrans = tcp_total_retrans(s)
        assert retrans >= 1
        assert hold.stats.released_packets == 1 + retrans
    finally:
        s.close()
        await hold.close()
        for srv in servers:
            srv.close()


async def test_ipv6_syn_held_until_wake(netpair: NetPair) -> None:
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        await asyncio.sleep(0.2)
        servers.append(await start_tcp_app(netpair.pod, PORT, host="::"))

    hold = PacketHold(netpair.pod, NetSpec(tag="t6", tcp_ports=(PORT,), queue_num=12), wake)
    await hold.start()
    s = netpair.sock(netpair.client, family=socket.AF_INET6)
    try:
        assert await connect_and_greet(s, (netpair.pod_ip6, PORT, 0, 0)) == GREETING
        assert hold.core.outcome == "woken" and hold.stats.released_packets == 1
        assert tcp_total_retrans(s) == 0
    finally:
        s.close()
        await hold.close()
        for srv in servers:
            srv.close()


async def test_hundred_concurrent_connections_during_one_wake(netpair: NetPair) -> None:
    servers: list[asyncio.Server] = []
    wakes = 0

    async def wake() -> None:
        nonlocal wakes
        wakes += 1
        await asyncio.sleep(0.3)  # well under the 1 s SYN retransmit timeout
        servers.append(await start_tcp_app(netpair.pod, PORT))

    hold = PacketHold(netpair.pod, NetSpec(tag="t", tcp_ports=(PORT,), queue_num=2), wake)
    await hold.start()
    socks = netpair.sockets(netpair.client, 100)
    try:
        results = await asyncio.gather(
            *(connect_and_greet(s, (netpair.pod_ip, PORT)) for s in socks),
            return_exceptions=True,
        )
        assert [r for r in results if r != GREETING] == []
        assert wakes == 1
        assert hold.stats.released_packets == 100
        assert sum(tcp_total_retrans(s) for s in socks) == 0
    finally:
        for s in socks:
            s.close()
        await hold.close()
        for srv in servers:
            srv.close()


async def test_udp_datagrams_held_and_delivered_in_order(netpair: NetPair) -> None:
    apps = []

    async def wake() -> None:
        await asyncio.sleep(0.3)
        apps.append(await start_udp_app(netpair.pod, 5353))

    hold = PacketHold(netpair.pod, NetSpec(tag="u", udp_ports=(5353,), queue_num=3), wake)
    await hold.start()
    s = netpair.sock(netpair.client, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        for i in range(5):
            await loop.sock_sendto(s, f"d{i}".encode(), (netpair.pod_ip, 5353))
        assert await hold.wait_released(timeout=10) == "woken"
        for _ in range(100):
            if len(apps[0].received) >= 5:
                break
            await asyncio.sleep(0.02)
        assert apps[0].received == [b"d0", b"d1", b"d2", b"d3", b"d4"]
    finally:
        s.close()
        await hold.close()
        for a in apps:
            a.close()


@pytest.mark.parametrize("mode", ["fails", "times out"])
async def test_failed_wake_releases_packets_to_the_kernel_answer(
    netpair: NetPair, mode: str
) -> None:
    async def wake() -> None:
        await asyncio.sleep(0.2)
        if mode == "fails":
            raise RuntimeError("restore failed: no checkpoint")
        await asyncio.sleep(60)

    hold = PacketHold(
        netpair.pod, NetSpec(tag="f", tcp_ports=(PORT,), queue_num=4), wake, wake_timeout=0.5
    )
    await hold.start()
    s = netpair.sock(netpair.client)
    t0 = time.monotonic()
    try:
        # Nothing listens after the failed wake: the SYN is released and the
        # kernel's reset reaches the client, which does not hang.
        with pytest.raises(ConnectionRefusedError):
            await connect_and_greet(s, (netpair.pod_ip, PORT), timeout=10)
        assert time.monotonic() - t0 < 5
        outcome = hold.core.outcome or ""
        expected = "wake failed: restore failed" if mode == "fails" else "wake timed out"
        assert outcome.startswith(expected)
        assert hold.stats.released_packets == 1
    finally:
        s.close()
        await hold.close()


async def test_queue_bound_drops_udp_beyond_it(netpair: NetPair) -> None:
    apps = []
    may_finish = asyncio.Event()

    async def wake() -> None:
        await may_finish.wait()
        apps.append(await start_udp_app(netpair.pod, 5353))

    hold = PacketHold(
        netpair.pod, NetSpec(tag="b", udp_ports=(5353,), queue_num=5), wake, max_held=3
    )
    await hold.start()
    s = netpair.sock(netpair.client, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        for i in range(6):
            await loop.sock_sendto(s, f"d{i}".encode(), (netpair.pod_ip, 5353))
        for _ in range(100):
            if hold.held_count >= 3 and queue_stats(netpair.pod)[5].dropped >= 3:
                break
            await asyncio.sleep(0.02)
        assert hold.held_count == 3
        assert queue_stats(netpair.pod)[5].dropped == 3
        may_finish.set()
        assert await hold.wait_released(timeout=10) == "woken"
        await asyncio.sleep(0.2)
        # The first `max_held` datagrams survive, in order; the rest were dropped.
        assert apps[0].received == [b"d0", b"d1", b"d2"]
    finally:
        s.close()
        await hold.close()
        for a in apps:
            a.close()


async def test_queue_bound_delays_tcp_but_does_not_refuse(netpair: NetPair) -> None:
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        await asyncio.sleep(0.3)
        servers.append(await start_tcp_app(netpair.pod, PORT))

    hold = PacketHold(
        netpair.pod, NetSpec(tag="b", tcp_ports=(PORT,), queue_num=6), wake, max_held=2
    )
    await hold.start()
    socks = netpair.sockets(netpair.client, 4)
    try:
        results = await asyncio.gather(
            *(connect_and_greet(s, (netpair.pod_ip, PORT)) for s in socks)
        )
        assert results == [GREETING] * 4
        assert hold.stats.released_packets == 2
        # The two SYNs beyond the bound were dropped and retransmitted by the client.
        assert sorted(tcp_total_retrans(s) > 0 for s in socks) == [False, False, True, True]
    finally:
        for s in socks:
            s.close()
        await hold.close()
        for srv in servers:
            srv.close()


async def test_queue_number_taken_is_a_clear_error(netpair: NetPair) -> None:
    async def wake() -> None:
        pass

    first = PacketHold(netpair.pod, NetSpec(tag="q1", tcp_ports=(PORT,), queue_num=8), wake)
    second = PacketHold(netpair.pod, NetSpec(tag="q2", tcp_ports=(PORT + 1,), queue_num=8), wake)
    await first.start()
    try:
        with pytest.raises(NetNsError, match=f"{netpair.pod.path}: NFQUEUE 8: "):
            await second.start()
        # the failed hold installed nothing
        assert iptables.architect_chains(netpair.pod) == ["ARCHITECT-HOLD-q1"]
    finally:
        await first.close()
