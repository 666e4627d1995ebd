"""Verifying a node-local image where it lies, and what its seal vouches for.

A seal (inode, size, mtime, ctime of each file, taken once the checkpoint hashed
them) lets a wake skip hashing a file that nothing touched since; any write,
replacement or rename through the filesystem moves the ctime, so the file is
hashed again and a changed byte is refused as before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from architect.runtime.checkpoint import ImageCorrupt, ImageMismatch
from architect.runtime.checkpoint import image as img
from architect.runtime.checkpoint.base import MAX_SEALS, EngineBackend
from architect.runtime.checkpoint.runc import RuncCriuBackend
from architect.runtime.checkpoint.runsc import RunscBackend

from .test_ckpt_image import _dir_image, _flip, _pack


def _sealed(tmp_path: Path) -> tuple[Path, img.Seal]:
    image = _dir_image(tmp_path)
    sealed = img.seal(image, img.read_manifest(image))
    assert sealed is not None
    return image, sealed


def test_untouched_sealed_image_is_not_hashed_again(tmp_path: Path) -> None:
    image, sealed = _sealed(tmp_path)
    files = len(img.read_manifest(image).files)
    checked = img.verify_in_place(image, sealed)
    assert (checked.hashed_files, checked.hashed_bytes, checked.trusted_files) == (0, 0, files)
    assert checked.engine_dir == image / "payload" / "engine"
    assert (checked.engine_dir / "pages-1.img").is_file()


def test_without_a_seal_every_file_is_hashed(tmp_path: Path) -> None:
    image = _dir_image(tmp_path)
    m = img.read_manifest(image)
    checked = img.verify_in_place(image)
    assert checked.hashed_files == len(m.files) and checked.trusted_files == 0
    assert checked.hashed_bytes == sum(f.size for f in m.files)


def test_changed_byte_with_its_mtime_put_back_is_refused(tmp_path: Path) -> None:
    image, sealed = _sealed(tmp_path)
    pages = image / "payload" / "engine" / "pages-1.img"
    st = pages.stat()
    _flip(pages, 0.5)
    os.utime(pages, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert pages.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(ImageCorrupt, match=r"'engine/pages-1\.img' does not match its digest"):
        img.verify_in_place(image, sealed)


def test_file_replaced_by_an_equal_copy_is_hashed_and_passes(tmp_path: Path) -> None:
    image, sealed = _sealed(tmp_path)
    pages = image / "payload" / "engine" / "pages-1.img"
    copy = pages.with_name("copy")
    shutil.copy2(pages, copy)
    os.replace(copy, pages)  # another inode, same content and mtime
    checked = img.verify_in_place(image, sealed)
    assert checked.hashed_files == 1
    assert checked.trusted_files == len(img.read_manifest(image).files) - 1


def test_rewritten_manifest_voids_the_whole_seal(tmp_path: Path) -> None:
    image, sealed = _sealed(tmp_path)
    mpath = image / "manifest.json"
    mpath.write_text(json.dumps(json.loads(mpath.read_text()), indent=1))  # same content
    checked = img.verify_in_place(image, sealed)
    assert checked.trusted_files == 0
    assert checked.hashed_files == len(img.read_manifest(image).files)


def test_a_seal_of_another_image_vouches_for_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    image, _ = _sealed(tmp_path / "a")
    other = _pack(tmp_path / "b", compression="dir")
    other_seal = img.seal(other, img.read_manifest(other))
    checked = img.verify_in_place(image, other_seal)
    assert checked.trusted_files == 0


def test_stream_image_is_not_verified_in_place(tmp_path: Path) -> None:
    image = _pack(tmp_path, compression="none")
    assert img.seal(image, img.read_manifest(image)) is None
    with pytest.raises(ImageMismatch, match="is a stream"):
        img.verify_in_place(image)


def test_backend_keeps_a_bounded_book_of_seals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _dir_image(tmp_path)
    m = img.read_manifest(image)
    b = RuncCriuBackend()
    (tmp_path / "sub").mkdir()
    b._keep_seal(tmp_path / "sub" / ".." / "image", m)
    b._keep_seal(image, m)
    assert list(b._seals) == [os.path.abspath(image)]  # one image, however spelled
    assert RuncCriuBackend()._seals == {}  # per backend instance, in memory only
    monkeypatch.setattr(img, "seal", lambda d, m: img.Seal((0, 0, 0, 0, 0)))
    for i in range(MAX_SEALS + 3):
        b._keep_seal(tmp_path / f"x{i}", m)
    assert len(b._seals) == MAX_SEALS
    assert os.path.abspath(tmp_path / f"x{MAX_SEALS + 2}") in b._seals
    assert os.path.abspath(image) not in b._seals  # the oldest went first


def test_only_runc_restores_in_place() -> None:
    assert RuncCriuBackend.restores_in_place
    assert not RunscBackend.restores_in_place
    assert not EngineBackend.restores_in_place
