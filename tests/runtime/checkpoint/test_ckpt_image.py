"""The image format on real files: pack, verify, unpack, and every way to break it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from architect.runtime.checkpoint import (
    ImageCorrupt,
    ImageEmpty,
    ImageError,
    ImageMismatch,
    ImageMissing,
    ImageTruncated,
    Scope,
)
from architect.runtime.checkpoint import image as img


def _engine(tmp_path: Path, pages: bytes) -> Path:
    d = tmp_path / "engine-src"
    d.mkdir()
    (d / "pages-1.img").write_bytes(pages)
    (d / "core-1.img").write_bytes(b"core" * 100)
    (d / "sub").mkdir()
    (d / "sub" / "x.img").write_bytes(b"")
    return d


def _pack(tmp_path: Path, pages: bytes = b"\0" * 300_000, **kw: object) -> Path:
    out = tmp_path / "image"
    img.pack(
        out, _engine(tmp_path, pages), kw.pop("empty_dirs", ()),  # type: ignore[arg-type]
        backend="runc-criu", backend_version="test", scope=Scope.CONTAINER,
        container="c1", pod_template_hash="abc", memory_bytes=len(pages),
        compression=str(kw.pop("compression", "auto")),
    )  # fmt: skip
    return out


def test_choose_compression_by_measured_ratio() -> None:
    assert img.choose_compression(b"\0" * 100_000) == "zstd"
    assert img.choose_compression(os.urandom(100_000)) == "none"
    assert img.choose_compression(b"") == "none"


@pytest.mark.parametrize("compression", ["none", "zstd", "auto", "dir"])
def test_round_trip(tmp_path: Path, compression: str) -> None:
    pages = os.urandom(50_000) + b"\0" * 200_000
    m = img.pack(
        tmp_path / "i", _engine(tmp_path, pages), (), backend="runsc", backend_version="v",
        scope=Scope.SANDBOX, container="c", pod_template_hash="h", memory_bytes=1,
        compression=compression,
    )  # fmt: skip
    assert img.read_manifest(tmp_path / "i") == m
    assert img.verify(tmp_path / "i") == m
    got = img.unpack(tmp_path / "i", tmp_path / "out")
    assert got == m
    assert (tmp_path / "out/engine/pages-1.img").read_bytes() == pages
    assert (tmp_path / "out/engine/sub/x.img").read_bytes() == b""
    assert {f.path for f in m.files} == {
        "engine/pages-1.img", "engine/core-1.img", "engine/sub/x.img"}  # fmt: skip
    if compression in ("zstd", "auto"):
        assert m.payload.compression == "zstd" and m.payload.size < m.payload.raw_size
    if compression == "dir":
        assert (tmp_path / "i" / "payload" / "engine" / "pages-1.img").read_bytes() == pages
        assert m.payload.size == m.payload.raw_size == sum(f.size for f in m.files)


def test_manifest_is_plain_json_with_digests(tmp_path: Path) -> None:
    d = json.loads((_pack(tmp_path) / "manifest.json").read_text())
    assert d["backend"] == "runc-criu" and d["scope"] == "container"
    assert len(d["payload"]["sha256"]) == 64 and d["created"].endswith("Z")
    assert all(len(f["sha256"]) == 64 for f in d["files"])


@pytest.mark.parametrize("compression", ["auto", "dir"])
def test_empty_dirs_round_trip(tmp_path: Path, compression: str) -> None:
    vol = tmp_path / "vol"
    (vol / "a" / "b").mkdir(parents=True)
    (vol / "a" / "b" / "f").write_text("deep")
    (vol / "top").write_text("top")
    os.mkfifo(vol / "fifo")
    os.symlink("a/b/f", vol / "link")
    image = _pack(tmp_path, empty_dirs=(vol,), compression=compression)
    shutil.rmtree(vol)
    vol.mkdir()
    (vol / "junk").write_text("x")
    m = img.unpack(image, tmp_path / "u")
    img.put_back_empty_dirs(tmp_path / "u", m)
    assert (vol / "a" / "b" / "f").read_text() == "deep"
    assert (vol / "top").read_text() == "top"
    assert (vol / "fifo").is_fifo()
    assert os.readlink(vol / "link") == "a/b/f"
    # Written since by someone else (another container of the pod): never deleted.
    assert (vol / "junk").read_text() == "x"


def test_put_back_replaces_same_names_and_keeps_the_rest(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "d").mkdir(parents=True)
    (vol / "d" / "old").write_text("old")
    (vol / "f").write_text("saved")
    image = _pack(tmp_path, empty_dirs=(vol,))
    target = tmp_path / "new"
    (target / "d").mkdir(parents=True)
    (target / "d" / "init").write_text("from an init container")
    (target / "f").write_text("newer")
    (target / "other").write_text("kept")
    m = img.unpack(image, tmp_path / "u")
    img.put_back_empty_dirs(tmp_path / "u", m, (target,))
    assert (target / "f").read_text() == "saved"  # the image's entry wins its name
    assert sorted(p.name for p in (target / "d").iterdir()) == ["old"]
    assert (target / "other").read_text() == "kept"


@pytest.mark.parametrize("compression", ["dir", "auto"])
def test_repack_replaces_the_empty_dirs(tmp_path: Path, compression: str) -> None:
    """A hibernation image holds no emptyDir; a migration that moves them repacks it
    with the volumes as they are then (or with none)."""
    image = _pack(tmp_path, compression="dir")
    assert img.read_manifest(image).empty_dirs == ()
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "now").write_text("at the stop")
    with_dirs = img.repack(image, tmp_path / "with", (vol,), compression)
    assert with_dirs.empty_dirs == (str(vol),)
    assert with_dirs.payload.compression == ("dir" if compression == "dir" else "zstd")
    assert (with_dirs.backend, with_dirs.container, with_dirs.pod_template_hash) == (
        "runc-criu", "c1", "abc")
    m = img.unpack(tmp_path / "with", tmp_path / "u")
    assert (tmp_path / "u" / "engine" / "core-1.img").read_bytes() == b"core" * 100
    assert (tmp_path / "u" / "emptydir" / "0" / "now").read_text() == "at the stop"
    # And back to none: the old pod's volumes must not ride along.
    assert img.repack(tmp_path / "with", tmp_path / "without", ()).empty_dirs == ()
    assert m.empty_dirs == (str(vol),)
    assert not list(tmp_path.glob(".*repack*")), "scratch left behind"


def test_place_empty_dirs_without_restoring(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("travelled")
    image = _pack(tmp_path, empty_dirs=(vol,))
    target = tmp_path / "new"
    img.place_empty_dirs(image, (target,))
    assert (target / "f").read_text() == "travelled"
    img.verify(image)  # the image itself is left whole
    with pytest.raises(ImageMismatch, match="holds 1 emptyDir"):
        img.place_empty_dirs(image, ())
    assert not list(tmp_path.glob(".*emptydirs*")), "scratch left behind"


def test_empty_dirs_go_to_the_restoring_pods_paths(tmp_path: Path) -> None:
    """A replacement pod has new emptyDir paths: the n-th volume lands in its n-th."""
    old_a, old_b = tmp_path / "old" / "a", tmp_path / "old" / "b"
    for d, text in ((old_a, "A"), (old_b, "B")):
        d.mkdir(parents=True)
        (d / "f").write_text(text)
    image = _pack(tmp_path, empty_dirs=(old_a, old_b))
    m = img.unpack(image, tmp_path / "u")
    new_a, new_b = tmp_path / "new" / "a", tmp_path / "new" / "b"
    img.put_back_empty_dirs(tmp_path / "u", m, (new_a, new_b))
    assert (new_a / "f").read_text() == "A" and (new_b / "f").read_text() == "B"
    assert (old_a / "f").read_text() == "A"  # the source pod's volume is left alone
    with pytest.raises(ImageMismatch, match="holds 2 emptyDir"):
        img.put_back_empty_dirs(tmp_path / "u", m, (new_a,))


def test_empty_dirs_put_back_across_mounts(tmp_path: Path) -> None:
    """The restoring pod's emptyDir may sit on another mount than the image
    (kubelet's pod dirs): a rename fails with EXDEV, so the tree is copied."""
    shm = Path("/dev/shm")
    if tmp_path.stat().st_dev == shm.stat().st_dev:
        pytest.fail("needs /dev/shm on another filesystem than the test's tmp dir")
    vol = tmp_path / "vol"
    (vol / "d").mkdir(parents=True)
    (vol / "d" / "f").write_text("deep")
    os.symlink("d/f", vol / "link")
    os.mkfifo(vol / "fifo")
    image = _pack(tmp_path, empty_dirs=(vol,))
    m = img.unpack(image, tmp_path / "u")
    target = Path(tempfile.mkdtemp(dir=shm))
    try:
        img.put_back_empty_dirs(tmp_path / "u", m, (target,))
        assert (target / "d" / "f").read_text() == "deep"
        assert os.readlink(target / "link") == "d/f"
        assert (target / "fifo").is_fifo()
        assert not any((tmp_path / "u" / "emptydir" / "0").iterdir())  # moved, not copied
    finally:
        shutil.rmtree(target)


def test_manifest_addresses_are_optional_and_checked(tmp_path: Path) -> None:
    image = _pack(tmp_path)
    data = json.loads((image / "manifest.json").read_text())
    assert data["addresses"] == []
    data["addresses"] = ["10.0.0.7", "fd00::7"]
    assert img.manifest_from_dict(data, "x").addresses == ("10.0.0.7", "fd00::7")
    del data["addresses"]  # images written before the field existed
    assert img.manifest_from_dict(data, "x").addresses == ()
    data["addresses"] = [7]
    with pytest.raises(ImageCorrupt, match="addresses"):
        img.manifest_from_dict(data, "x")


def _payload(image: Path) -> Path:
    name: str = json.loads((image / "manifest.json").read_text())["payload"]["file"]
    return image / name


def _flip(p: Path, at: float) -> None:
    b = bytearray(p.read_bytes())
    b[int(len(b) * at)] ^= 0x5A
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("flip-start", ImageCorrupt),
        ("flip-middle", ImageCorrupt),
        ("flip-end", ImageCorrupt),
        ("truncate", ImageTruncated),
        ("append", ImageCorrupt),
        ("empty-payload", ImageEmpty),
        ("empty-manifest", ImageEmpty),
        ("bad-json", ImageCorrupt),
        ("manifest-field-missing", ImageCorrupt),
        ("manifest-wrong-type", ImageCorrupt),
        ("file-digest", ImageCorrupt),
        ("no-manifest", ImageMissing),
        ("no-payload", ImageMissing),
        ("no-dir", ImageMissing),
    ],
)
def test_bad_image_is_typed_and_leaves_nothing(
    tmp_path: Path, kind: str, error: type[ImageError], compression: str
) -> None:
    image = _pack(tmp_path, pages=os.urandom(40_000) + b"\0" * 100_000, compression=compression)
    mpath = image / "manifest.json"
    manifest = json.loads(mpath.read_text())
    match kind:
        case "flip-start":
            _flip(_payload(image), 0.0)
        case "flip-middle":
            _flip(_payload(image), 0.5)
        case "flip-end":
            _flip(_payload(image), 0.999)
        case "truncate":
            p = _payload(image)
            p.write_bytes(p.read_bytes()[:-100])
        case "append":
            with open(_payload(image), "ab") as f:
                f.write(b"x")
        case "empty-payload":
            _payload(image).write_bytes(b"")
        case "empty-manifest":
            mpath.write_text("  \n")
        case "bad-json":
            mpath.write_text('{"format_version": 1,')
        case "manifest-field-missing":
            del manifest["payload"]["sha256"]
            mpath.write_text(json.dumps(manifest))
        case "manifest-wrong-type":
            manifest["payload"]["size"] = "12"
            mpath.write_text(json.dumps(manifest))
        case "file-digest":
            manifest["files"][0]["sha256"] = "0" * 64
            mpath.write_text(json.dumps(manifest))
        case "no-manifest":
            mpath.unlink()
        case "no-payload":
            _payload(image).unlink()
        case "no-dir":
            shutil.rmtree(image)
    with pytest.raises(error) as info:
        img.verify(image)  # the same verdict without extracting
    assert str(image) in str(info.value)
    with pytest.raises(error) as info:
        img.unpack(image, tmp_path / "out")
    assert str(image) in str(info.value)
    assert not (tmp_path / "out").exists()


