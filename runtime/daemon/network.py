"""The pod-network side of the daemon: runtime/network's ContainerNetwork per target."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from architect.engine.telemetry import ContainerKey
from architect.runtime.daemon import metrics
from architect.runtime.daemon.ports import Activity, WakeFn
from architect.runtime.daemon.targets import Target
from architect.runtime.network import iptables
from architect.runtime.network.container import ContainerNetwork, net_spec
from architect.runtime.network.hold import Phase
from architect.runtime.network.netns import NetNs


class PodNetwork:
    def __init__(self, wake_timeout: float = 30.0, max_held: int = 1024) -> None:
        self.wake_timeout, self.max_held = wake_timeout, max_held
        self.nets: dict[ContainerKey, ContainerNetwork] = {}

    async def setup(self, target: Target, netns: str) -> None:
        spec = net_spec(
            target.index,
            target.mode,
            target.tcp_ports,
            target.udp_ports,
            target.shadow_ports,
            except_tcp=target.except_tcp,
            except_udp=target.except_udp,
            others_tcp=target.others_tcp,
            others_udp=target.others_udp,
        )
        if spec is None:
            return
        ns = NetNs(netns)
        # A hold left by a daemon that died: its queue is gone (the rules' bypass
        # passes packets meanwhile); a fresh one is armed if still hibernated.
        await asyncio.to_thread(iptables.remove, ns, [spec.hold_chain])
        net = ContainerNetwork(ns, spec)
        await net.setup()
        self.nets[target.key] = net

    async def hold(self, key: ContainerKey, wake: WakeFn) -> None:
        net = self.nets[key]
        # A little more than the daemon's own wake timeout: the daemon decides
        # the outcome, the hold's timer is only the backstop.
        await net.hibernate(wake, wake_timeout=self.wake_timeout + 5, max_held=self.max_held)

    async def after_checkpoint(self, key: ContainerKey) -> None:
        net = self.nets.get(key)
        if net is not None and net.hold is not None:
            await net.after_checkpoint()

    async def release(self, key: ContainerKey) -> None:
        net = self.nets.get(key)
        if net is None:
            return
        hold = net.hold
        if hold is not None and hold.phase is Phase.WAKING:
            # The wake is finishing: let the hold release its packets itself, in
            # order, rather than cancelling the wake under it.
            with contextlib.suppress(TimeoutError):
                await hold.wait_released(self.wake_timeout + 10)
        if hold is not None and hold.core.outcome == "woken":
            st = hold.stats  # the hold's phases of a wake by packet (metrics.py)
            metrics.observe_wake_phases(metrics.hold_phases(
                st.first_packet_at, st.wake_started_at, st.wake_finished_at, st.released_at))
        await net.resume()

    async def teardown(self, key: ContainerKey) -> None:
        net = self.nets.pop(key, None)
        if net is not None:
            await net.teardown()

    async def sweep(self, netns: str, index: int) -> list[str]:
        # Any ports do: only the chain names, which depend on the index, matter.
        spec = net_spec(index, "packets", [1])
        assert spec is not None
        ns = NetNs(netns)
        chains = [spec.hold_chain, spec.activity_chain, spec.shadow_chain]

        def sweep() -> list[str]:
            present = [c for c in iptables.architect_chains(ns) if c in chains]
            if present:
                iptables.remove(ns, present)
            return present

        return await asyncio.to_thread(sweep)

    def sample(self, key: ContainerKey, now: datetime) -> Activity | None:
        net = self.nets.get(key)
        if net is None:
            return None
        act = net.sample(now)
        return Activity(act.last_packet_at, act.open_connections, act.held_packets)
