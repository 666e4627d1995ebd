"""nfnetlink_acct messages, encoded and decoded (pure); the kernel side is in
test_network_activity.py."""

from __future__ import annotations

import struct

import pytest

from architect.runtime.network import nfacct


def _attr(atype: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), atype) + value
    return raw + b"\0" * (-len(raw) % 4)


def _reply(seq: int, name: str, pkts: int, flags: int = 0) -> bytes:
    body = struct.pack("=BBH", 0, 0, 0)
    body += _attr(nfacct.NFACCT_NAME, name.encode() + b"\0")
    body += _attr(nfacct.NFACCT_PKTS, struct.pack(">Q", pkts))
    body += _attr(3, struct.pack(">Q", pkts * 60))  # bytes: ignored
    return struct.pack("=IHHII", 16 + len(body), (7 << 8) | 0, flags, seq, 1) + body


def test_get_request_names_the_object_in_a_padded_attribute() -> None:
    msg = nfacct.encode(nfacct.MSG_GET, 42, nfacct.NLM_F_REQUEST, "ARCHITECT-ACT-c0")
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (len(msg), (7 << 8) | 1, 1, 42, 0)
    assert len(msg) % 4 == 0
    alen, atype = struct.unpack_from("=HH", msg, 20)
    assert atype == nfacct.NFACCT_NAME and msg[24 : 20 + alen] == b"ARCHITECT-ACT-c0\0"


def test_name_longer_than_the_kernel_takes_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 31"):
        nfacct.encode(nfacct.MSG_NEW, 1, 1, "x" * 32)


def test_replies_decode_to_name_and_packets() -> None:
    data = _reply(7, "ARCHITECT-ACT-c1", 2**40 + 5, nfacct.NLM_F_MULTI) + _reply(7, "b", 0)
    msgs = list(nfacct.messages(data))
    assert [(m[0], m[2]) for m in msgs] == [((7 << 8), 7), ((7 << 8), 7)]
    assert nfacct.decode_acct(msgs[0][3]) == ("ARCHITECT-ACT-c1", 2**40 + 5)
    assert nfacct.decode_acct(msgs[1][3]) == ("b", 0)


def test_truncated_data_yields_only_whole_messages() -> None:
    data = _reply(1, "a", 3)
    assert len(list(nfacct.messages(data + data[:10]))) == 1


def test_error_payload_gives_the_errno() -> None:
    assert nfacct.error_of(struct.pack("=i", -2) + b"\0" * 16) == 2
    assert nfacct.error_of(struct.pack("=i", 0)) == 0
