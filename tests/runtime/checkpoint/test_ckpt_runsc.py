"""runsc (gVisor) against the real engine: the whole sandbox is checkpointed.

Debian's runsc (20221219) cannot set up sandbox networking on this kernel (its
root-namespace check misfires), so the sandbox runs with --network=none and
the client speaks to the server from inside the sandbox (`runsc exec`).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from architect.runtime.checkpoint import (
    AddressRewrite,
    Container,
    ImageCorrupt,
    ImageMismatch,
    ImageTruncated,
    RestoreFailed,
    RestoreOptions,
    Scope,
)
from architect.runtime.checkpoint import image as image_mod
from architect.runtime.checkpoint.runsc import RunscBackend

from .ckpt_lab import make_bundle, memory_cgroup_bytes, pid_alive, sh, start, wait_until

pytestmark = pytest.mark.root
FLAGS = ("--network=none",)
MIB = 1 << 20


def _exec(root: Path, cid: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("runsc", "--root", str(root), *FLAGS, "exec", cid, *argv, timeout=60, check=False)


def _get(root: Path, cid: str) -> str:
    done = _exec(root, cid, "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/count")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _listening(root: Path, cid: str) -> bool:
    done = _exec(root, cid, "/bin/busybox", "netstat", "-ltn")
    return done.returncode == 0 and "127.0.0.1:8080" in done.stdout


def _has(root: Path, cid: str) -> bool:
    return sh("runsc", "--root", str(root), "state", cid, check=False).returncode == 0


def _launch(
    tmp_path: Path,
    server_bin: Path,
    root: Path,
    cid: str,
    mem_mib: int = 8,
    mounts: dict[str, Path] | None = None,
    empty_dirs: tuple[Path, ...] = (),
) -> tuple[Container, int, str]:
    # runsc's control socket is named after the id machine-wide: make it unique.
    cid = f"{cid}-{secrets.token_hex(3)}"
    cg = f"/architect-test/{cid}"
    bundle = make_bundle(
        tmp_path / f"bundle-{cid}", server_bin, ["/server", "127.0.0.1", "8080", str(mem_mib)],
        None, mounts=mounts, cgroups_path=cg,
    )  # fmt: skip
    pid = start("runsc", root, cid, bundle, *FLAGS)
    assert wait_until(lambda: _listening(root, cid), 30), "server never listened"
    return Container(cid, bundle, root, "5d8f7c", empty_dirs), pid, cg


async def test_sandbox_checkpoint_frees_it_restore_continues_counter(
    tmp_path: Path, server_bin: Path, runsc_root: Path
) -> None:
    c, pid, cg = _launch(tmp_path, server_bin, runsc_root, "gv", mem_mib=64)
    assert [_get(runsc_root, c.id) for _ in range(2)] == ["1", "2"]
    used = memory_cgroup_bytes(cg)
    assert used is not None and used >= 64 * MIB

    b = RunscBackend(flags=FLAGS)
    m = await b.checkpoint(c, tmp_path / "img")
    assert m.backend == "runsc" and m.scope is Scope.SANDBOX
    assert "runsc version" in m.backend_version
    assert m.memory_bytes > 0 and m.payload.size > 0
    assert wait_until(lambda: not pid_alive(pid), 10)
    assert not _has(runsc_root, c.id)
    assert (memory_cgroup_bytes(cg) or 0) < 4 * MIB

    r = await b.restore(c, tmp_path / "img")
    assert pid_alive(r.pid)
    assert _get(runsc_root, c.id) == "3"  # the counter lived only in sandbox memory


async def test_sandbox_empty_dir_travels(
    tmp_path: Path, server_bin: Path, runsc_root: Path
) -> None:
    data = tmp_path / "emptydir"
    (data / "d").mkdir(parents=True)
    (data / "d" / "f.txt").write_text("kept\n")
    c, _, _ = _launch(
        tmp_path, server_bin, runsc_root, "gved", mounts={"/data": data}, empty_dirs=(data,)
    )
    done = _exec(runsc_root, c.id, "/bin/busybox", "sh", "-c", "echo inside > /data/in.txt")
    assert done.returncode == 0, done.stderr
    b = RunscBackend(flags=FLAGS)
    await b.checkpoint(c, tmp_path / "img")
    shutil.rmtree(data)
    data.mkdir()
    await b.restore(c, tmp_path / "img")
    assert (data / "d" / "f.txt").read_text() == "kept\n"
    assert (data / "in.txt").read_text() == "inside\n"
    assert _exec(runsc_root, c.id, "/bin/busybox", "cat", "/data/in.txt").stdout == "inside\n"


async def test_sandbox_bad_images_fail_cleanly(
    tmp_path: Path, server_bin: Path, runsc_root: Path
) -> None:
    c, _, _ = _launch(tmp_path, server_bin, runsc_root, "gvbad")
    assert _get(runsc_root, c.id) == "1"
    b = RunscBackend(flags=FLAGS)
    good = tmp_path / "good"
    await b.checkpoint(c, good)

    def payload(d: Path) -> Path:
        name: str = json.loads((d / "manifest.json").read_text())["payload"]["file"]
        return d / name

    flipped = tmp_path / "flipped"
    shutil.copytree(good, flipped)
    data = bytearray(payload(flipped).read_bytes())
    data[len(data) // 3] ^= 1
    payload(flipped).write_bytes(bytes(data))
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    payload(truncated).write_bytes(payload(truncated).read_bytes()[:100])
    # An image of the other backend is refused before runsc is asked.
    other = tmp_path / "other"
    shutil.copytree(good, other)
    (other / "manifest.json").write_text(
        (other / "manifest.json").read_text().replace('"runsc"', '"runc-criu"')
    )
    # Digests fine but gVisor's state file is garbage: runsc itself refuses.
    unpacked = tmp_path / "unpacked"
    m = image_mod.unpack(good, unpacked)
    state = next((unpacked / "engine").iterdir())
    state.write_bytes(b"not a gVisor state file" * 100)
    forged = tmp_path / "forged"
    image_mod.pack(
        forged, unpacked / "engine", (), backend=m.backend, backend_version=m.backend_version,
        scope=m.scope, container=m.container, pod_template_hash="", memory_bytes=0,
    )  # fmt: skip

    cases: list[tuple[Path, type[Exception]]] = [
        (flipped, ImageCorrupt), (truncated, ImageTruncated), (other, ImageMismatch),
        (forged, RestoreFailed),
    ]  # fmt: skip
    for image, error in cases:
        with pytest.raises(error):
            await RunscBackend(flags=FLAGS, timeout=60).restore(c, image)
        assert not _has(runsc_root, c.id), image.name
    rw = AddressRewrite(ipaddress.ip_address("198.18.1.2"), ipaddress.ip_address("198.18.2.2"))
    with pytest.raises(RestoreFailed, match="cannot rewrite"):
        await b.restore(c, good, RestoreOptions(rewrites=(rw,)))
    assert not _has(runsc_root, c.id)

    await b.restore(c, good)
    assert _get(runsc_root, c.id) == "2"
