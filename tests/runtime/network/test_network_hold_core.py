"""The hold's pure state machine and its kernel-statistics parser."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from architect.runtime.network.hold import HoldCore, Phase, parse_nfnetlink_queue


@dataclass
class Pkt:
    n: int
    accepted: bool = False

    def accept(self) -> None:
        self.accepted = True


def test_first_packet_starts_the_wake_once_and_all_are_held() -> None:
    core: HoldCore[Pkt] = HoldCore()
    decisions = [core.on_packet(Pkt(i)) for i in range(4)]
    assert [(d.hold, d.start_wake) for d in decisions] == [
        (True, True),
        (True, False),
        (True, False),
        (True, False),
    ]
    assert core.phase is Phase.WAKING and [p.n for p in core.held] == [0, 1, 2, 3]


def test_release_returns_held_in_order_once_then_passes_everything() -> None:
    core: HoldCore[Pkt] = HoldCore()
    for i in range(3):
        core.on_packet(Pkt(i))
    assert [p.n for p in core.release("woken")] == [0, 1, 2]
    assert core.release("again") == [] and core.outcome == "woken"
    d = core.on_packet(Pkt(9))
    assert (d.hold, d.start_wake) == (False, False)
    assert core.phase is Phase.RELEASED and core.seen == 4


def test_release_before_any_packet() -> None:
    core: HoldCore[Pkt] = HoldCore()
    assert core.release("closed") == []
    assert not core.on_packet(Pkt(1)).start_wake


def test_parse_nfnetlink_queue() -> None:
    text = "    5  12345     3 1   128     3     0       9  1\n    6 99 0 1 128 0 2 4 1\n"
    q = parse_nfnetlink_queue(text)
    assert (q[5].portid, q[5].waiting, q[5].dropped, q[5].user_dropped) == (12345, 3, 3, 0)
    assert q[6].user_dropped == 2
    assert parse_nfnetlink_queue("") == {}


def test_holder_rejects_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "architect.runtime.network.hold", "--netns", "/x", "--tcp", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "tcp_ports: port 0 is not an integer in 1..65535" in proc.stderr
    assert "Traceback" not in proc.stderr
