"""runc + CRIU against the real engines, in namespaces the tests create."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from architect.runtime.checkpoint import (
    AddressRewrite,
    CheckpointOptions,
    Container,
    ContainerNotFound,
    ImageCorrupt,
    ImageEmpty,
    ImageError,
    ImageMismatch,
    ImageMissing,
    ImageTruncated,
    RestoreFailed,
    RestoreOptions,
)
from architect.runtime.checkpoint import image as image_mod
from architect.runtime.checkpoint.runc import RuncCriuBackend

from .ckpt_lab import (
    Lab,
    http_request,
    make_bundle,
    memory_cgroup_bytes,
    pid_alive,
    sh,
    start,
    wait_until,
    with_netns,
)

pytestmark = pytest.mark.root
MIB = 1 << 20


def _answers(lab: Lab, host: str) -> bool:
    return lab.accepts(host)


def _runc_has(root: Path, cid: str) -> bool:
    return sh("runc", "--root", str(root), "state", cid, check=False).returncode == 0


def _launch(
    tmp_path: Path,
    lab: Lab,
    server_bin: Path,
    runc_root: Path,
    cid: str,
    addr: str,
    mem_mib: int = 8,
    mounts: dict[str, Path] | None = None,
    empty_dirs: tuple[Path, ...] = (),
) -> tuple[Container, int]:
    pod = lab.pods[0]
    cg = f"/architect-test/{cid}-{lab.tag}"
    bundle = make_bundle(
        tmp_path / f"bundle-{cid}", server_bin, ["/server", addr, "8080", str(mem_mib)],
        pod.netns_path, mounts=mounts, cgroups_path=cg,
    )  # fmt: skip
    pid = start("runc", runc_root, cid, bundle)
    host = pod.ip6 if ":" in addr else pod.ip4
    assert wait_until(lambda: _answers(lab, host), 10), "server never answered"
    return Container(cid, bundle, runc_root, "7c9d8f", empty_dirs), pid


async def test_checkpoint_frees_process_and_memory_restore_continues_counter(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    pod = lab.add_pod()
    c, pid = _launch(tmp_path, lab, server_bin, runc_root, "web", pod.ip4, mem_mib=64)
    assert [lab.get(pod.ip4) for _ in range(3)] == ["1", "2", "3"]
    cg = json.loads((c.bundle / "config.json").read_text())["linux"]["cgroupsPath"]
    used = memory_cgroup_bytes(cg)
    assert used is not None and used >= 64 * MIB

    b = RuncCriuBackend()
    m = await b.checkpoint(c, tmp_path / "img")

    assert wait_until(lambda: not pid_alive(pid), 5)
    assert not _runc_has(runc_root, "web")
    # The memory went with the cgroup (or the cgroup holds next to nothing).
    assert (memory_cgroup_bytes(cg) or 0) < 4 * MIB
    assert m.backend == "runc-criu" and "criu 4.1" in m.backend_version
    assert m.container == "web" and m.pod_template_hash == "7c9d8f"
    assert m.memory_bytes >= 64 * MIB
    assert b.describe(tmp_path / "img") == m == b.describe(tmp_path / "img", verify=True)

    r = await b.restore(c, tmp_path / "img")
    assert pid_alive(r.pid) and r.pid != pid
    assert lab.get(pod.ip4) == "4"  # the counter lived only in memory
    assert (memory_cgroup_bytes(cg) or 0) >= 64 * MIB


async def test_leave_running_keeps_serving(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    pod = lab.add_pod()
    c, pid = _launch(tmp_path, lab, server_bin, runc_root, "pre", pod.ip4)
    assert lab.get(pod.ip4) == "1"
    await RuncCriuBackend().checkpoint(c, tmp_path / "img", CheckpointOptions(leave_running=True))
    assert pid_alive(pid)
    assert lab.get(pod.ip4) == "2"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_listener_moves_to_another_pod_ip(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path, family: str
) -> None:
    a, b_pod = lab.add_pod(), lab.add_pod()
    old, new = (a.ip4, b_pod.ip4) if family == "ipv4" else (a.ip6, b_pod.ip6)
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "mv", old)
    assert lab.get(old) == "1"
    b = RuncCriuBackend()
    await b.checkpoint(c, tmp_path / "img")

    moved = with_netns(c.bundle, tmp_path / "bundle-b", b_pod.netns_path)
    rewrite = AddressRewrite(ipaddress.ip_address(old), ipaddress.ip_address(new))
    await b.restore(c, tmp_path / "img", RestoreOptions(rewrites=(rewrite,), bundle=moved))
    assert lab.get(new) == "2"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_established_connection_survives_move(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path, family: str
) -> None:
    """A client talks to a Service VIP that maps to the pod (see Lab.map_vip).
    The pod moves to another IP; the same TCP connection goes on."""
    a, b_pod = lab.add_pod(), lab.add_pod()
    v6 = family == "ipv6"
    vip, old, new = ("fd0c:ff::1", a.ip6, b_pod.ip6) if v6 else ("198.19.0.1", a.ip4, b_pod.ip4)
    # The server listens on the wildcard, as most pods do; the accepted
    # connection's source is the pod IP all the same.
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "tcp", "::" if v6 else "0.0.0.0")
    lab.map_vip(vip, 8080, old)
    with lab.socket(socket.AF_INET6 if v6 else socket.AF_INET) as s:
        s.connect((vip, 8080))
        assert http_request(s) == "1"
        b = RuncCriuBackend()
        m = await b.checkpoint(c, tmp_path / "img")
        assert any(f.path.startswith("engine/tcp-stream-") for f in m.files)

        lab.map_vip(vip, 8080, new)  # the Service now points at the new pod
        moved = with_netns(c.bundle, tmp_path / "bundle-b", b_pod.netns_path)
        rewrite = AddressRewrite(ipaddress.ip_address(old), ipaddress.ip_address(new))
        await b.restore(c, tmp_path / "img", RestoreOptions(rewrites=(rewrite,), bundle=moved))
        assert http_request(s) == "2"  # same socket, same connection
        assert http_request(s) == "3"


async def test_empty_dir_travels_in_image(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    lab.add_pod()
    data = tmp_path / "emptydir"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "state.bin").write_bytes(bytes(range(256)) * 1000)
    (data / "note.txt").write_text("before checkpoint\n")
    (data / "link").symlink_to("note.txt")
    c, _ = _launch(
        tmp_path, lab, server_bin, runc_root, "ed", lab.pods[0].ip4,
        mounts={"/data": data}, empty_dirs=(data,),
    )  # fmt: skip
    # The container itself writes into the volume too.
    sh("runc", "--root", str(runc_root), "exec", "ed", "/bin/busybox", "sh", "-c",
       "echo from-container > /data/inside.txt")  # fmt: skip
    b = RuncCriuBackend()
    m = await b.checkpoint(c, tmp_path / "img")
    assert m.empty_dirs == (str(data),)
    # The replacement pod starts with a fresh, empty emptyDir.
    shutil.rmtree(data)
    data.mkdir()
    (data / "other").write_text("written by another container")
    await b.restore(c, tmp_path / "img")
    assert (data / "sub" / "state.bin").read_bytes() == bytes(range(256)) * 1000
    assert (data / "note.txt").read_text() == "before checkpoint\n"
    assert (data / "link").is_symlink() and (data / "link").read_text() == "before checkpoint\n"
    assert (data / "inside.txt").read_text() == "from-container\n"
    # Never deleted: the volume's other entries are someone else's writes.
    assert (data / "other").read_text() == "written by another container"
    done = sh("runc", "--root", str(runc_root), "exec", "ed", "/bin/busybox", "cat",
              "/data/inside.txt")  # fmt: skip
    assert done.stdout == "from-container\n"


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _corruptions() -> dict[str, tuple[type[ImageError], object]]:
    def payload(d: Path) -> Path:
        name: str = json.loads((d / "manifest.json").read_text())["payload"]["file"]
        return d / name

    return {
        "flipped-byte": (ImageCorrupt, lambda d: _flip_middle(payload(d))),
        "truncated": (ImageTruncated, lambda d: payload(d).write_bytes(
            payload(d).read_bytes()[:-4096])),
        "empty-payload": (ImageEmpty, lambda d: payload(d).write_bytes(b"")),
        "empty-manifest": (ImageEmpty, lambda d: (d / "manifest.json").write_text("")),
        "bad-json": (ImageCorrupt, lambda d: (d / "manifest.json").write_text("{nope")),
        "no-manifest": (ImageMissing, lambda d: (d / "manifest.json").unlink()),
        "no-payload": (ImageMissing, lambda d: payload(d).unlink()),
        "missing-dir": (ImageMissing, lambda d: shutil.rmtree(d)),
        "wrong-backend": (ImageMismatch, lambda d: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace('"runc-criu"', '"runsc"'))),
    }  # fmt: skip


async def test_each_corrupt_image_fails_cleanly_then_good_image_restores(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "bad", pod.ip4)
    assert lab.get(pod.ip4) == "1"
    b = RuncCriuBackend()
    good = tmp_path / "good"
    await b.checkpoint(c, good)
    for kind, (error, corrupt) in _corruptions().items():
        bad = tmp_path / f"bad-{kind}"
        shutil.copytree(good, bad)
        assert callable(corrupt)
        corrupt(bad)
        with pytest.raises(error) as info:
            await b.restore(c, bad)
        assert str(bad) in str(info.value), kind  # the error names the image
        assert not _runc_has(runc_root, "bad"), kind
        assert not _answers(lab, pod.ip4), kind
        assert not list(tmp_path.glob(".bad-*restore*")), kind  # no scratch left
    await b.restore(c, good)
    assert lab.get(pod.ip4) == "2"


@pytest.mark.parametrize("forgery", ["garbage-pstree", "half-pages"])
async def test_engine_rejects_image_no_half_restored_container(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path, forgery: str
) -> None:
    """Digests fine, content wrong for CRIU: RestoreFailed and nothing left running.

    Half a pages file makes CRIU's restorer spin forever: the backend's timeout
    must kill the engine's whole process group and the container's cgroup."""
    pod = lab.add_pod()
    c, _ = _launch(tmp_path, lab, server_bin, runc_root, "half", pod.ip4)
    good = tmp_path / "good"
    await RuncCriuBackend().checkpoint(c, good)
    unpacked = tmp_path / "unpacked"
    m = image_mod.unpack(good, unpacked)
    engine = unpacked / "engine"
    if forgery == "garbage-pstree":
        (engine / "pstree.img").write_bytes(b"\x00garbage" * 10)
    else:
        pages = sorted(engine.glob("pages-*.img"))[0]
        pages.write_bytes(pages.read_bytes()[: pages.stat().st_size // 2])
    forged = tmp_path / "forged"
    image_mod.pack(
        forged, engine, (), backend=m.backend, backend_version=m.backend_version,
        scope=m.scope, container=m.container, pod_template_hash="", memory_bytes=0,
    )  # fmt: skip
    b = RuncCriuBackend(timeout=15)
    with pytest.raises(RestoreFailed) as info:
        await b.restore(c, forged)
    assert "restore failed" in str(info.value) and info.value.log
    assert not _runc_has(runc_root, "half")
    cg = json.loads((c.bundle / "config.json").read_text())["linux"]["cgroupsPath"]
    assert memory_cgroup_bytes(cg) is None  # the cgroup is gone, not just emptied
    assert wait_until(lambda: sh("pgrep", "-f", str(tmp_path), check=False).returncode != 0, 10)
    await b.restore(c, good)
    assert lab.get(pod.ip4) == "1"


async def test_checkpoint_of_unknown_container_is_typed(tmp_path: Path, runc_root: Path) -> None:
    c = Container("nope", tmp_path, runc_root)
    with pytest.raises(ContainerNotFound, match="nope"):
        await RuncCriuBackend().checkpoint(c, tmp_path / "img")
    assert not (tmp_path / "img").exists()


async def test_socket_family_is_checked(tmp_path: Path) -> None:
    rw = AddressRewrite(ipaddress.ip_address("198.18.1.2"), ipaddress.ip_address("fd0c:1::2"))
    c = Container("x", tmp_path)
    with pytest.raises(Exception, match="families differ"):
        await RuncCriuBackend().restore(c, tmp_path / "img", RestoreOptions(rewrites=(rw,)))


async def test_pipe_stdio_is_handed_to_restored_container(
    tmp_path: Path, lab: Lab, server_bin: Path, runc_root: Path
) -> None:
    """A container whose stdout is a pipe (as under containerd) writes, after
    restore, into the pipe the caller passes in RestoreOptions.stdio."""
    pod = lab.add_pod()
    script = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"
    bundle = make_bundle(
        tmp_path / "bundle-log", server_bin, ["/bin/busybox", "sh", "-c", script],
        pod.netns_path, cgroups_path=f"/architect-test/log-{lab.tag}",
    )  # fmt: skip
    r1, w1 = os.pipe()
    subprocess.run(
        ["runc", "--root", str(runc_root), "run", "--detach", "--bundle", str(bundle), "log"],
        stdin=subprocess.DEVNULL, stdout=w1, stderr=w1, check=True, timeout=60,
    )  # fmt: skip
    os.close(w1)
    first = _read_numbers(r1, 3)
    c = Container("log", bundle, runc_root)
    b = RuncCriuBackend()
    await b.checkpoint(c, tmp_path / "img")
    last_before = max(_read_numbers(r1, 0) + first)  # drain what was written before
    os.close(r1)

    r2, w2 = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        await b.restore(c, tmp_path / "img", RestoreOptions(stdio=(null, w2, w2)))
    finally:
        os.close(w2)
        os.close(null)
    after = _read_numbers(r2, 3)
    os.close(r2)
    # The shell's counter went on from where it was: its memory came back.
    assert after[0] == last_before + 1, (last_before, after)


def _read_numbers(fd: int, want: int, timeout: float = 10) -> list[int]:
    """Read lines of integers from ``fd`` until ``want`` came (0: what is there now)."""
    os.set_blocking(fd, False)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                chunk = b""
            if not chunk and not want:
                break
            data += chunk
        elif not want:
            break
        if want and data.count(b"\n") >= want:
            break
    return [int(x) for x in data.split()]
