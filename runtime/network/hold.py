"""Hold a hibernated container's incoming packets and wake it on the first one.

While a managed container is hibernated, its ports are sent to an NFQUEUE in the
pod's network namespace (``rules.hold_chain``). This module binds that queue and:

1. on the first packet, starts the wake callback (once);
2. holds every packet without a verdict while the wake runs;
3. when the wake completes, fails or times out, accepts the held packets in
   arrival order and lets every later packet through at once. A failed wake
   still releases: the client then gets the application's (or the kernel's) own
   answer instead of a silent drop.

The bound: at most ``max_held`` packets wait for a verdict. This is the kernel
queue's own length (packets delivered to us but not yet given a verdict count
against it), so the bound holds even if this process stalls. At the bound the
kernel *drops* further packets (counted as ``queue_dropped`` in
``/proc/net/netfilter/nfnetlink_queue``); we deliberately leave the kernel's
fail-open flag (NFQA_CFG_F_FAIL_OPEN) unset, because accepting a packet for a
container that has no sockets yet earns the client a TCP reset or an ICMP port
unreachable, the very error the hold exists to prevent. A dropped TCP SYN is
retransmitted by the client (after 1 s, then 3 s, ...) and gets through once the
wake has finished; a dropped UDP datagram is lost, as UDP allows.

When the holder dies (crash, kill -9), its netlink socket closes, the kernel
destroys the queue (dropping what it held; TCP retransmits), and the rules'
``--queue-bypass`` accepts every later packet: traffic is never blackholed. A
restarted daemon removes the stale rules with ``iptables.cleanup(ns,
"ARCHITECT-HOLD-")``.

The netlink socket is created inside the pod's namespace by a throwaway thread
(see ``netns``); everything after that runs on the asyncio loop, which reads the
socket through ``loop.add_reader``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from . import iptables
from .netns import NetNs, NetNsError
from .rules import NetSpec, SpecError

log = logging.getLogger(__name__)

WakeFn = Callable[[], Awaitable[None]]


class Phase(enum.Enum):
    ARMED = "armed"  # no packet yet
    WAKING = "waking"  # wake running, packets held
    RELEASED = "released"  # everything passes


class Verdictable(Protocol):
    def accept(self) -> None: ...


P = TypeVar("P", bound=Verdictable)


@dataclass(slots=True)
class Decision:
    hold: bool
    start_wake: bool


@dataclass(slots=True)
class HoldCore(Generic[P]):
    """The hold's state machine, free of I/O: which packets wait, when to wake."""

    phase: Phase = Phase.ARMED
    held: list[P] = field(default_factory=list)
    seen: int = 0
    outcome: str | None = None

    def on_packet(self, packet: P) -> Decision:
        self.seen += 1
        if self.phase is Phase.RELEASED:
            return Decision(hold=False, start_wake=False)
        self.held.append(packet)
        start = self.phase is Phase.ARMED
        self.phase = Phase.WAKING
        return Decision(hold=True, start_wake=start)

    def release(self, outcome: str) -> list[P]:
        """Enter RELEASED; return the held packets in arrival order (once)."""
        if self.phase is Phase.RELEASED:
            return []
        self.phase, self.outcome = Phase.RELEASED, outcome
        out, self.held = self.held, []
        return out


@dataclass(slots=True)
class HoldStats:
    first_packet_at: float | None = None  # time.monotonic()
    wake_started_at: float | None = None
    wake_finished_at: float | None = None
    released_at: float | None = None
    released_packets: int = 0
    release_seconds: float = 0.0  # issuing the verdicts of the held packets
    passed_packets: int = 0

    @property
    def wake_seconds(self) -> float | None:
        if self.wake_started_at is None or self.wake_finished_at is None:
            return None
        return self.wake_finished_at - self.wake_started_at


