"""Rewrite pod IPs in the socket entries of a CRIU image directory.

When a container moves to a pod with another IP, sockets bound to the old IP
cannot be re-created there. Listeners (and unconnected datagram sockets)
bound to the old IP become wildcard (0.0.0.0 / ::) so they accept on the new
pod's address; connected sockets get the new IP as their source (the peer
reaches them through the Service's NAT, as kube-proxy does).

The decision is a pure function over addresses (:func:`rewrite_socket`); the
I/O shell reads and writes CRIU's own protobuf images (pycriu's generated
modules from CRIU's images/*.proto). Only message parse/serialize is used, so
any protobuf runtime that loads pycriu works.
"""

from __future__ import annotations

import importlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from architect.runtime.checkpoint.api import AddressRewrite, IPAddress
from architect.runtime.checkpoint.errors import CheckpointError, ImageCorrupt

TCP_ESTABLISHED = 1
TCP_LISTEN = 10
TCP_CLOSE = 7  # also the state of unconnected UDP sockets
SOCK_DGRAM = 2
_V4_MAPPED = ipaddress.IPv6Address("::ffff:0.0.0.0")


# ---------------------------------------------------------------- pure parts


def addr_from_words(words: Sequence[int]) -> IPAddress | None:
    """CRIU stores addresses as network-order u32 words read in host order."""
    if len(words) == 1:
        return ipaddress.IPv4Address(socket.ntohl(words[0]))
    if len(words) == 4:
        v = 0
        for w in words:
            v = (v << 32) | socket.ntohl(w)
        return ipaddress.IPv6Address(v)
    return None


def addr_to_words(addr: IPAddress) -> list[int]:
    if isinstance(addr, ipaddress.IPv4Address):
        return [socket.htonl(int(addr))]
    v = int(addr)
    return [socket.htonl((v >> (32 * i)) & 0xFFFFFFFF) for i in (3, 2, 1, 0)]


