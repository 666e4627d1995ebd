"""One managed container's network side, as the daemon drives it.

    net = ContainerNetwork(NetNs.of_pid(sandbox_pid), spec)
    await net.setup()                   # pod start: counters, shadow redirects
    activity = net.sample(now)          # every sampling period -> telemetry
    await net.hibernate(wake)           # before the checkpoint: hold its ports
    await net.resume()                  # once restored: release, drop the hold
    await net.teardown()                # pod gone or container unmanaged

After a daemon restart, ``iptables.cleanup(ns, "ARCHITECT-HOLD-")`` removes the
holds the previous daemon left (they were failing open meanwhile).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from datetime import datetime

from . import iptables
from .activity import ActivitySampler, ContainerActivity
from .hold import PacketHold, WakeFn
from .netns import NetNs
from .rules import HEALTH_PROXY_SOURCE, NetSpec, ShadowPort, SpecError

NETWORK_MODES = ("none", "packets", "connections")


def net_spec(
    index: int,
    mode: str,
    tcp_ports: Iterable[int],
    udp_ports: Iterable[int] = (),
    shadow_ports: Iterable[tuple[int, int]] = (),
    exclude_sources: Iterable[str] = (),
    except_tcp: Iterable[int] = (),
    except_udp: Iterable[int] = (),
    others_tcp: Iterable[int] = (),
    others_udp: Iterable[int] = (),
) -> NetSpec | None:
    """The spec of the ``index``-th managed container of a pod; None for mode "none".

    ``tcp_ports``/``udp_ports``: the container's declared ports. When it declares
    none, every port of the pod's namespace is watched but ``except_tcp`` /
    ``except_udp`` (the ports the pod's other containers declare): its ports are
    not known while it is hibernated (no sockets), and a packet for a port nobody
    declared can only be for it. connections mode watches TCP only: UDP has no
    connection to keep it up. ``shadow_ports``: (appPort, shadowPort) pairs of the
    shadow-ports mapping. The health-check-proxy mapping adds nothing here: its
    shadowPort is the sidecar's own listener, and the sidecar's source address is
    always excluded.
    """
    if mode not in NETWORK_MODES:
        raise SpecError(f"network mode {mode!r}: must be one of {', '.join(NETWORK_MODES)}")
    if mode == "none":
        return None
    if not 0 <= index <= 255:
        raise SpecError(f"container index {index}: must be in 0..255")
    tcp, udp = tuple(sorted(set(tcp_ports))), tuple(sorted(set(udp_ports)))
    all_ports = not tcp and not udp
    return NetSpec(
        tag=f"c{index}",
        tcp_ports=tcp,
        udp_ports=udp if mode == "packets" else (),
        shadow=tuple(ShadowPort(a, s) for a, s in shadow_ports),
        exclude_sources=(f"{HEALTH_PROXY_SOURCE}/32", *exclude_sources),
        queue_num=index,
        all_ports=all_ports,
        udp_all=all_ports and mode == "packets",
        except_tcp=tuple(sorted(set(except_tcp))) if all_ports else (),
        except_udp=tuple(sorted(set(except_udp))) if all_ports and mode == "packets" else (),
        others_tcp=tuple(sorted(set(others_tcp) - set(tcp))),
        others_udp=tuple(sorted(set(others_udp) - set(udp))),
        count_connections=mode == "connections",
    )


class ContainerNetwork:
    """Rules, packet hold and activity sampling of one managed container."""

    def __init__(self, ns: NetNs, spec: NetSpec) -> None:
        self.ns, self.spec = ns, spec
        self.sampler = ActivitySampler(ns, spec)
        self.hold: PacketHold | None = None

    async def setup(self) -> None:
        await asyncio.to_thread(iptables.install_base, self.ns, self.spec)

    async def hibernate(
        self, wake: WakeFn, *, wake_timeout: float = 30.0, max_held: int = 1024
    ) -> PacketHold:
        """Hold the container's ports; the first packet calls ``wake``."""
        if self.hold is not None:
            await self.resume()
        hold = PacketHold(self.ns, self.spec, wake, wake_timeout=wake_timeout, max_held=max_held)
        await hold.start()
        self.hold = hold
        return hold

    async def resume(self) -> None:
        """Release whatever is held and remove the hold (the container runs)."""
        hold, self.hold = self.hold, None
        if hold is not None:
            await hold.close()

    async def after_checkpoint(self) -> None:
        """CRIU's dump inserted its network lock above the hold: move the hold back
        on top, so the container's packets are queued (and wake it), not dropped."""
        if self.hold is not None:
            await asyncio.to_thread(iptables.move_hold_first, self.ns, self.spec)
            # The pod's other containers keep their traffic while this one sleeps.
            await asyncio.to_thread(iptables.exempt_from_lock, self.ns, self.spec)

    def sample(self, now: datetime) -> ContainerActivity:
        act = self.sampler.sample(now)
        held = self.hold.held_count if self.hold is not None else 0
        return dataclasses.replace(act, held_packets=held)

    async def teardown(self) -> None:
        self.sampler.close()  # its open files keep the namespace alive
        await self.resume()
        await asyncio.to_thread(iptables.remove_container, self.ns, self.spec)
