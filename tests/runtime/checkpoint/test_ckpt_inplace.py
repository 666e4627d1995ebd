"""runc + CRIU restoring a node-local (directory layout) image where it lies.

A wake restores straight from the hibernation image: verified in place (files
the backend sealed at the checkpoint are not hashed again), never copied. The
engine must leave the image as it found it, a tampered image must be refused
before the engine runs, and an engine failure must leave the image whole."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from architect.runtime.checkpoint import (
    CheckpointOptions,
    FileInfo,
    ImageCorrupt,
    RestoreFailed,
)
from architect.runtime.checkpoint import image as image_mod
from architect.runtime.checkpoint.runc import RuncCriuBackend

from .ckpt_lab import Lab, forge_unrestorable
from .test_ckpt_runc import _answers, _launch, _runc_has

pytestmark = pytest.mark.root
DIR = CheckpointOptions(compression="dir")
# Big enough that CRIU's pages file is hashed in chunks (image.chunk_size_for: a
# file of 2 * HASH_CHUNK = 16 MiB or more) with room: 32 MiB of ballast dumps a
# 33.6 MB pages file, 5 chunks. With 16 MiB it was 16.84 MB, chunked only by the
# process's other pages; with the default 8 MiB, format 1, no chunk.
CHUNKED_MIB = 32


def _pages(image: Path) -> Path:
    return max((image / "payload" / "engine").glob("pages-*.img"), key=lambda p: p.stat().st_size)


def _assert_chunked(img: Path) -> FileInfo:
    """The manifest on disk is format 2 and the pages file is one of its chunked
    files; that file's entry."""
    m = image_mod.read_manifest(img)
    assert m.format_version == 2
    assert any(f.chunks for f in m.files)
    arc = _pages(img).relative_to(img / m.payload.file).as_posix()
    info = next(f for f in m.files if f.path == arc)
    assert info.chunk_size == image_mod.HASH_CHUNK and len(info.chunks) >= 3, info
    return info


def _flip_in_chunk(path: Path, info: FileInfo, k: int) -> None:
    """Flip a byte in the middle of chunk ``k``, the file's size and mtime kept."""
    st = path.stat()
    start = k * info.chunk_size
    off = start + min(info.chunk_size, info.size - start) // 2
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_wake_restores_in_place_and_leaves_the_image_as_it_was(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "ip", pod.ip4, mem_mib=CHUNKED_MIB)
    assert lab.get(pod.ip4) == "1"
    b = RuncCriuBackend()
    img = tmp_path / "img"
    m = await b.checkpoint(c, img, DIR)
    assert m == image_mod.read_manifest(img)
    _assert_chunked(img)
    assert os.path.abspath(img) in b._seals
    before = {p: p.stat().st_ctime_ns for p in img.rglob("*") if p.is_file()}
    r = await b.restore(c, img)
    assert lab.get(pod.ip4) == "2"
    assert r.details["verify_unpack"] >= 0 and r.details["engine_restore"] > 0
    # CRIU read the image and wrote nothing into it: same files, untouched.
    assert {p: p.stat().st_ctime_ns for p in img.rglob("*") if p.is_file()} == before
    assert image_mod.verify(img) == m
    assert os.path.abspath(img) not in b._seals  # a seal serves one wake
    assert not list(tmp_path.glob(".img.restore-*"))  # no scratch left
    # Hibernate again into the same path (as the shim does): a new seal, a new wake.
    shutil.rmtree(img)
    await b.checkpoint(c, img, DIR)
    _assert_chunked(img)
    await b.restore(c, img)
    assert lab.get(pod.ip4) == "3"


@pytest.mark.parametrize("seal", [True, False], ids=["sealed", "new-backend"])
async def test_tampered_node_local_image_is_refused_before_the_engine(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path, seal: bool
) -> None:
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "tamper", pod.ip4, mem_mib=CHUNKED_MIB)
    assert lab.get(pod.ip4) == "1"
    b = RuncCriuBackend()
    img = tmp_path / "img"
    await b.checkpoint(c, img, DIR)
    pages = _pages(img)
    f = _assert_chunked(img)
    _flip_in_chunk(pages, f, 1)  # not the first chunk; size and mtime as sealed
    # The flip is in chunk 1 and only there: the per-chunk digests see it there.
    [(_, _, got)] = image_mod.hash_files([(pages, f.chunk_size)])
    assert [i for i, (a, w) in enumerate(zip(got, f.chunks, strict=True)) if a != w] == [1]
    restorer = b if seal else RuncCriuBackend()  # a restarted shim has no seal
    # The in-place verifier names the file and the chunk.
    want = f"payload file '{f.path}' does not match its digest in chunk 1"
    with pytest.raises(ImageCorrupt, match=re.escape(want)) as info:
        await restorer.restore(c, img)
    assert str(img) in str(info.value)
    assert not _runc_has(runc_root, "tamper")
    assert not _answers(lab, pod.ip4)
    assert not list(tmp_path.glob(".img.restore-*"))


async def test_engine_failure_in_place_leaves_the_image_whole(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    """Digests right, content wrong for CRIU: RestoreFailed, nothing left running,
    and the image still verifies (a retry finds it as it was)."""
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "forge", pod.ip4)
    good = tmp_path / "good"
    await RuncCriuBackend().checkpoint(c, good, DIR)
    forged = forge_unrestorable(good, tmp_path)
    b = RuncCriuBackend(timeout=15)
    with pytest.raises(RestoreFailed, match="restore failed"):
        await b.restore(c, forged)
    assert not _runc_has(runc_root, "forge")
    assert image_mod.verify(forged) == image_mod.read_manifest(forged)
    await b.restore(c, good)
    assert lab.get(pod.ip4) == "1"
