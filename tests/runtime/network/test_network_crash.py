"""A holder process killed with SIGKILL leaves no blackhole; cleanup finds its rules."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from network_apps import GREETING, NetPair, connect_and_greet, start_tcp_app, tcp_total_retrans

from architect.runtime.network import iptables

pytestmark = pytest.mark.root

APP = 8080


async def test_kill_9_holder_fails_open_and_cleanup_removes_rules(netpair: NetPair) -> None:
    server = await start_tcp_app(netpair.pod, APP)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "architect.runtime.network.hold",
            "--netns",
            netpair.pod.path,
            "--tag",
            "c",
            "--queue",
            "9",
            "--tcp",
            str(APP),
            "--wake-cmd",
            "sleep 30",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the wake command dies with it
    )
    s1 = netpair.sock(netpair.client)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "armed"
        # While the holder lives, the connection is held (the wake never ends).
        pending = asyncio.ensure_future(connect_and_greet(s1, (netpair.pod_ip, APP)))
        done, _ = await asyncio.wait({pending}, timeout=0.5)
        assert not done
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        # The held SYN died with the queue; the client's retransmit now bypasses.
        assert await asyncio.wait_for(pending, 10) == GREETING
        s2 = netpair.sock(netpair.client)
        assert await connect_and_greet(s2, (netpair.pod_ip, APP)) == GREETING
        assert tcp_total_retrans(s2) == 0  # not held at all: --queue-bypass
        s2.close()
        # The stale rules are still there until a cleanup finds them by name.
        assert iptables.architect_chains(netpair.pod) == ["ARCHITECT-HOLD-c"]
        assert iptables.cleanup(netpair.pod, "ARCHITECT-HOLD-") == ["ARCHITECT-HOLD-c"]
        assert iptables.architect_chains(netpair.pod) == []
    finally:
        s1.close()
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
        server.close()
