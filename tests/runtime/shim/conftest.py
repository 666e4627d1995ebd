"""A private containerd (own config, root, state, socket) running the shim under test.

The shim binary is a launcher written here that runs this checkout's Python
package, so the tests exercise the working tree. Nothing touches the system
containerd or the e2e cluster's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RUNTIME = "io.containerd.architect.v1"
NS = "shimtest"


def build_busybox_rootfs(dest: Path) -> Path:
    """A minimal rootfs from Debian's busybox-static."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox missing: run runtime/shim/install")
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        link = dest / "bin" / a
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    return dest


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Containerd:
    base: Path
    sock: Path
    proc: subprocess.Popen[bytes]
    shim_state: Path
    shim_run: Path

    def ctr(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        res = subprocess.run(
            ["ctr", "--address", str(self.sock), "-n", NS, *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res.stdout + (res.stderr if not check else "")

    def run_result(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.sock), "-n", NS, *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def tasks(self) -> dict[str, tuple[int, str]]:
        out = self.ctr("task", "ls")
        rows = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3:
                rows[parts[0]] = (int(parts[1]), parts[2])
        return rows

    def run_container(
        self, cid: str, rootfs: Path, script: str, annotations: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> int:
        ann = [f"--annotation={k}={v}" for k, v in (annotations or {}).items()]
        # --rootfs is a switch: the rootfs path is the first positional argument.
        self.ctr(
            "run", "-d", "--env", "PATH=/bin", "--runtime", RUNTIME, *ann, *extra,
            "--rootfs", str(rootfs), cid, "/bin/sh", "-c", script,
        )
        pid: int = wait_for(
            lambda: self.tasks().get(cid, (0, ""))[1] == "RUNNING" and self.tasks()[cid][0],
            30,
            f"{cid} RUNNING",
        )
        return pid

    def control(self, cid: str, req: dict[str, Any]) -> dict[str, Any]:
        from architect.runtime.shim.client import request

        link = self.shim_run / NS / cid
        return asyncio.run(request(link, req))

    def remove(self, cid: str) -> None:
        self.run_result("task", "kill", "-s", "SIGKILL", cid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.tasks().get(cid, (0, "STOPPED"))[1] == "STOPPED":
                break
            time.sleep(0.1)
        self.run_result("task", "rm", "-f", cid)
        self.run_result("container", "rm", cid)


@contextlib.contextmanager
def private_containerd() -> Iterator[Containerd]:
    """containerd with its own config, root, state and socket; the shim from this tree."""
    for tool in ("containerd", "ctr", "runc", "criu"):
        if shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise RuntimeError(f"{tool} missing: run runtime/shim/install")
    # Short base path: unix socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="ash-", dir="/tmp"))
    bindir = base / "bin"
    bindir.mkdir()
    launcher = bindir / "containerd-shim-architect-v1"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m architect.runtime.shim \"$@\"\n")
    launcher.chmod(0o755)
    sock = base / "c.sock"
    (base / "config.toml").write_text(
        f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"""
    )
    env = dict(os.environ)
    env["PATH"] = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["ARCHITECT_SHIM_STATE"] = str(base / "shimstate")
    env["ARCHITECT_SHIM_RUN"] = str(base / "shimrun")
    log = open(base / "containerd.log", "wb")  # noqa: SIM115 - lives as long as containerd
    proc = subprocess.Popen(
        ["containerd", "--config", str(base / "config.toml")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    cd = Containerd(base, sock, proc, base / "shimstate", base / "shimrun")
    try:
        wait_for(lambda: sock.exists(), 30, "containerd socket")
        wait_for(lambda: cd.run_result("version").returncode == 0, 30, "containerd answering")
        yield cd
    finally:
        with contextlib.suppress(Exception):  # best effort: containerd may be gone
            for cid in list(cd.tasks()):
                cd.remove(cid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        _kill_leftover_shims(base)
        subprocess.run(["umount", "-R", "-l", str(base / "state")], capture_output=True)
        if os.environ.get("ARCHITECT_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    with private_containerd() as cd:
        yield cd


def _kill_leftover_shims(base: Path) -> None:
    """Shim daemons started by this containerd that outlived it (by their env)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if f"ARCHITECT_SHIM_RUN={base}/shimrun".encode() in env.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(d.name), signal.SIGKILL)


@pytest.fixture
def rootfs(containerd: Containerd, request: pytest.FixtureRequest) -> Path:
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    return build_busybox_rootfs(containerd.base / "rootfs" / name)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
