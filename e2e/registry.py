"""A real OCI registry for tests: Debian's docker-registry (distribution 2.8), ours.

``e2e/cluster/install`` installs the package; this starts ``docker-registry serve``
with its own config and storage (never the Debian service's), on the address
given, and waits (bounded) until ``/v2/`` answers. Plain HTTP: it listens on
loopback or the node's own address only.

    python3 -m e2e.registry start ADDR DIR   # prints the pid; logs to DIR/registry.log
    python3 -m e2e.registry stop DIR
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 15.0

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog: {{disabled: true}}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging: {{enabled: false}}
http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
"""


class RegistryStartError(RuntimeError):
    pass


def start(addr: str, d: Path, timeout: float = START_TIMEOUT) -> subprocess.Popen[bytes]:
    """docker-registry on ``addr`` (host:port) storing under ``d``; up when this returns."""
    if not Path(BINARY).exists():
        raise RegistryStartError(f"{BINARY} missing: run e2e/cluster/install "
                                 "(Debian package docker-registry)")
    d.mkdir(parents=True, exist_ok=True)
    (d / "data").mkdir(exist_ok=True)
    cfg = d / "config.yml"
    cfg.write_text(CONFIG.format(root=d / "data", addr=addr), encoding="utf-8")
    log = (d / "registry.log").open("ab")
    proc = subprocess.Popen([BINARY, "serve", str(cfg)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    (d / "registry.pid").write_text(str(proc.pid), encoding="utf-8")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = (d / "registry.log").read_text(errors="replace")[-2000:]
            raise RegistryStartError(f"docker-registry exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            stop_proc(proc)
            raise RegistryStartError(f"docker-registry on {addr}: /v2/ not answering "
                                     f"after {timeout:.0f}s")
        time.sleep(0.1)


def stop_proc(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop(d: Path, timeout: float = 10.0) -> None:
    """Stop the registry ``start`` left running under ``d`` (by its pid file)."""
    pidfile = d / "registry.pid"
    try:
        pid = int(pidfile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "start":
        proc = start(argv[1], Path(argv[2]))
        print(proc.pid)
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        stop(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RegistryStartError as e:
        print(f"e2e.registry: {e}", file=sys.stderr)
        sys.exit(1)
