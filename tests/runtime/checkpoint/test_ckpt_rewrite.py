"""Socket address rewriting: the pure decision table, and CRIU's real image format."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from architect.runtime.checkpoint import AddressRewrite, ImageCorrupt
from architect.runtime.checkpoint import rewrite as rw

A4, B4 = ipaddress.ip_address("198.18.1.2"), ipaddress.ip_address("198.18.2.2")
A6, B6 = ipaddress.ip_address("fd0c:1::2"), ipaddress.ip_address("fd0c:2::2")
PEER4 = ipaddress.ip_address("198.18.1.1")
RULES = (AddressRewrite(A4, B4), AddressRewrite(A6, B6))
STREAM, DGRAM = 1, 2
W4, W6 = ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")
MAPPED = ipaddress.ip_address


@pytest.mark.parametrize(
    ("sock_type", "state", "src", "dst", "want"),
    [
        (STREAM, rw.TCP_LISTEN, A4, None, [("src", A4, W4)]),
        (STREAM, rw.TCP_LISTEN, A6, None, [("src", A6, W6)]),
        (STREAM, rw.TCP_LISTEN, W4, None, []),
        (STREAM, rw.TCP_ESTABLISHED, A4, PEER4, [("src", A4, B4)]),
        (STREAM, rw.TCP_ESTABLISHED, A6, MAPPED("fd0c:1::1"), [("src", A6, B6)]),
        (STREAM, rw.TCP_ESTABLISHED, A4, A4, [("src", A4, B4), ("dst", A4, B4)]),
        (STREAM, rw.TCP_ESTABLISHED, PEER4, MAPPED("198.18.9.9"), []),
        (DGRAM, rw.TCP_CLOSE, A4, None, [("src", A4, W4)]),
        (DGRAM, rw.TCP_ESTABLISHED, A4, PEER4, [("src", A4, B4)]),
        (
            STREAM, rw.TCP_ESTABLISHED, MAPPED("::ffff:198.18.1.2"), MAPPED("::ffff:198.18.1.1"),
            [("src", MAPPED("::ffff:198.18.1.2"), MAPPED("::ffff:198.18.2.2"))],
        ),
        (STREAM, rw.TCP_LISTEN, MAPPED("::ffff:198.18.1.2"), None,
         [("src", MAPPED("::ffff:198.18.1.2"), W6)]),
    ],
)  # fmt: skip
def test_rewrite_table(
    sock_type: int, state: int, src: object, dst: object, want: list[tuple[str, object, object]]
) -> None:
    got = rw.rewrite_socket(7, sock_type, state, src, dst, RULES)  # type: ignore[arg-type]
    assert [(c.field, c.old, c.new) for c in got] == want


@pytest.mark.parametrize("addr", [A4, B4, A6, W6, MAPPED("::ffff:1.2.3.4")])
def test_words_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert rw.addr_from_words(rw.addr_to_words(addr)) == addr


def test_words_match_kernel_layout() -> None:
    # CRIU copies the kernel's __be32 into a u32: the bytes are the address in order.
    assert struct.pack("=I", rw.addr_to_words(A4)[0]) == A4.packed
    assert b"".join(struct.pack("=I", w) for w in rw.addr_to_words(A6)) == A6.packed


def _files_img(path: Path, entries: list[object]) -> None:
    magic = rw._magics()
    header = struct.pack("<II", magic["IMG_COMMON"], magic["FILES"])
    rw.write_entries(path, header, [e.SerializeToString() for e in entries])  # type: ignore[attr-defined]


def _inet_entry(fid: int, state: int, src: object, dst: object | None) -> object:
    pb = rw._pb()
    fe = pb.file_entry()
    fe.type = 4  # INETSK
    fe.id = fid
    isk = fe.isk
    isk.id, isk.ino, isk.family = fid, 1000 + fid, 2 if src.version == 4 else 10  # type: ignore[attr-defined]
    isk.type, isk.proto, isk.state = STREAM, 6, state
    isk.src_port, isk.dst_port, isk.flags, isk.backlog = 8080, 0 if dst is None else 5555, 2, 64
    isk.src_addr.extend(rw.addr_to_words(src))  # type: ignore[arg-type]
    if dst is not None:
        isk.dst_addr.extend(rw.addr_to_words(dst))  # type: ignore[arg-type]
    isk.fown.uid = isk.fown.euid = isk.fown.signum = isk.fown.pid_type = isk.fown.pid = 0
    isk.opts.so_sndbuf = isk.opts.so_rcvbuf = 4096
    isk.opts.so_snd_tmo_sec = isk.opts.so_snd_tmo_usec = 0
    isk.opts.so_rcv_tmo_sec = isk.opts.so_rcv_tmo_usec = 0
    return fe


def test_files_img_rewritten_in_place(tmp_path: Path) -> None:
    pb = rw._pb()
    reg = pb.file_entry()
    reg.type, reg.id = 1, 9  # a regular file entry passes through untouched
    reg.reg.id, reg.reg.flags, reg.reg.pos, reg.reg.name = 9, 0, 0, "/etc/hosts"
    reg.reg.fown.uid = reg.reg.fown.euid = reg.reg.fown.signum = 0
    reg.reg.fown.pid_type = reg.reg.fown.pid = 0
    _files_img(
        tmp_path / "files.img",
        [
            _inet_entry(1, rw.TCP_LISTEN, A4, None),
            reg,
            _inet_entry(2, rw.TCP_ESTABLISHED, A4, PEER4),
            _inet_entry(3, rw.TCP_LISTEN, A6, None),
        ],
    )
    before = (tmp_path / "files.img").read_bytes()
    changes = rw.rewrite_image_dir(tmp_path, RULES)
    assert {(c.ino, c.field, str(c.new)) for c in changes} == {
        (1001, "src", "0.0.0.0"), (1002, "src", str(B4)), (1003, "src", "::")}  # fmt: skip
    assert [(ino, state, str(a)) for ino, state, a, _ in rw.list_inet_sockets(tmp_path)] == [
        (1001, rw.TCP_LISTEN, "0.0.0.0"),
        (1002, rw.TCP_ESTABLISHED, str(B4)),
        (1003, rw.TCP_LISTEN, "::"),
    ]
    after = (tmp_path / "files.img").read_bytes()
    assert after[:8] == before[:8]  # magic kept
    entries = rw.read_entries(tmp_path / "files.img")[1]
    kept = pb.file_entry()
    kept.ParseFromString(entries[1])
    assert kept.reg.name == "/etc/hosts"
    # Nothing to do: the file is not rewritten at all.
    assert rw.rewrite_image_dir(tmp_path, ()) == []


def test_truncated_image_is_typed(tmp_path: Path) -> None:
    _files_img(tmp_path / "files.img", [_inet_entry(1, rw.TCP_LISTEN, A4, None)])
    p = tmp_path / "files.img"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ImageCorrupt, match="cut"):
        rw.rewrite_image_dir(tmp_path, RULES)


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        (["198.18.1.2"], ["198.18.2.2"], [(A4, B4)]),
        (["198.18.1.2", "fd0c:1::2"], ["fd0c:2::2", "198.18.2.2"], [(A4, B4), (A6, B6)]),
        (["198.18.1.2"], ["198.18.1.2"], []),  # same pod IP: nothing to do
        # no family in common: listeners can still go to the wildcard
        (["198.18.1.2"], ["fd0c:2::2"], [(A4, W4)]),
        ([], ["198.18.2.2"], []),  # an image that recorded no address
    ],
)
def test_rewrites_between_pairs_by_family(
    old: list[str], new: list[str], want: list[tuple[object, object]]
) -> None:
    assert [(r.old, r.new) for r in rw.rewrites_between(old, new)] == want


@pytest.mark.parametrize(
    ("listeners", "established", "want"),
    [
        (False, False, []),
        (True, False, [("listen", "src", A4, W4)]),
        (False, True, [("conn", "src", A4, B4)]),
        (True, True, [("listen", "src", A4, W4), ("conn", "src", A4, B4)]),
    ],
)  # fmt: skip
def test_rewrites_apply_only_the_kinds_asked_for(
    listeners: bool, established: bool, want: list[tuple[str, str, object, object]]
) -> None:
    """rewrite-listener / rewrite-established-addresses-containers each turn on one kind."""
    rules = rw.rewrites_between(
        ["198.18.1.2"], ["198.18.2.2"], listeners=listeners, established=established
    )
    got = [("listen", c.field, c.old, c.new)
           for c in rw.rewrite_socket(1, STREAM, rw.TCP_LISTEN, A4, None, rules)]
    got += [("conn", c.field, c.old, c.new)
            for c in rw.rewrite_socket(2, STREAM, rw.TCP_ESTABLISHED, A4, PEER4, rules)]
    assert got == want


def test_listener_only_pair_never_gives_a_connection_the_wildcard() -> None:
    (rule,) = rw.rewrites_between(["198.18.1.2"], ["fd0c:2::2"])
    assert (rule.listeners, rule.established) == (True, False)
    assert rw.rewrite_socket(2, STREAM, rw.TCP_ESTABLISHED, A4, A4, (rule,)) == []
    assert rw.rewrites_between(["198.18.1.2"], ["fd0c:2::2"], listeners=False) == ()
