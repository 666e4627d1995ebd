"""A container that declares no ports, against the real kernel: every port of the
pod's namespace is held and counted but those of the pod's other containers, and
replies to the pod's own outgoing connections are neither."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from network_apps import GREETING, NetPair, connect_and_greet, start_tcp_app

from architect.runtime.network import iptables
from architect.runtime.network.activity import ActivitySampler
from architect.runtime.network.container import net_spec
from architect.runtime.network.hold import PacketHold
from architect.runtime.network.rules import NetSpec

pytestmark = pytest.mark.root

OURS, OTHER, OUTSIDE = 7000, 9000, 6000  # undeclared; another container's; a remote server
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(mode: str = "packets") -> NetSpec:
    spec = net_spec(0, mode, (), (), except_tcp=(OTHER,))
    assert spec is not None and spec.all_ports
    return spec


async def _greet(pair: NetPair, port: int, timeout: float = 10.0) -> bytes:
    s = pair.sock(pair.client)
    try:
        return await connect_and_greet(s, (pair.pod_ip, port), timeout=timeout)
    finally:
        s.close()


async def test_all_ports_hold_wakes_on_an_undeclared_port_only(netpair: NetPair) -> None:
    other = await start_tcp_app(netpair.pod, OTHER)  # the other container runs on
    outside = await start_tcp_app(netpair.client, OUTSIDE)
    servers: list[asyncio.Server] = []
    wakes = 0

    async def wake() -> None:
        nonlocal wakes
        wakes += 1
        await asyncio.sleep(0.2)  # the restore
        servers.append(await start_tcp_app(netpair.pod, OURS))

    hold = PacketHold(netpair.pod, _spec(), wake)
    await hold.start()
    try:
        # The other container's port is not held: answered at once, no wake.
        assert await _greet(netpair, OTHER, timeout=3) == GREETING
        # The pod's own outgoing connection: its replies are not held either.
        s = netpair.sock(netpair.pod)
        try:
            assert await connect_and_greet(s, (netpair.client_ip, OUTSIDE), timeout=3) == GREETING
        finally:
            s.close()
        assert wakes == 0
        # A port nobody declared: held until the wake, then answered.
        assert await _greet(netpair, OURS) == GREETING
        assert wakes == 1 and hold.core.outcome == "woken"
    finally:
        await hold.close()
        for srv in (other, outside, *servers):
            srv.close()
    assert iptables.architect_chains(netpair.pod) == []


async def test_all_ports_activity_counts_ours_not_the_others(netpair: NetPair) -> None:
    spec = _spec("connections")
    iptables.install_base(netpair.pod, spec)
    ours = await start_tcp_app(netpair.pod, OURS)
    other = await start_tcp_app(netpair.pod, OTHER)
    outside = await start_tcp_app(netpair.client, OUTSIDE)
    sampler = ActivitySampler(netpair.pod, spec)
    open_socks = []
    try:
        assert sampler.sample(T0).last_packet_at is None
        assert await _greet(netpair, OTHER) == GREETING
        s = netpair.sock(netpair.pod)
        open_socks.append(s)
        assert await connect_and_greet(s, (netpair.client_ip, OUTSIDE)) == GREETING
        await asyncio.sleep(0.3)
        act = sampler.sample(T0 + timedelta(seconds=5))
        # Another container's traffic and our own outgoing connection (still open)
        # are neither activity nor an open incoming connection.
        assert act.last_packet_at is None and act.open_connections == 0
        c = netpair.sock(netpair.client)
        open_socks.append(c)
        assert await connect_and_greet(c, (netpair.pod_ip, OURS)) == GREETING
        await asyncio.sleep(0.3)
        t2 = T0 + timedelta(seconds=10)
        act = sampler.sample(t2)
        assert act.last_packet_at == t2 and act.open_connections == 1
    finally:
        for s in open_socks:
            s.close()
        for srv in (ours, other, outside):
            srv.close()
        iptables.remove_container(netpair.pod, spec)
    assert iptables.architect_chains(netpair.pod) == []


async def test_daemon_pod_network_holds_a_portless_container_on_all_ports(
    netpair: NetPair,
) -> None:
    # The daemon's own path: pod dict -> Target -> PodNetwork, in a real namespace.
    from architect.engine.telemetry import ContainerKey
    from architect.policy.models import HibernationPolicy
    from architect.runtime.daemon.network import PodNetwork
    from architect.runtime.daemon.targets import build_target

    pod = {
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"containers": [
            {"name": "main"},  # network-monitor, no ports
            {"name": "side", "ports": [{"containerPort": OTHER}]},
        ]},
        "status": {"containerStatuses": [{"name": "main", "containerID": "containerd://m"}]},
    }
    hp = HibernationPolicy.model_validate({
        "apiVersion": "architect.loopholelabs.io/v1alpha1", "kind": "HibernationPolicy",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "runtime": "runc",
                 "containers": [{"name": "main", "wakeOn": {"network": "packets"}}]},
    })
    key = ContainerKey("ns", "web", "main")
    target = build_target(pod, key, hp)
    assert target.except_tcp == (OTHER,)
    other = await start_tcp_app(netpair.pod, OTHER)
    servers: list[asyncio.Server] = []
    woke = asyncio.Event()

    async def wake() -> None:
        servers.append(await start_tcp_app(netpair.pod, OURS))
        woke.set()

    net = PodNetwork(wake_timeout=10)
    await net.setup(target, netpair.pod.path)
    try:
        await net.hold(key, wake)
        assert await _greet(netpair, OTHER, timeout=3) == GREETING
        assert not woke.is_set()
        assert await _greet(netpair, OURS) == GREETING
        assert woke.is_set()
        await net.release(key)
        act = net.sample(key, T0 + timedelta(seconds=1))
        assert act is not None and act.last_packet_at is not None  # our port counted
    finally:
        await net.teardown(key)
        for srv in (other, *servers):
            srv.close()
    assert iptables.architect_chains(netpair.pod) == []
