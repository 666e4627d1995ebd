"""Push and pull a PersistentCheckpoint image through a real docker-registry on loopback.

Marked root with the other tests of installed parts: it needs Debian's
docker-registry, which e2e/cluster/install installs (no root beyond that).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from architect.runtime.shim import plan
from architect.runtime.transfer import registry as r
from e2e import registry as e2e_registry

pytestmark = pytest.mark.root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    addr = f"127.0.0.1:{_free_port()}"
    proc = e2e_registry.start(addr, tmp_path / "registry")
    try:
        yield addr, tmp_path / "registry" / "data"
    finally:
        e2e_registry.stop_proc(proc)


def _sealed(d: Path, size: int = 8 << 20, seed: bytes = b"a") -> Path:
    """A sealed image as the shim leaves it: files, manifest.json of their sha256, marks."""
    (d / "pages").mkdir(parents=True)
    files = {"checkpoint.img": os.urandom(size), "pages/0.img": seed * 4096}
    for name, data in files.items():
        (d / name).write_bytes(data)
    manifest = {"files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / plan.NAMESPACE_MARK).write_text("team-a")
    (d / plan.READY_MARK).touch()
    return d


def _pending(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / plan.PENDING_MARK).touch()
    return d


def test_push_then_pull_verifies_and_hands_out(reg: tuple[str, Path], tmp_path: Path) -> None:
    addr, _ = reg
    src = _sealed(tmp_path / "src")
    digest = plan.manifest_digest(src)
    pushed = r.push_checkpoint(src, f"{addr}/checkpoints/warm", "team-a", "warm")
    assert pushed.location == f"{addr}/checkpoints/warm:team-a.warm@{pushed.manifest_digest}"
    assert pushed.blobs_uploaded == 4  # three files and the config
    assert r.push_checkpoint(src, f"{addr}/checkpoints/warm", "team-a", "warm").blobs_uploaded == 0

    root = tmp_path / "state"
    d = _pending(plan.persistent_dir(root, "team-a", "warm"))
    r.pull_checkpoint(pushed.location, digest, d, "team-a", ["team-b"])
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["checkpoint.img", "pages", "manifest.json", plan.NAMESPACE_MARK, plan.GRANT_FILE,
         plan.READY_MARK])
    for name in ("checkpoint.img", "pages/0.img", "manifest.json"):
        assert (d / name).read_bytes() == (src / name).read_bytes()
    ann = {plan.ANN_PERSISTENT: "team-a/warm", plan.CRI_SANDBOX_NAMESPACE: "team-b"}
    p = plan.plan_start("runsc", ann, root, None)
    assert (p.path, p.image) == ("restore", d)
    denied = plan.plan_start("runsc", {**ann, plan.CRI_SANDBOX_NAMESPACE: "team-c"}, root, None)
    assert denied.path == "fresh" and "does not list namespace team-c" in denied.reason


def test_missing_tag_moved_tag_and_bad_blob_leave_no_image(
        reg: tuple[str, Path], tmp_path: Path) -> None:
    addr, data = reg
    src = _sealed(tmp_path / "src", 1 << 20)
    digest = plan.manifest_digest(src)
    pushed = r.push_checkpoint(src, f"{addr}/c/warm:v1", "team-a", "warm")

    def pull_fails(location: str, n: int) -> str:
        d = _pending(tmp_path / f"dst{n}")
        with pytest.raises(r.RegistryError) as e:
            r.pull_checkpoint(location, digest, d, "team-a", [])
        assert sorted(p.name for p in d.iterdir()) == [plan.UNAVAILABLE_MARK]
        assert plan.unavailable(d).startswith("pull from the registry failed: ")
        return str(e.value)

    missing = pushed.location.replace(":v1@", ":v2@")
    assert "tag v2 not found" in pull_fails(missing, 1)

    other = _sealed(tmp_path / "other", 1 << 20, b"b")
    r.push_checkpoint(other, f"{addr}/c/warm:v1", "team-a", "warm")  # the tag moves
    assert "digest mismatch: the tag names manifest" in pull_fails(pushed.location, 2)

    # The registry's stored blob rots (same size): the pull's own hash catches it.
    r.push_checkpoint(src, f"{addr}/c/warm:v1", "team-a", "warm")
    hexd = hashlib.sha256((src / "checkpoint.img").read_bytes()).hexdigest()
    blob = data / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 0xFF
    blob.write_bytes(bytes(raw))
    assert f"blob sha256:{hexd}: digest mismatch: got" in pull_fails(pushed.location, 3)

    raw_manifest = r.Registry(addr).pull_manifest(r.parse_reference(pushed.location))
    with pytest.raises(r.RegistryError, match=r"digest mismatch: the image.s manifest\.json"):
        r.check_manifest(raw_manifest, "", "sha256:" + "0" * 64)


def test_an_unreachable_registry_is_an_error(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{_free_port()}"  # nothing listens
    src = _sealed(tmp_path / "src", 4096)
    t0 = time.monotonic()
    with pytest.raises(r.RegistryError, match=f"registry {addr}"):
        r.push_checkpoint(src, f"{addr}/c/warm", "team-a", "warm")
    assert time.monotonic() - t0 < 10
