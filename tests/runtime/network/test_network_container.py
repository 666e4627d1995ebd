"""The daemon-facing facade: spec building (pure) and a full lifecycle (root)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from network_apps import GREETING, NetPair, connect_and_greet, start_tcp_app

from architect.engine.directives import Action
from architect.engine.evaluate import evaluate
from architect.engine.pods import PodInfo
from architect.engine.telemetry import ContainerKey, ContainerState, ContainerTelemetry
from architect.policy.models import HibernationPolicy
from architect.runtime.network import iptables
from architect.runtime.network.activity import container_listening_ports
from architect.runtime.network.container import ContainerNetwork, net_spec
from architect.runtime.network.netns import NetNs
from architect.runtime.network.rules import ShadowPort, SpecError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_net_spec_per_mode() -> None:
    assert net_spec(0, "none", (80,)) is None
    p = net_spec(2, "packets", (80, 80, 443), (53,), [(80, 9080)], ["10.0.0.1/32"])
    assert p is not None
    assert (p.tag, p.queue_num, p.tcp_ports, p.udp_ports) == ("c2", 2, (80, 443), (53,))
    assert p.shadow == (ShadowPort(80, 9080),)
    assert p.exclude_sources == ("127.0.0.6/32", "10.0.0.1/32")
    c = net_spec(1, "connections", (80,), (53,))
    assert c is not None and c.udp_ports == ()  # UDP has no connection to keep it up
    # only connections mode pays for reading the conntrack table
    assert (p.count_connections, c.count_connections) == (False, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, "sometimes", (80,)), "network mode 'sometimes': must be one of none, packets"),
        ((300, "packets", (80,)), "container index 300: must be in 0..255"),
    ],
)
def test_net_spec_errors(args: tuple[int, str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        net_spec(*args)


def test_net_spec_without_declared_ports_watches_all_but_the_others() -> None:
    p = net_spec(1, "packets", (), (), except_tcp=(9000, 8080, 9000), except_udp=(53,))
    assert p is not None and p.all_ports and p.udp_all
    assert (p.tcp_ports, p.udp_ports, p.except_tcp, p.except_udp) == ((), (), (8080, 9000), (53,))
    c = net_spec(1, "connections", (), except_tcp=(8080,), except_udp=(53,))
    assert c is not None and c.all_ports and not c.udp_all and c.except_udp == ()
    # Declared ports: the others' ports play no part.
    d = net_spec(1, "packets", (80,), except_tcp=(8080,))
    assert d is not None and not d.all_ports and d.except_tcp == ()


@pytest.mark.root
async def test_lifecycle_setup_hibernate_wake_resume_teardown(netpair: NetPair) -> None:
    spec = net_spec(0, "packets", (8080,), shadow_ports=[(8080, 9080)])
    assert spec is not None
    net = ContainerNetwork(netpair.pod, spec)
    servers: list[asyncio.Server] = []
    woke = asyncio.Event()

    async def wake() -> None:
        servers.append(await start_tcp_app(netpair.pod, 8080))
        woke.set()

    await net.setup()
    try:
        assert net.sample(T0).last_packet_at is None
        await net.hibernate(wake)
        s = netpair.sock(netpair.client)
        pending = asyncio.ensure_future(connect_and_greet(s, (netpair.pod_ip, 8080)))
        assert await pending == GREETING
        t1 = T0 + timedelta(seconds=5)
        act = net.sample(t1)
        # packets mode: the open connection is not read (it decides nothing here)
        assert act.last_packet_at == t1 and act.open_connections == 0 and act.held_packets == 0
        await net.resume()
        assert sorted(iptables.architect_chains(netpair.pod)) == [
            "ARCHITECT-ACT-c0",
            "ARCHITECT-SHD-c0",
        ]
        s.close()
    finally:
        await net.teardown()
        for srv in servers:
            srv.close()
    assert iptables.architect_chains(netpair.pod) == []


@pytest.mark.root
def test_container_listening_ports_only_of_its_processes(netpair: NetPair) -> None:
    code = (
        "import socket,sys,time\n"
        "t=socket.socket(); t.bind(('0.0.0.0', int(sys.argv[1]))); t.listen()\n"
        "u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', int(sys.argv[2])))\n"
        "print('up', flush=True); time.sleep(30)\n"
    )
    procs = [
        subprocess.Popen(
            [*netpair.pod.argv([sys.executable, "-c", code, tcp, udp])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for tcp, udp in (("8080", "5353"), ("7000", "7001"))
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
        # Through /proc/<pid>/net (a pid path) and through setns (a named path).
        by_pid = NetNs.of_pid(procs[0].pid)
        assert container_listening_ports(by_pid, [procs[0].pid]) == ((8080,), (5353,))
        assert container_listening_ports(netpair.pod, [p.pid for p in procs]) == (
            (7000, 8080),
            (5353, 7001),
        )
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.root
async def test_connections_mode_keeps_awake_while_open_then_lets_go(netpair: NetPair) -> None:
    """Real telemetry from the namespace, decided by the engine's evaluator."""
    spec = net_spec(0, "connections", (8080,))
    assert spec is not None
    net = ContainerNetwork(netpair.pod, spec)
    policy = HibernationPolicy.model_validate(
        {
            "metadata": {"name": "hp", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "runtime": "runc",
                "containers": [
                    {"name": "app", "scaledownAfter": "30s", "wakeOn": {"network": "connections"}}
                ],
            },
        }
    )
    pod = PodInfo("default", "web-1", {"app": "web"}, "runc-architect", ("app",))
    key = ContainerKey("default", "web-1", "app")

    def decide(at: float) -> Action:
        now = T0 + timedelta(seconds=at)
        act = net.sample(now)
        t = ContainerTelemetry(
            state=ContainerState.RUNNING,
            state_since=T0,
            last_activity=act.last_packet_at,
            open_connections=act.open_connections,
        )
        (d,) = evaluate([policy], [pod], {key: t}, now).for_pod("default", "web-1")
        return d.action

    await net.setup()
    server = await start_tcp_app(netpair.pod, 8080)
    s = netpair.sock(netpair.client)
    try:
        assert decide(0) is not Action.HIBERNATE  # baseline sample
        assert await connect_and_greet(s, (netpair.pod_ip, 8080)) == GREETING
        # Long past scaledownAfter, but a connection is open: stay awake.
        assert decide(100) is Action.STAY_AWAKE
        assert decide(200) is Action.STAY_AWAKE
        s.close()
        for _ in range(100):
            if net.sample(T0 + timedelta(seconds=200)).open_connections == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the closing handshake's last packets land
        assert decide(210) is not Action.HIBERNATE  # the close was the last activity
        assert decide(241) is Action.HIBERNATE  # 30s after it: let go
    finally:
        s.close()
        server.close()
        await net.teardown()


