"""Unit tests of the OCI archive builder (pure, no containerd)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from e2e.images.oci import ImageError, ImageSpec, split_ref, write_archive


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("/bin/tool")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hello\n")
    os.utime(root / "etc" / "motd", (123456, 123456))
    return root


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out: dict[str, bytes] = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            if f is not None:
                out[m.name] = f.read()
        return out


def test_archive_is_a_consistent_oci_layout(tmp_path: Path) -> None:
    spec = ImageSpec(ref="architect.local/demo:1", cmd=("sh",))
    digest = write_archive(_rootfs(tmp_path), spec, tmp_path / "demo.tar")
    files = _members(tmp_path / "demo.tar")

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"]["io.containerd.image.name"] == "architect.local/demo:1"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "1"
    # Every blob is stored under its own digest with the size descriptors claim.
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    config_blob = files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"]
    assert manifest["config"]["size"] == len(config_blob)
    config = json.loads(config_blob)
    assert config["config"]["Cmd"] == ["sh"]
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    (layer_desc,) = manifest["layers"]
    layer = files[f"blobs/sha256/{layer_desc['digest'].split(':')[1]}"]
    assert layer_desc["size"] == len(layer)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"bin", "bin/alias", "bin/tool", "etc", "etc/motd"}
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "/bin/tool"
    assert members["bin/tool"].mode & 0o111
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def test_same_rootfs_gives_same_digest(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    spec = ImageSpec(ref="architect.local/demo:1")
    first = write_archive(root, spec, tmp_path / "a.tar")
    os.utime(root / "etc" / "motd", (999, 999))  # times must not matter
    assert write_archive(root, spec, tmp_path / "b.tar") == first
    (root / "etc" / "motd").write_text("changed\n")
    assert write_archive(root, spec, tmp_path / "c.tar") != first


@pytest.mark.parametrize(
    ("ref", "problem"),
    [("busybox", "tag"), ("busybox:1", "registry domain"), ("architect.local/x", "tag"),
     ("architect.local/x:", "tag")],
)
def test_bad_references_are_refused_with_the_reason(ref: str, problem: str) -> None:
    with pytest.raises(ImageError, match=problem):
        split_ref(ref)


def test_missing_rootfs_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a directory"):
        write_archive(tmp_path / "nope", ImageSpec(ref="architect.local/x:1"), tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
