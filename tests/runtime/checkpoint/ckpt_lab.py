"""Test lab for the checkpoint tests: network namespaces, OCI bundles, clients.

A "client" namespace is joined by one veth to each "pod" namespace; pod n has
198.18.n.2/24 and fd0c:n::2/64, the client side 198.18.n.1 and fd0c:n::1.
All addresses exist only inside namespaces the tests create and delete.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLONE_NEWNET = 0x40000000


def sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def build_server(dest_dir: Path) -> Path:
    """Compile counter_server.c statically (gcc from build-essential, see install)."""
    src = HERE / "counter_server.c"
    out = dest_dir / "counter_server"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        sh("gcc", "-O2", "-static", "-o", str(out), str(src), timeout=120)
    return out


@dataclass
class Pod:
    ns: str
    index: int

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.ns}"

    @property
    def ip4(self) -> str:
        return f"198.18.{self.index}.2"

    @property
    def ip6(self) -> str:
        return f"fd0c:{self.index}::2"


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    pods: list[Pod] = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"ckc{self.tag}"

    def start(self) -> None:
        sh("ip", "netns", "add", self.client)
        sh("ip", "-n", self.client, "link", "set", "lo", "up")

    def add_pod(self) -> Pod:
        index = len(self.pods) + 1
        pod = Pod(f"ckp{self.tag}{index}", index)
        sh("ip", "netns", "add", pod.ns)
        self.pods.append(pod)
        host_if = f"ck{self.tag}{index}"
        sh("ip", "link", "add", host_if, "netns", self.client, "type", "veth",
           "peer", "name", "eth0", "netns", pod.ns)  # fmt: skip
        for ns, dev, last in ((self.client, host_if, 1), (pod.ns, "eth0", 2)):
            sh("ip", "-n", ns, "addr", "add", f"198.18.{index}.{last}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd0c:{index}::{last}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Like a real pod: everything else is through the node (here: the client).
        sh("ip", "-n", pod.ns, "route", "add", "default", "via", f"198.18.{index}.1")
        sh("ip", "-n", pod.ns, "-6", "route", "add", "default", "via", f"fd0c:{index}::1")
        return pod

    def close(self) -> None:
        for name in [self.client, *(p.ns for p in self.pods)]:
            sh("ip", "netns", "del", name, check=False)

    def get(self, host: str, port: int = 8080, timeout: float = 5) -> str:
        """One HTTP GET from the client namespace; the body. ConnectionError if none."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with self.socket(family) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                return http_request(s, timeout)
        except OSError as e:  # refused, unreachable, timed out
            raise ConnectionError(f"GET {host}:{port} from {self.client}: {e}") from e

    def map_vip(self, vip: str, port: int, target: str) -> None:
        """Client-side stateless translation VIP:port <-> target:port (nftables).

        Stands in for a Service: stateless, so that moving the target needs no
        conntrack surgery; the restored socket's first packet (CRIU's window
        probe) already finds its way back to the client's socket.
        """
        fam, ipx = ("ip6", "ip6") if ":" in vip else ("ip", "ip")
        subprocess.run(
            ["ip", "netns", "exec", self.client, "nft", "delete", "table", fam, "vip"],
            capture_output=True, timeout=20,
        )  # fmt: skip
        rules = f"""table {fam} vip {{
  chain out {{ type route hook output priority -300;
    {ipx} daddr {vip} tcp dport {port} {ipx} daddr set {target}; }}
  chain in {{ type filter hook prerouting priority -300;
    {ipx} saddr {target} tcp sport {port} {ipx} saddr set {vip}; }}
}}
"""
        done = subprocess.run(
            ["ip", "netns", "exec", self.client, "nft", "-f", "-"],
            input=rules, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"nft: {done.stderr}")
        # Some route must exist for the VIP; the route chain re-routes after rewriting.
        v6 = ["-6"] if ":" in vip else []
        sh("ip", "-n", self.client, *v6, "route", "replace", vip, "dev", f"ck{self.tag}1")

    def accepts(self, host: str, port: int = 8080, timeout: float = 1) -> bool:
        """Whether a TCP connect from the client namespace succeeds (no request sent)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with self.socket(family) as s:
                s.settimeout(timeout)
                s.connect((host, port))
        except OSError:
            return False
        return True

    def socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket living in the client namespace (setns in a helper thread)."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                fd = os.open(f"/var/run/netns/{self.client}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                # This thread stays in the client namespace and then ends.
                result.append(socket.socket(family, socket.SOCK_STREAM))
            except BaseException as e:
                result.append(e)

        t = threading.Thread(target=make)
        t.start()
        t.join(10)
        item = result[0]
        if isinstance(item, BaseException):
            raise item
        return item


def http_request(sock: socket.socket, timeout: float = 10) -> str:
    """Send one keep-alive GET on ``sock``, return the body."""
    sock.settimeout(timeout)
    sock.sendall(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                return body[:length].decode().strip()
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    raise TimeoutError("no full HTTP answer")


def make_bundle(
    path: Path,
    server: Path,
    args: list[str],
    netns: str | None,
    mounts: dict[str, Path] | None = None,
    cgroups_path: str | None = None,
) -> Path:
    """An OCI bundle (runc spec defaults) whose rootfs holds busybox and the server."""
    rootfs = path / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "data"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    shutil.copy2(server, rootfs / "server")
    sh("runc", "spec", "--bundle", str(path))
    config = json.loads((path / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"] = {"path": str(rootfs), "readonly": False}
    namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    config["linux"]["namespaces"] = namespaces
    if cgroups_path:
        config["linux"]["cgroupsPath"] = cgroups_path
    for dest, src in (mounts or {}).items():
        config["mounts"].append(
            {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rw"]}
        )
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def with_netns(bundle: Path, new_bundle: Path, netns: str) -> Path:
    """A copy of ``bundle``'s config.json (same rootfs) that joins ``netns``."""
    new_bundle.mkdir(parents=True, exist_ok=True)
    config = json.loads((bundle / "config.json").read_text())
    for n in config["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = netns
    (new_bundle / "config.json").write_text(json.dumps(config, indent=1))
    return new_bundle


def memory_cgroup_bytes(cgroups_path: str) -> int | None:
    """memory.usage_in_bytes of a cgroup v1 path, None if the cgroup is gone."""
    p = Path("/sys/fs/cgroup/memory") / cgroups_path.lstrip("/") / "memory.usage_in_bytes"
    try:
        return int(p.read_text())
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (an exited process waits for its reaper, here pid 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(pred: object, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if callable(pred) and pred():
                return True
        time.sleep(step)
    return False


def start(binary: str, root: Path, cid: str, bundle: Path, *flags: str) -> int:
    """`<runtime> run -d` with stdio on /dev/null; returns the container's pid."""
    pid_file = bundle / f"{cid}.pid"
    log = bundle / f"{cid}.runtime.log"
    # stdio on /dev/null: the container inherits it, and CRIU can only reopen
    # files it can find from inside the container (not a pipe or a host temp file).
    done = subprocess.run(
        [binary, "--root", str(root), "--log", str(log), *flags, "run", "--detach",
         "--bundle", str(bundle), "--pid-file", str(pid_file), cid],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        raise AssertionError(f"{binary} run {cid} failed: {text[-2000:]}")
    return int(pid_file.read_text())

def forge_unrestorable(good: Path, work: Path) -> Path:
    """A copy of image ``good`` sealed with valid digests but a garbage pstree.img:
    it passes verification and makes CRIU's restore fail."""
    from architect.runtime.checkpoint import image as image_mod

    unpacked = work / "unpacked"
    m = image_mod.unpack(good, unpacked)
    (unpacked / "engine" / "pstree.img").write_bytes(b"\x00garbage" * 10)
    forged = work / "forged"
    image_mod.pack(
        forged, unpacked / "engine", (), backend=m.backend, backend_version=m.backend_version,
        scope=m.scope, container=m.container, pod_template_hash="", memory_bytes=0,
        compression="dir",
    )  # fmt: skip
    return forged
