"""containerd-shim-architect-v1: the shim v2 binary contract.

containerd runs ``<shim> -namespace NS -address A -publish-binary B -id ID start`` in
the bundle directory: the shim prints a ttrpc address and leaves a daemon serving
it. ``... -id ID -bundle DIR delete`` cleans up after a dead shim and prints a
DeleteResponse. With no action, the process is that daemon (containerd's
runtime/v2/shim/shim.go and runc's manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from architect.errors import UsageError

SOCKET_ROOT = Path("/run/containerd/s")  # containerd's defaults.DefaultStateDir + /s
SOCKET_FD_ENV = "ARCHITECT_SHIM_SOCKET_FD"
STATE_ENV = "ARCHITECT_SHIM_STATE"
RUN_ENV = "ARCHITECT_SHIM_RUN"
LAUNCHER_ENV = "ARCHITECT_SHIM_LAUNCHER"  # set by the node installer's launcher (nodeinstall)
DEFAULT_STATE = Path("/var/lib/architect/shim")
DEFAULT_RUN = Path("/run/architect/shim")
# One shim serves every container of a containerd namespace on the node: a Python
# process costs ~20 MiB whatever it serves, a container in it well under 1 MiB.
NODE_GROUP = "node"
# How long a `start` that handed out a running shim's address keeps that shim from
# exiting: containerd connects as soon as `start` returns (milliseconds), and once
# connected its task keeps the connection until the task is deleted.
CLAIM_S = 2.0
# An empty shim that still has a connection open exits after this anyway.
LINGER_S = 60.0

log = logging.getLogger("architect.shim")


@dataclass
class Args:
    namespace: str = ""
    address: str = ""
    publish_binary: str = "containerd"
    id: str = ""
    bundle: str = ""
    socket: str = ""
    debug: bool = False
    version: bool = False
    action: str = ""


_STRING_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v"}


def parse_args(argv: list[str]) -> Args:
    """Go ``flag`` syntax: -name value, -name=value, --name; flags end at the action."""
    a = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            if arg == "--":
                i += 1
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            on = value.lower() not in ("false", "0") if eq else True
            if name == "v":
                a.version = on
            else:
                a.debug = on
        elif name in _STRING_FLAGS:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag -{name} needs a value")
                value = argv[i]
            setattr(a, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    rest = argv[i:]
    a.action = rest[0] if rest else ""
    if a.action not in ("", "start", "delete"):
        raise UsageError(f"unknown action {a.action!r}: want start or delete")
    if not a.version and not a.namespace:
        raise UsageError("shim namespace cannot be empty (-namespace)")
    if not a.version and not a.id:
        raise UsageError("shim id cannot be empty (-id)")
    return a


def socket_address(containerd_address: str, namespace: str, group: str) -> str:
    """The shim's ttrpc address, as shim.SocketAddress computes it."""
    key = os.path.normpath(os.path.join(containerd_address, namespace, group))
    return f"unix://{SOCKET_ROOT}/{hashlib.sha256(key.encode()).hexdigest()}"


def state_root() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


def run_root() -> Path:
    return Path(os.environ.get(RUN_ENV) or DEFAULT_RUN)