class PacketHold:
    """Holds one container's packets until its wake completes.

    One instance per hibernation: ``start()`` when the container is about to be
    checkpointed, ``close()`` once it runs again (or is being torn down).
    """

    def __init__(
        self,
        ns: NetNs,
        spec: NetSpec,
        wake: WakeFn,
        *,
        wake_timeout: float = 30.0,
        max_held: int = 1024,
        manage_rules: bool = True,
    ) -> None:
        if max_held < 1:
            raise ValueError(f"max_held {max_held}: must be at least 1")
        self.ns, self.spec, self._wake_fn = ns, spec, wake
        self.wake_timeout, self.max_held, self.manage_rules = wake_timeout, max_held, manage_rules
        self.core: HoldCore[Any] = HoldCore()
        self.stats = HoldStats()
        self._nfq: Any = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released = asyncio.Event()
        self._wake_task: asyncio.Task[None] | None = None

    @property
    def phase(self) -> Phase:
        return self.core.phase

    @property
    def held_count(self) -> int:
        return len(self.core.held)

    async def start(self) -> None:
        """Bind the queue in the pod's namespace, then install the hold rules."""
        from netfilterqueue import COPY_META, NetfilterQueue

        def bind() -> Any:
            nfq = NetfilterQueue()
            # COPY_META: the verdict needs only the packet id, not its bytes.
            nfq.bind(self.spec.queue_num, self._on_packet, max_len=self.max_held, mode=COPY_META)
            return nfq

        self._loop = asyncio.get_running_loop()
        try:
            self._nfq = await asyncio.to_thread(self.ns.call, bind)
        except OSError as e:  # e.g. the queue number is taken in this namespace
            raise NetNsError(f"{self.ns.path}: NFQUEUE {self.spec.queue_num}: {e}") from e
        self._fd = self._nfq.get_fd()
        self._loop.add_reader(self._fd, self._drain)
        if self.manage_rules:
            try:
                await asyncio.to_thread(iptables.install_hold, self.ns, self.spec)
            except BaseException:
                await self._unbind()
                raise

    def _drain(self) -> None:
        try:
            self._nfq.run(block=False)
        except OSError as e:  # the socket is gone; the rules' bypass takes over
            log.warning("hold %s: queue read failed: %s", self.spec.tag, e)

    def _on_packet(self, packet: Any) -> None:
        now = time.monotonic()
        decision = self.core.on_packet(packet)
        if not decision.hold:
            self.stats.passed_packets += 1
            packet.accept()
            return
        if decision.start_wake:
            self.stats.first_packet_at = now
            assert self._loop is not None
            self._wake_task = self._loop.create_task(self._run_wake())

    async def _run_wake(self) -> None:
        self.stats.wake_started_at = time.monotonic()
        try:
            await asyncio.wait_for(self._wake_fn(), self.wake_timeout)
            outcome = "woken"
        except TimeoutError:
            outcome = f"wake timed out after {self.wake_timeout}s"
        except Exception as e:  # any wake failure still releases the packets
            outcome = f"wake failed: {e}"
        self.stats.wake_finished_at = time.monotonic()
        if outcome != "woken":
            log.warning("hold %s: %s; releasing held packets", self.spec.tag, outcome)
        self.release(outcome)

    def release(self, outcome: str = "released") -> None:
        """Accept the held packets in order and let all later ones pass."""
        t0 = time.monotonic()
        packets = self.core.release(outcome)
        for p in packets:
            with contextlib.suppress(RuntimeError):  # queue already unbound
                p.accept()
        if packets or self.stats.released_at is None:
            self.stats.released_packets += len(packets)
            self.stats.released_at = time.monotonic()
            self.stats.release_seconds = self.stats.released_at - t0
        self._released.set()

    async def wait_released(self, timeout: float | None = None) -> str:
        """Wait until the packets are released; return the outcome."""
        await asyncio.wait_for(self._released.wait(), timeout)
        return self.core.outcome or ""

    async def close(self) -> None:
        """Release everything, remove the hold rules, unbind the queue."""
        if self._wake_task is not None and not self._wake_task.done():
            self._wake_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wake_task
        self.release("closed")
        if self.manage_rules:
            # Rules go before the queue: a packet in between is accepted by us.
            await asyncio.to_thread(iptables.remove_hold, self.ns, self.spec)
        await self._unbind()

    async def _unbind(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None  # frees the handle, closing the netlink socket


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue_num: int
    portid: int
    waiting: int
    dropped: int  # queue full
    user_dropped: int  # netlink socket buffer full


def parse_nfnetlink_queue(text: str) -> dict[int, QueueStats]:
    """Parse /proc/net/netfilter/nfnetlink_queue (one line per bound queue)."""
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 7:
            continue
        q = QueueStats(int(f[0]), int(f[1]), int(f[2]), int(f[5]), int(f[6]))
        out[q.queue_num] = q
    return out


def queue_stats(ns: NetNs) -> dict[int, QueueStats]:
    return parse_nfnetlink_queue(ns.read_proc_net("netfilter/nfnetlink_queue"))


# A standalone holder process: `python -m architect.runtime.network.hold`.
# The daemon runs holds in-process; this is for operators and the crash tests.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="architect-hold", description=__doc__.split("\n")[0])
    p.add_argument("--netns", required=True, help="namespace file, e.g. /proc/PID/ns/net")
    p.add_argument("--tag", default="0")
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    p.add_argument("--wake-cmd", help="command run on the first packet (the wake)")
    p.add_argument("--wake-timeout", type=float, default=30.0)
    p.add_argument("--max-held", type=int, default=1024)
    return p


async def _amain(args: argparse.Namespace, spec: NetSpec) -> int:
    async def wake() -> None:
        if args.wake_cmd:
            proc = await asyncio.create_subprocess_exec(*shlex.split(args.wake_cmd))
            if await proc.wait() != 0:
                raise RuntimeError(f"wake command exited {proc.returncode}")

    hold = PacketHold(
        NetNs(args.netns), spec, wake, wake_timeout=args.wake_timeout, max_held=args.max_held
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await hold.start()
    print("armed", flush=True)
    released = asyncio.ensure_future(hold.wait_released())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({released, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    await hold.close()
    print(f"released: {hold.core.outcome}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = NetSpec(
            tag=args.tag,
            tcp_ports=tuple(args.tcp),
            udp_ports=tuple(args.udp),
            queue_num=args.queue,
        )
        return asyncio.run(_amain(args, spec))
    except (SpecError, ValueError, NetNsError, OSError) as e:
        print(f"architect-hold: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