def _evil_image(tmp_path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    """An image whose digests all match a hand-made (hostile) tar."""
    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "payload.tar", "w") as tar:
        build(tar)
    data = (evil / "payload.tar").read_bytes()
    good = json.loads((_pack(tmp_path) / "manifest.json").read_text())
    good["payload"].update(
        file="payload.tar", compression="none", size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), raw_size=len(data),
    )  # fmt: skip
    good["files"] = [
        {"path": "engine/link/x", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    ]
    (evil / "manifest.json").write_text(json.dumps(good))
    return evil


def test_unsafe_member_path_rejected(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    evil = _evil_image(tmp_path, lambda t: t.add(tmp_path / "x", arcname="engine/../../escape"))
    with pytest.raises(ImageCorrupt, match="unsafe member"):
        img.unpack(evil, tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_symlink_member_cannot_redirect_a_write(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "x").write_text("x")

    def build(tar: tarfile.TarFile) -> None:
        link = tarfile.TarInfo("engine/link")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        tar.add(tmp_path / "x", arcname="engine/link/x")

    evil = _evil_image(tmp_path, build)
    with pytest.raises(ImageCorrupt, match="through a symlink"):
        img.unpack(evil, tmp_path / "out")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_manifest_from_dict_names_the_field() -> None:
    with pytest.raises(ImageCorrupt, match="'backend'"):
        img.manifest_from_dict(
            {"format_version": 1, "scope": "sandbox",
             "payload": {"compression": "none", "file": "payload.tar", "size": 1,
                         "sha256": "", "raw_size": 1},
             "files": [], "empty_dirs": []},
            "here",
        )  # fmt: skip
    with pytest.raises(ImageCorrupt, match=r"format_version 3 \(this node reads 1 or 2"):
        img.manifest_from_dict({"format_version": 3}, "here")
    with pytest.raises(ImageCorrupt, match="not a JSON object"):
        img.manifest_from_dict([], "here")


def _dir_image(tmp_path: Path) -> Path:
    return _pack(tmp_path, pages=os.urandom(40_000) + b"\0" * 100_000, compression="dir")


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("flip", ImageCorrupt, "'engine/pages-1.img' does not match its digest"),
        ("truncate", ImageCorrupt, "'engine/pages-1.img' does not match its digest"),
        ("extra-file", ImageCorrupt, "'engine/extra.img' not in the manifest"),
        ("extra-top", ImageCorrupt, "unexpected entry 'junk'"),
        ("missing-file", ImageCorrupt, "payload lacks 1 file(s), first: engine/core-1.img"),
        ("file-digest", ImageCorrupt, "does not match the manifest's file list"),
        ("no-payload", ImageMissing, "payload directory payload missing"),
        ("payload-is-a-file", ImageMissing, "payload directory payload missing"),
        ("device", ImageCorrupt, "'engine/null' has an unsupported type"),
    ],
)
def test_bad_dir_image_is_typed_and_leaves_nothing(
    tmp_path: Path, kind: str, error: type[ImageError], message: str
) -> None:
    image = _dir_image(tmp_path)
    sealed = img.seal(image, img.read_manifest(image))  # as the backend keeps it
    engine = image / "payload" / "engine"
    mpath = image / "manifest.json"
    match kind:
        case "flip":
            _flip(engine / "pages-1.img", 0.5)
        case "truncate":
            p = engine / "pages-1.img"
            p.write_bytes(p.read_bytes()[:-1])
        case "extra-file":
            (engine / "extra.img").write_bytes(b"x")
        case "extra-top":
            (image / "payload" / "junk").mkdir()
        case "missing-file":
            (engine / "core-1.img").unlink()
        case "file-digest":
            manifest = json.loads(mpath.read_text())
            manifest["files"][0]["sha256"] = "0" * 64
            mpath.write_text(json.dumps(manifest))
        case "no-payload":
            shutil.rmtree(image / "payload")
        case "payload-is-a-file":
            shutil.rmtree(image / "payload")
            (image / "payload").write_bytes(b"x")
        case "device":
            os.mknod(engine / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(error, match=re.escape(message)) as info:
        img.verify(image)
    assert str(image) in str(info.value)
    with pytest.raises(error, match=re.escape(message)):
        img.unpack(image, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(error, match=re.escape(message)):  # the seal vouches for none of it
        img.verify_in_place(image, sealed)


def test_dir_image_links_the_engine_files_and_copies_on_unpack(tmp_path: Path) -> None:
    """Packing moves no bytes of the dump (hard links); unpacking copies, so the
    engine and the address rewrite never touch the image itself."""
    src = _engine(tmp_path, b"p" * 1000)
    img.pack(
        tmp_path / "i", src, (), backend="runc-criu", backend_version="t",
        scope=Scope.CONTAINER, container="c", pod_template_hash="h", memory_bytes=0,
        compression="dir",
    )  # fmt: skip
    packed = tmp_path / "i" / "payload" / "engine" / "pages-1.img"
    assert packed.stat().st_ino == (src / "pages-1.img").stat().st_ino
    img.unpack(tmp_path / "i", tmp_path / "out")
    out = tmp_path / "out" / "engine" / "pages-1.img"
    assert out.stat().st_ino != packed.stat().st_ino
    out.write_bytes(b"rewritten")
    assert img.verify(tmp_path / "i").payload.compression == "dir"



# ---------------------------------------------------------------- chunk digests


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """4 KiB hash chunks: a 40 KB pages file is chunked (10 chunks), the rest not."""
    monkeypatch.setattr(img, "HASH_CHUNK", 4096)
    return 4096


def _chunked_image(tmp_path: Path, pages: bytes) -> Path:
    return _pack(tmp_path, pages=pages, compression="dir")


def test_chunked_dir_image_round_trip(tmp_path: Path, small_chunks: int) -> None:
    pages = os.urandom(40_000)
    image = _chunked_image(tmp_path, pages)
    raw = json.loads((image / "manifest.json").read_text())
    assert raw["format_version"] == 2
    entry = next(f for f in raw["files"] if f["path"] == "engine/pages-1.img")
    want = [hashlib.sha256(pages[o : o + small_chunks]).hexdigest() for o in range(0, 40_000, 4096)]
    assert entry["chunk_size"] == small_chunks and entry["chunks"] == want
    assert entry["sha256"] == img.chunk_root(small_chunks, want)
    core = next(f for f in raw["files"] if f["path"] == "engine/core-1.img")
    assert "chunks" not in core and core["sha256"] == hashlib.sha256(b"core" * 100).hexdigest()
    assert img.verify(image).files == img.read_manifest(image).files
    assert img.verify_in_place(image).hashed_files == len(raw["files"])
    img.unpack(image, tmp_path / "out")
    assert (tmp_path / "out" / "engine" / "pages-1.img").read_bytes() == pages


def test_unchunked_images_stay_format_1(tmp_path: Path) -> None:
    """Images with no big file, and every stream, are what older nodes read."""
    for compression in ("dir", "none"):
        (tmp_path / compression).mkdir()
        image = _pack(tmp_path / compression, compression=compression)
        raw = json.loads((image / "manifest.json").read_text())
        assert raw["format_version"] == 1
        assert all(set(f) == {"path", "size", "sha256"} for f in raw["files"])
        img.verify(image)


@pytest.mark.parametrize("where", [0, 4095, 4096, 39_999])
def test_changed_byte_in_any_chunk_is_refused(
    tmp_path: Path, small_chunks: int, where: int
) -> None:
    image = _chunked_image(tmp_path, os.urandom(40_000))
    sealed = img.seal(image, img.read_manifest(image))
    p = image / "payload" / "engine" / "pages-1.img"
    data = bytearray(p.read_bytes())
    data[where] ^= 1
    p.write_bytes(bytes(data))
    message = "'engine/pages-1.img' does not match its digest"
    for check in (img.verify, lambda i: img.verify_in_place(i, sealed)):
        with pytest.raises(ImageCorrupt, match=re.escape(message)):
            check(image)
    with pytest.raises(ImageCorrupt, match=re.escape(message)):
        img.unpack(image, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", [b"", b"x"])
def test_chunked_file_of_another_length_is_refused(
    tmp_path: Path, small_chunks: int, change: bytes
) -> None:
    image = _chunked_image(tmp_path, os.urandom(40_000))
    p = image / "payload" / "engine" / "pages-1.img"
    data = p.read_bytes()
    p.write_bytes(data + change if change else data[:-1])
    with pytest.raises(ImageCorrupt, match="does not match its digest"):
        img.verify_in_place(image)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("chunk", "sha256 is not that of its chunks"),
        ("count", "lists 9 chunk(s) for 40000 bytes"),
        ("size", "chunk_size must be positive"),
        ("hex", "chunks must be sha256 hex digests"),
        ("version", "has chunks in a format 1 manifest"),
    ],
)
def test_bad_chunk_list_is_refused_by_the_manifest(
    tmp_path: Path, small_chunks: int, edit: str, message: str
) -> None:
    image = _chunked_image(tmp_path, os.urandom(40_000))
    mpath = image / "manifest.json"
    raw = json.loads(mpath.read_text())
    entry = next(f for f in raw["files"] if f["path"] == "engine/pages-1.img")
    match edit:
        case "chunk":
            entry["chunks"][3] = hashlib.sha256(b"other").hexdigest()
        case "count":
            entry["chunks"].pop()
        case "size":
            entry["chunk_size"] = 0
        case "hex":
            entry["chunks"][0] = "z" * 64
        case "version":
            raw["format_version"] = 1
    mpath.write_text(json.dumps(raw))
    with pytest.raises(ImageCorrupt, match=re.escape(message)):
        img.verify(image)


def test_parallel_hash_equals_the_streamed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(100_003)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "g").write_bytes(b"small")
    jobs = [(tmp_path / "f", 8192), (tmp_path / "g", 0), (tmp_path / "f", 0)]
    serial = [img._stream(open(p, "rb"), None, cs) for p, cs in jobs]  # noqa: SIM115
    assert serial[2] == (len(data), hashlib.sha256(data).hexdigest(), ())
    for threads in (1, 2, 4):
        monkeypatch.setattr(img, "_hash_threads", lambda t=threads: t)
        assert img.hash_files(jobs) == serial


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_stream_blocks_smaller_than_a_file_round_trip_and_log_the_split(
    tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Blocks far smaller than the file and the tar header: every boundary is crossed.
    monkeypatch.setattr(img, "STREAM_BLOCK", 4096)
    monkeypatch.setattr(img, "LOG_STREAM_BYTES", 0)
    pages = os.urandom(70_000) + b"\0" * 100_000
    caplog.set_level("INFO", logger="architect.runtime.checkpoint.image")
    m = img.pack(
        tmp_path / "i", _engine(tmp_path, pages), (), backend="runc-criu",
        backend_version="v", scope=Scope.CONTAINER, container="c", pod_template_hash="h",
        memory_bytes=1, compression=compression,
    )  # fmt: skip
    assert img.unpack(tmp_path / "i", tmp_path / "out") == m
    assert (tmp_path / "out/engine/pages-1.img").read_bytes() == pages
    packed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("packed ")]
    unpacked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unpacked ")]
    assert len(packed) == 1 and len(unpacked) == 1
    assert re.search(r" MiB in [\d.]+s \(\d+ MB/s\): cpu [\d.]+s \(user [\d.]+s, system [\d.]+s, "
                     r"\d+ page faults\), run-queue wait [\d.]+s, "
                     r"other \(I/O, GIL\) [\d.]+s$", packed[0])


def test_small_streams_log_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="architect.runtime.checkpoint.image")
    img.verify(_pack(tmp_path))
    assert not [r for r in caplog.records if r.name == "architect.runtime.checkpoint.image"]