def _bind(path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise
    os.chmod(path, 0o600)
    s.listen(128)
    return s


def _can_connect(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.1)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _group_lock(sock_path: str) -> Iterator[Path]:
    """Serialises `start` (bind, or share a running shim), `delete`'s clean-up and
    a shim's decision to exit, for one socket. Yields the lock file, whose mtime is
    the last time a `start` handed out the running shim's address (a claim)."""
    lock = run_root() / "shims" / f"{os.path.basename(sock_path)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield lock
    finally:
        os.close(fd)


def _claimed(lock: Path) -> bool:
    with contextlib.suppress(OSError):
        return time.time() - lock.stat().st_mtime < CLAIM_S
    return False


def _inode(path: str) -> tuple[int, int]:
    with contextlib.suppress(OSError):
        st = os.stat(path)
        return st.st_dev, st.st_ino
    return 0, 0


def _write_address(address: str) -> None:
    tmp = Path(".address")
    tmp.write_text(address)
    tmp.replace("address")


def stop_window() -> float:
    """The migrate-on-stop decision window from the environment (UsageError if bad)."""
    from architect.runtime.shim.stopwindow import WINDOW_ENV, WindowError, parse_window

    try:
        return parse_window(os.environ.get(WINDOW_ENV))
    except WindowError as e:
        raise UsageError(str(e)) from None


def _self_command() -> list[str]:
    """How to run this shim again: through the node installer's launcher when it
    started us (its Python needs the payload's own loader and libraries), else
    this interpreter."""
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if launcher and os.access(launcher, os.X_OK):
        return [launcher]
    return [sys.executable, "-m", "architect.runtime.shim"]


def start(a: Args) -> str:
    stop_window()  # a bad setting fails the start, where containerd shows it
    group = NODE_GROUP
    address = socket_address(a.address, a.namespace, group)
    path = address.removeprefix("unix://")
    SOCKET_ROOT.mkdir(parents=True, exist_ok=True)
    with _group_lock(path) as lock:
        sock = _bind(path)
        if sock is None:
            if _can_connect(path):  # the node's shim runs: share it
                lock.touch()  # the claim: it must not exit before containerd connects
                _write_address(address)
                return address
            os.unlink(path)  # a dead shim's
            sock = _bind(path)
            if sock is None:
                raise UsageError(f"socket {path} is in use")
        return _spawn(a, address, path, sock, group)


def _spawn(a: Args, address: str, path: str, sock: socket.socket, group: str) -> str:
    """Start the shim daemon on ``sock`` (bound to ``path``, listening)."""
    try:
        _write_address(address)
        fd = sock.fileno()
        env = dict(os.environ)
        env[SOCKET_FD_ENV] = str(fd)
        env["ARCHITECT_SHIM_GROUP"] = group
        argv = [*_self_command(), "-namespace", a.namespace,
                "-id", a.id, "-address", a.address, "-publish-binary", a.publish_binary]
        if a.debug:
            argv.append("-debug")
        # The daemon must not hold containerd's stdout pipe: containerd reads it to EOF.
        subprocess.Popen(
            argv, cwd=os.getcwd(), env=env, pass_fds=(fd,), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except Exception:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        sock.close()
    return address


def delete(a: Args) -> bytes:
    """Clean up after a dead shim; keeps a hibernated container's image."""
    from architect.runtime.shim.pb import shim_pb2

    bundle = Path(a.bundle or os.getcwd())
    run_base = run_root() / "runtime" / a.namespace
    for root in sorted(run_base.glob("*")) if run_base.exists() else []:
        for binary in (root.name, "runc"):
            res = subprocess.run(
                [binary, "--root", str(root), "delete", "--force", a.id],
                capture_output=True, timeout=60,
            )
            if res.returncode == 0:
                break
    rootfs = bundle / "rootfs"
    if os.path.ismount(rootfs):
        subprocess.run(["umount", "-l", str(rootfs)], capture_output=True, timeout=60)
    pid = 0
    with contextlib.suppress(OSError, ValueError):
        pid = int((bundle / "init.pid").read_text().strip())
    sdir = state_root() / "containers" / a.namespace / a.id
    hibernated = False
    with contextlib.suppress(OSError, ValueError):
        hibernated = bool(json.loads((sdir / "state.json").read_text()).get("hibernated"))
    if not hibernated:
        import shutil

        shutil.rmtree(sdir, ignore_errors=True)
    (run_root() / a.namespace / a.id).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the dead shim's socket, unless a live shim serves it
        path = (bundle / "address").read_text().strip().removeprefix("unix://")
        if path:
            with _group_lock(path):
                if not _can_connect(path):
                    os.unlink(path)
    resp = shim_pb2.DeleteResponse(pid=pid, exit_status=128 + signal.SIGKILL)
    resp.exited_at.FromDatetime(datetime.now(UTC))
    data: bytes = resp.SerializeToString()
    return data


class _BundleLog(logging.StreamHandler):  # type: ignore[type-arg]
    """containerd's log FIFO in the bundle the shim started in: it goes with that
    container, while the shim serves on (the log file keeps everything)."""

    def handleError(self, record: logging.LogRecord) -> None:
        logging.getLogger().removeHandler(self)


def _setup_logging(debug: bool, logfile: Path) -> None:
    handlers: list[logging.Handler] = []
    # containerd reads the bundle's "log" FIFO into its own log.
    with contextlib.suppress(OSError):
        fd = os.open("log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        handlers.append(_BundleLog(os.fdopen(fd, "w", buffering=1)))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
    )


async def serve(a: Args) -> None:
    from architect.runtime.shim.control import ControlServer
    from architect.runtime.shim.events import Publisher, PublishTarget
    from architect.runtime.shim.reaper import Reaper, set_child_subreaper
    from architect.runtime.shim.service import TaskService
    from architect.runtime.shim.ttrpc import Server

    fd = int(os.environ.get(SOCKET_FD_ENV, "3"))
    group = os.environ.get("ARCHITECT_SHIM_GROUP", a.id)
    set_child_subreaper()
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    publisher = Publisher(reaper, PublishTarget(a.publish_binary, a.address, a.namespace))
    publisher.start()
    stop = asyncio.Event()
    stopping: list[asyncio.Task[None]] = []
    server = Server()
    listener = socket.socket(fileno=fd)
    sock_path = listener.getsockname()
    sock_path = sock_path if isinstance(sock_path, str) else ""
    sock_inode = _inode(sock_path)

    async def exit_when_unused() -> None:
        """Exit once no container is left, no connection is open (containerd closes
        a task's after its Shutdown) and no `start` has just handed out this shim's
        address; the socket goes first, under the lock `start` takes, so a later
        `start` binds a new shim instead of sharing this one."""
        deadline = time.monotonic() + LINGER_S
        while not svc.containers and not stop.is_set():
            if time.monotonic() >= deadline or not server.connections:
                with _group_lock(sock_path) as lock:
                    if svc.containers:
                        break
                    if time.monotonic() >= deadline or not (server.connections or _claimed(lock)):
                        if _inode(sock_path) == sock_inode:
                            os.unlink(sock_path)
                        stop.set()
                        break
            await asyncio.sleep(0.1)
        stopping.clear()

    def on_empty() -> None:
        if not stopping:
            stopping.append(loop.create_task(exit_when_unused()))

    svc = TaskService(
        reaper, publisher, a.namespace, state_root(), run_root() / "runtime" / a.namespace,
        on_empty=on_empty, stop_window=stop_window(),
    )
    gid = hashlib.sha256(f"{a.namespace}/{group}".encode()).hexdigest()[:16]
    # The pid too: an exiting shim's clean-up must not remove its successor's socket.
    svc.control_path = run_root() / "control" / f"{gid}-{os.getpid()}.sock"
    svc.run_dir = run_root()
    svc.register(server)
    await server.start(listener)
    control = ControlServer(svc, svc.control_path)
    await control.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("shim for %s/%s serving (pid %d)", a.namespace, group, os.getpid())
    await stop.wait()
    with contextlib.suppress(Exception):
        await publisher.drain(5)
    await control.close()
    await server.close()
    if sock_path:
        with contextlib.suppress(OSError), _group_lock(sock_path):
            if _inode(sock_path) == sock_inode:  # as the runc shim does on shutdown
                os.unlink(sock_path)
    log.info("shim for %s/%s exiting", a.namespace, group)


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"containerd-shim-architect-v1: {e}", file=sys.stderr)
        return 2
    if a.version:
        from architect.runtime.shim.service import VERSION

        print(f"containerd-shim-architect-v1:\n  Version: {VERSION}")
        return 0
    try:
        if a.action == "start":
            sys.stdout.write(start(a))
            return 0
        if a.action == "delete":
            sys.stdout.buffer.write(delete(a))
            return 0
    except (OSError, UsageError, subprocess.SubprocessError) as e:
        print(f"containerd-shim-architect-v1 {a.action}: {e}", file=sys.stderr)
        return 1
    group = os.environ.get("ARCHITECT_SHIM_GROUP", a.id)
    _setup_logging(a.debug, run_root() / "logs" / a.namespace / f"{group}.log")
    os.chdir("/")  # the shim outlives the bundle it was started in
    asyncio.run(serve(a))
    return 0
