"""runc + CRIU restoring a node-local (directory layout) image where it lies.

A wake restores straight from the hibernation image: verified in place (files
the backend sealed at the checkpoint are not hashed again), never copied. The
engine must leave the image as it found it, a tampered image must be refused
before the engine runs, and an engine failure must leave the image whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from architect.runtime.checkpoint import CheckpointOptions, ImageCorrupt, RestoreFailed
from architect.runtime.checkpoint import image as image_mod
from architect.runtime.checkpoint.runc import RuncCriuBackend

from .ckpt_lab import Lab, forge_unrestorable
from .test_ckpt_runc import _answers, _flip_middle, _launch, _runc_has

pytestmark = pytest.mark.root
DIR = CheckpointOptions(compression="dir")


def _pages(image: Path) -> Path:
    return max((image / "payload" / "engine").glob("pages-*.img"), key=lambda p: p.stat().st_size)


async def test_wake_restores_in_place_and_leaves_the_image_as_it_was(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "ip", pod.ip4, mem_mib=16)
    assert lab.get(pod.ip4) == "1"
    b = RuncCriuBackend()
    img = tmp_path / "img"
    m = await b.checkpoint(c, img, DIR)
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
    await b.restore(c, img)
    assert lab.get(pod.ip4) == "3"


@pytest.mark.parametrize("seal", [True, False], ids=["sealed", "new-backend"])
async def test_tampered_node_local_image_is_refused_before_the_engine(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path, seal: bool
) -> None:
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "tamper", pod.ip4)
    assert lab.get(pod.ip4) == "1"
    b = RuncCriuBackend()
    img = tmp_path / "img"
    await b.checkpoint(c, img, DIR)
    pages = _pages(img)
    st = pages.stat()
    _flip_middle(pages)
    os.utime(pages, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as sealed
    restorer = b if seal else RuncCriuBackend()  # a restarted shim has no seal
    with pytest.raises(ImageCorrupt, match="does not match its digest") as info:
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
