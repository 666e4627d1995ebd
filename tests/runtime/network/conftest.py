"""Network namespaces for the network tests: a client and a "pod", joined by a veth.

Addresses are 10.213.<n>.1 (client) and 10.213.<n>.2 (pod), inside the two
namespaces only; traffic never leaves the machine. Fixtures always delete what
they made.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator

import pytest
from network_apps import NetPair

_counter = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    if os.geteuid() != 0:
        pytest.fail("network tests need root (they create network namespaces)")
    n = next(_counter)
    tag = f"{os.getpid()}x{n}"
    client, pod = f"arch-c{tag}", f"arch-p{tag}"
    octet = (os.getpid() + n) % 250 + 1
    pair = NetPair(client, pod, f"10.213.{octet}.1", f"10.213.{octet}.2")
    v6 = {client: f"fd00:213:{octet:x}::1", pod: f"fd00:213:{octet:x}::2"}
    made: list[str] = []
    try:
        for name in (client, pod):
            _ip("netns", "add", name)
            made.append(name)
        _ip(
            "link", "add", "vc", "netns", client, "type", "veth", "peer", "name", "vp", "netns", pod
        )
        for name, dev, addr in ((client, "vc", pair.client_ip), (pod, "vp", pair.pod_ip)):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            # nodad: the address is usable at once, no duplicate detection wait
            _ip("-n", name, "addr", "add", f"{v6[name]}/64", "dev", dev, "nodad")
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield pair
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