def _mapped(a: IPAddress) -> ipaddress.IPv6Address | None:
    if isinstance(a, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(int(_V4_MAPPED) | int(a))
    return None


def _match(
    addr: IPAddress, rewrites: Sequence[AddressRewrite]
) -> tuple[AddressRewrite, IPAddress] | None:
    """The rule for ``addr`` and its new address in ``addr``'s own form, or None."""
    for r in rewrites:
        if addr == r.old:
            return r, r.new
        mapped_old, mapped_new = _mapped(r.old), _mapped(r.new)
        if mapped_old is not None and addr == mapped_old:
            # An AF_INET6 socket talking IPv4 stores v4-mapped addresses.
            return r, mapped_new if mapped_new is not None else r.new
    return None


def _wildcard(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv4Address(0)
    return ipaddress.IPv6Address(0)


@dataclass(frozen=True)
class SocketChange:
    ino: int
    field: str  # "src" | "dst"
    old: IPAddress
    new: IPAddress


def rewrite_socket(
    ino: int,
    sock_type: int,
    state: int,
    src: IPAddress | None,
    dst: IPAddress | None,
    rewrites: Sequence[AddressRewrite],
) -> list[SocketChange]:
    """What to change in one inet socket; empty if it does not use an old IP or
    its kind (listener / connected) is not one its rule rewrites."""
    changes: list[SocketChange] = []
    unconnected = state == TCP_LISTEN or (sock_type == SOCK_DGRAM and state == TCP_CLOSE)
    if src is not None and (hit := _match(src, rewrites)) is not None:
        rule, new = hit
        if unconnected and rule.listeners:
            changes.append(SocketChange(ino, "src", src, _wildcard(src)))
        elif not unconnected and rule.established and not new.is_unspecified:
            changes.append(SocketChange(ino, "src", src, new))
    if dst is not None and not unconnected and (hit := _match(dst, rewrites)) is not None:
        rule, new = hit
        if rule.established and not new.is_unspecified:
            # A connection to its own pod IP follows the pod to its new IP.
            changes.append(SocketChange(ino, "dst", dst, new))
    return changes


def rewrites_between(
    old: Sequence[str],
    new: Sequence[str],
    *,
    listeners: bool = True,
    established: bool = True,
) -> tuple[AddressRewrite, ...]:
    """Pairs old -> new pod IP, per family (the first address of each): what to
    rewrite when an image taken in a pod with ``old`` IPs restores into one with
    ``new``. Equal addresses give no pair; a family the new pod lacks gives a
    listeners-only pair (to the wildcard), or none without ``listeners``.
    Neither kind asked for: no pairs."""
    def first(addrs: Sequence[str], version: int) -> IPAddress | None:
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if ip.version == version:
                return ip
        return None

    if not (listeners or established):
        return ()
    pairs = []
    for version in (4, 6):
        o, n = first(old, version), first(new, version)
        if o is None or o == n:
            continue
        if n is not None:
            pairs.append(AddressRewrite(o, n, listeners, established))
        elif listeners:
            pairs.append(AddressRewrite(o, _wildcard(o), listeners=True, established=False))
    return tuple(pairs)


def check_rewrites(rewrites: Sequence[AddressRewrite]) -> None:
    for r in rewrites:
        if r.old.version != r.new.version:
            raise CheckpointError(f"rewrite {r.old} -> {r.new}", "address families differ")


# ---------------------------------------------------------------- CRIU image I/O


def _pb() -> Any:
    # Imported by name: pycriu is installed by runtime/checkpoint/install, untyped.
    return importlib.import_module("pycriu.images.pb")


def _magics() -> dict[str, int]:
    return dict(importlib.import_module("pycriu.images.magic").by_name)


def read_entries(path: Path) -> tuple[bytes, list[bytes]]:
    """(header, entry payloads) of a CRIU image made of plain protobuf entries."""
    data = path.read_bytes()
    magics = _magics()
    if len(data) < 4:
        raise ImageCorrupt(path, "CRIU image shorter than its magic")
    (first,) = struct.unpack_from("<I", data, 0)
    hdr = 8 if first in (magics["IMG_COMMON"], magics["IMG_SERVICE"]) else 4
    entries, off = [], hdr
    while off < len(data):
        if off + 4 > len(data):
            raise ImageCorrupt(path, f"CRIU image entry header cut at byte {off}")
        (size,) = struct.unpack_from("<I", data, off)
        if off + 4 + size > len(data):
            raise ImageCorrupt(path, f"CRIU image entry cut at byte {off}")
        entries.append(data[off + 4 : off + 4 + size])
        off += 4 + size
    return data[:hdr], entries


def write_entries(path: Path, header: bytes, entries: Sequence[bytes]) -> None:
    tmp = path.with_name(path.name + ".rewrite")
    with open(tmp, "wb") as f:
        f.write(header)
        for e in entries:
            f.write(struct.pack("<I", len(e)))
            f.write(e)
    tmp.replace(path)


def _apply(isk: Any, rewrites: Sequence[AddressRewrite]) -> list[SocketChange]:
    src = addr_from_words(list(isk.src_addr))
    dst = addr_from_words(list(isk.dst_addr))
    changes = rewrite_socket(isk.ino, isk.type, isk.state, src, dst, rewrites)
    for c in changes:
        words = addr_to_words(c.new)
        field = isk.src_addr if c.field == "src" else isk.dst_addr
        del field[:]
        field.extend(words)
    return changes


def rewrite_image_dir(criu_dir: Path, rewrites: Sequence[AddressRewrite]) -> list[SocketChange]:
    """Apply ``rewrites`` to files.img (and a legacy inetsk.img) in ``criu_dir``."""
    check_rewrites(rewrites)
    if not rewrites:
        return []
    pb = _pb()
    changes: list[SocketChange] = []
    files = criu_dir / "files.img"
    if files.exists():
        header, entries = read_entries(files)
        out = []
        for raw in entries:
            fe = pb.file_entry()
            fe.ParseFromString(raw)
            if fe.HasField("isk"):
                ch = _apply(fe.isk, rewrites)
                if ch:
                    changes += ch
                    raw = fe.SerializeToString()
            out.append(raw)
        if changes:
            write_entries(files, header, out)
    legacy = criu_dir / "inetsk.img"
    if legacy.exists():
        header, entries = read_entries(legacy)
        out, legacy_changes = [], []
        for raw in entries:
            isk = pb.inet_sk_entry()
            isk.ParseFromString(raw)
            ch = _apply(isk, rewrites)
            legacy_changes += ch
            out.append(isk.SerializeToString() if ch else raw)
        if legacy_changes:
            write_entries(legacy, header, out)
            changes += legacy_changes
    return changes


def list_inet_sockets(criu_dir: Path) -> list[tuple[int, int, IPAddress | None, int]]:
    """(ino, state, source address, source port) of each inet socket in ``criu_dir``."""
    pb = _pb()
    result = []
    files = criu_dir / "files.img"
    if files.exists():
        for raw in read_entries(files)[1]:
            fe = pb.file_entry()
            fe.ParseFromString(raw)
            if fe.HasField("isk"):
                isk = fe.isk
                result.append(
                    (isk.ino, isk.state, addr_from_words(list(isk.src_addr)), isk.src_port)
                )
    return result
