"""Extended accounting objects (nfnetlink_acct): named packet counters of one
network namespace, read with one netlink request.

The activity chain's counting rules add ``-m nfacct --nfacct-name <name>`` as
their last match, so the object counts exactly the packets the rules' own
counters count (matches are evaluated in order and stop at the first miss),
over both address families at once. Reading it is one ``sendto`` and one
``recv`` on a netlink socket made once in the pod's namespace, where
``iptables-save -c`` was two processes per family.

Message layout (linux/netfilter/nfnetlink_acct.h): nlmsghdr, nfgenmsg, then
attributes NFACCT_NAME (string), NFACCT_PKTS / NFACCT_BYTES (big-endian u64).
Encoding and decoding are pure; ``AcctSocket`` is the I/O shell.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator

from .netns import NetNs

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ACCT = 7
MSG_NEW, MSG_GET, MSG_DEL = 0, 1, 3
NFACCT_NAME, NFACCT_PKTS = 1, 2
NAME_MAX = 32  # NFACCT_NAME_MAX, the terminating NUL included
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_DUMP = 0x100, 0x300
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")


class AcctError(OSError):
    """The kernel refused a request; ``errno`` says why (ENOENT: no such object)."""


def _pad(n: int) -> int:
    return (n + 3) & ~3


def encode(msg: int, seq: int, flags: int, name: str | None = None) -> bytes:
    """One nfnetlink_acct request; ``name`` as its NFACCT_NAME attribute."""
    attrs = b""
    if name is not None:
        raw = name.encode("ascii") + b"\0"
        if len(raw) > NAME_MAX:
            raise ValueError(f"nfacct name {name!r}: longer than {NAME_MAX - 1} characters")
        attrs = _ATTR.pack(_ATTR.size + len(raw), NFACCT_NAME) + raw
        attrs += b"\0" * (_pad(len(attrs)) - len(attrs))
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0) + attrs
    return _HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_ACCT << 8) | msg, flags, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in ``data``."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, flags, seq, _ = _HDR.unpack_from(data, off)
        if length < _HDR.size or off + length > len(data):
            return
        yield mtype, flags, seq, data[off + _HDR.size : off + length]
        off += _pad(length)


def decode_acct(payload: bytes) -> tuple[str, int]:
    """(name, packets) of an NFNL_MSG_ACCT_NEW reply payload."""
    name, pkts, off = "", 0, _NFGEN.size
    while off + _ATTR.size <= len(payload):
        alen, atype = _ATTR.unpack_from(payload, off)
        if alen < _ATTR.size:
            break
        value = payload[off + _ATTR.size : off + alen]
        atype &= 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if atype == NFACCT_NAME:
            name = value.split(b"\0", 1)[0].decode("ascii", "replace")
        elif atype == NFACCT_PKTS and len(value) == 8:
            pkts = struct.unpack(">Q", value)[0]
        off += _pad(alen)
    return name, pkts


def error_of(payload: bytes) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 for an acknowledgement."""
    return -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else errno.EIO


def _make() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    s.bind((0, 0))
    return s


class AcctSocket:
    """A netlink socket in one namespace, for its accounting objects."""

    def __init__(self, ns: NetNs | None, timeout: float = 5.0) -> None:
        """A socket in ``ns``; None: in the calling thread's namespace."""
        # A socket lives in the namespace it was made in, whichever thread uses it.
        self.sock = ns.call(_make) if ns is not None else _make()
        self.sock.settimeout(timeout)
        self.seq = int(time.monotonic() * 1000) & 0x7FFFFFFF

    def close(self) -> None:
        self.sock.close()

    def _request(self, msg: int, flags: int, name: str | None) -> list[tuple[int, bytes]]:
        """Send one request; the (type, payload) of its replies up to the final one."""
        self.seq = (self.seq + 1) & 0x7FFFFFFF
        seq = self.seq
        self.sock.send(encode(msg, seq, NLM_F_REQUEST | flags, name))
        out: list[tuple[int, bytes]] = []
        for _ in range(10_000):  # bounded: a dump of many objects spans several reads
            data = self.sock.recv(65536)
            for mtype, _flags, mseq, payload in messages(data):
                if mseq != seq:
                    continue  # a late reply to an earlier, timed-out request
                if mtype == NLMSG_ERROR:
                    err = error_of(payload)
                    if err:
                        raise AcctError(err, f"nfacct {name or '*'}: {os.strerror(err)}")
                    return out
                if mtype == NLMSG_DONE:
                    return out
                out.append((mtype, payload))
                # A GET of one object has one answer (flagged NLM_F_MULTI all the
                # same) and, without NLM_F_ACK, nothing after it.
                if not flags & (NLM_F_ACK | NLM_F_DUMP):
                    return out
        raise AcctError(errno.EIO, "nfacct: no end of reply")

    def packets(self, name: str) -> int:
        """The packets counted by object ``name`` (AcctError ENOENT: none such)."""
        for _, payload in self._request(MSG_GET, 0, name):
            got, pkts = decode_acct(payload)
            if got == name:
                return pkts
        raise AcctError(errno.ENOENT, f"nfacct {name}: no reply")

    def add(self, name: str) -> None:
        """Create object ``name`` with zero counts; an existing one is reset to zero
        (NLM_F_REPLACE), as re-creating a chain resets its rules' counters."""
        self._request(MSG_NEW, NLM_F_ACK | NLM_F_REPLACE, name)

    def delete(self, name: str, *, tries: int = 20) -> bool:
        """Delete object ``name``; False when it is still in use after ``tries``.

        nf_tables releases a deleted rule's references after the commit, from a
        work queue: right after the chain is gone the object may still be busy.
        """
        for i in range(tries):
            try:
                self._request(MSG_DEL, NLM_F_ACK, name)
                return True
            except AcctError as e:
                if e.errno == errno.ENOENT:
                    return True
                if e.errno != errno.EBUSY or i == tries - 1:
                    return False
            time.sleep(0.01)
        return False

    def names(self) -> list[str]:
        """Every object of the namespace."""
        return [decode_acct(p)[0] for _, p in self._request(MSG_GET, NLM_F_DUMP, None)]
