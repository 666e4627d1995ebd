"""Build single-layer OCI image archives from a root filesystem directory.

Pure core (deterministic layer tar, config, manifest, index) plus `write_archive`,
which lays them out as an OCI image-layout tar that `ctr images import` accepts.
Reproducible on purpose: the same rootfs gives the same digests, so a cached
archive can be compared and re-imported without surprises.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


class ImageError(Exception):
    """A user-facing failure: bad reference, missing rootfs, ..."""


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image's config besides its layer."""

    ref: str  # full name, e.g. architect.local/busybox:1.35
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


def split_ref(ref: str) -> tuple[str, str]:
    """`registry/name:tag` -> (`registry/name`, `tag`); a tag is required."""
    name, sep, tag = ref.rpartition(":")
    if not sep or not name or not tag or "/" in tag:
        raise ImageError(f"image reference {ref!r}: needs an explicit ':tag'")
    if "/" not in name or "." not in name.split("/", 1)[0]:
        # A domain keeps containerd from expanding it to docker.io/library/...
        raise ImageError(f"image reference {ref!r}: needs a registry domain, e.g. architect.local/")
    return name, tag


def _walk(root: Path) -> Iterator[Path]:
    """Every path under root in sorted order, parents before children."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            yield base / name


def write_layer(root: Path, out: BinaryIO) -> str:
    """Write root as an uncompressed, reproducible layer tar; return its sha256 hex.

    Owners are root, times are zero: the rootfs is assembled by this project, so
    nothing in it belongs to a user of the build machine.
    """
    if not root.is_dir():
        raise ImageError(f"rootfs {root}: not a directory")
    hasher = _HashingWriter(out)
    with tarfile.open(fileobj=hasher, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.pax_headers = {}
            if info.isreg():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir() or info.issym() or info.islnk() or stat.S_ISFIFO(info.mode):
                tar.addfile(info)
            # Device nodes and sockets are skipped: the runtime mounts /dev itself.
    return hasher.hexdigest()


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._hash.update(data)
        self._out.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_config(spec: ImageSpec, layer_digest: str, arch: str = "amd64") -> dict[str, Any]:
    return layered_image_config(spec, [layer_digest], arch)


def layered_image_config(
    spec: ImageSpec, layer_digests: Sequence[str], arch: str = "amd64"
) -> dict[str, Any]:
    """Config of an image whose uncompressed layers have these digests, bottom first."""
    config: dict[str, Any] = {"Env": list(spec.env), "WorkingDir": spec.workdir}
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.labels:
        config["Labels"] = dict(spec.labels)
    return {
        "architecture": arch,
        "os": "linux",
        "config": config,
        # Uncompressed layers: each diff ID is the layer's digest.
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in layer_digests]},
        "history": [{"created_by": "architect e2e/images"}],
    }


def descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}",
        "size": len(blob),
    }


def manifest(config_blob: bytes, layer_digest: str, layer_size: int) -> dict[str, Any]:
    return layered_manifest(config_blob, [(layer_digest, layer_size)])


def layered_manifest(config_blob: bytes, layers: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Manifest of (digest, size) layers, bottom first."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config_blob),
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": f"sha256:{digest}", "size": size}
            for digest, size in layers
        ],
    }


def index(spec: ImageSpec, manifest_blob: bytes) -> dict[str, Any]:
    _, tag = split_ref(spec.ref)
    desc = descriptor(MEDIA_MANIFEST, manifest_blob)
    # containerd names the imported image from io.containerd.image.name; the OCI
    # ref name is there for other tools reading the layout.
    desc["annotations"] = {
        "io.containerd.image.name": spec.ref,
        "org.opencontainers.image.ref.name": tag,
    }
    desc["platform"] = {"architecture": "amd64", "os": "linux"}
    return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [desc]}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(rootfs: Path, spec: ImageSpec, out: Path) -> str:
    """Build the OCI archive of rootfs at out (atomically); return the manifest digest."""
    split_ref(spec.ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    layer_tmp = out.with_name(out.name + ".layer.tmp")
    try:
        with layer_tmp.open("wb") as fh:
            layer_digest = write_layer(rootfs, fh)
        return write_layered_archive([(layer_tmp, layer_digest)], spec, out)
    finally:
        layer_tmp.unlink(missing_ok=True)


def write_layered_archive(layers: Sequence[tuple[Path, str]], spec: ImageSpec, out: Path) -> str:
    """OCI archive at out (atomically) of (layer tar, sha256 hex) layers, bottom first.

    Layers shared with other images keep their digests, so containerd stores
    them once. Returns the manifest digest.
    """
    split_ref(spec.ref)
    if not layers:
        raise ImageError(f"image {spec.ref}: no layers")
    out.parent.mkdir(parents=True, exist_ok=True)
    archive_tmp = out.with_name(out.name + ".tmp")
    try:
        sized = [(digest, path.stat().st_size) for path, digest in layers]
        config_blob = _canonical(layered_image_config(spec, [d for d, _ in sized]))
        manifest_blob = _canonical(layered_manifest(config_blob, sized))
        index_blob = _canonical(index(spec, manifest_blob))
        with tarfile.open(archive_tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", index_blob)
            for blob in (config_blob, manifest_blob):
                _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
            for path, digest in dict.fromkeys(layers):
                tar.add(str(path), arcname=f"blobs/sha256/{digest}", recursive=False)
        archive_tmp.replace(out)
    finally:
        archive_tmp.unlink(missing_ok=True)
    return f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}"