@pytest.mark.root
async def test_after_checkpoint_puts_the_hold_above_a_criu_style_lock(netpair: NetPair) -> None:
    spec = net_spec(0, "packets", (8080,))
    assert spec is not None
    net = ContainerNetwork(netpair.pod, spec)
    servers: list[asyncio.Server] = []

    async def wake() -> None:
        servers.append(await start_tcp_app(netpair.pod, 8080))

    await net.setup()
    try:
        await net.hibernate(wake)
        # What CRIU's dump does to the pod's network: a DROP chain first in INPUT.
        lock = "*filter\n:CRIU - [0:0]\n-I INPUT 1 -j CRIU\n-A CRIU -j DROP\nCOMMIT\n"
        netpair.pod.run(["iptables-restore", "-w", "--noflush"], stdin=lock)
        netpair.pod.run(["ip6tables-restore", "-w", "--noflush"], stdin=lock)
        await net.after_checkpoint()
        for family in (4, 6):
            inputs = [r for c, r in iptables.save(netpair.pod, family)["filter"].rules
                      if c == "INPUT"]
            assert inputs[0].endswith(f"-j {spec.hold_chain}"), inputs
        # The hold sees the SYN before the lock: it wakes the app and the client is served.
        s = netpair.sock(netpair.client)
        assert await connect_and_greet(s, (netpair.pod_ip, 8080), timeout=5) == GREETING
        s.close()
    finally:
        await net.teardown()  # the CRIU chain goes with the test's namespace
        for srv in servers:
            srv.close()


async def test_other_containers_ports_pass_criu_lock_while_hibernated(netpair: NetPair) -> None:
    """CRIU keeps its lock (DROP in INPUT and OUTPUT) from the dump to the restore.
    The pod's other containers, such as the health-check proxy answering the
    kubelet's probes, must keep their traffic meanwhile (seen on the e2e node: every
    probe timed out and the kubelet restarted the hibernated pod)."""
    spec = net_spec(0, "packets", (8080,), others_tcp=(9080,))
    assert spec is not None and spec.others_tcp == (9080,)
    net = ContainerNetwork(netpair.pod, spec)
    sidecar = await start_tcp_app(netpair.pod, 9080)  # the proxy: not hibernated
    servers: list[asyncio.Server] = []
    # CRIU's own unlock at the restore: the chain declared (so flushed, our
    # exemptions with it), the jumps removed, the chain deleted.
    unlock = ("*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-X CRIU\n"
              "COMMIT\n")

    async def wake() -> None:
        for tool in ("iptables-restore", "ip6tables-restore"):
            netpair.pod.run([tool, "-w", "--noflush"], stdin=unlock)
        servers.append(await start_tcp_app(netpair.pod, 8080))

    await net.setup()
    try:
        await net.hibernate(wake)
        lock = ("*filter\n:CRIU - [0:0]\n-I INPUT 1 -j CRIU\n-I OUTPUT 1 -j CRIU\n"
                "-A CRIU -j DROP\nCOMMIT\n")
        netpair.pod.run(["iptables-restore", "-w", "--noflush"], stdin=lock)
        netpair.pod.run(["ip6tables-restore", "-w", "--noflush"], stdin=lock)
        await net.after_checkpoint()
        await net.after_checkpoint()  # idempotent: the exemption is added once
        criu = [r for c, r in iptables.save(netpair.pod, 4)["filter"].rules if c == "CRIU"]
        assert sum("architect:lock-exempt" in r for r in criu) == 2, criu
        # The sidecar answers through the lock at once, and nothing woke the app.
        s = netpair.sock(netpair.client)
        assert await connect_and_greet(s, (netpair.pod_ip, 9080), timeout=3) == GREETING
        s.close()
        assert not servers
        # Any other port still meets the lock (dropped: the connect times out).
        s = netpair.sock(netpair.client)
        with pytest.raises((TimeoutError, OSError)):
            await connect_and_greet(s, (netpair.pod_ip, 7070), timeout=1)
        s.close()
        # The container's own port is still held and wakes it.
        s = netpair.sock(netpair.client)
        assert await connect_and_greet(s, (netpair.pod_ip, 8080), timeout=5) == GREETING
        s.close()
        assert "CRIU" not in {c for c, _ in iptables.save(netpair.pod, 4)["filter"].rules}
    finally:
        await net.teardown()
        sidecar.close()
        for srv in servers:
            srv.close()
