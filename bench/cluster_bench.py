"""Benchmark of the e2e cluster: build time, start times, memory.

    python bench/cluster_bench.py [--skip-restart]

Reports the first (cold) Kubernetes build's wall time recorded by build-k8s, the
wall time of `up --control-plane` and `up` from a stopped cluster with warm caches
(measured here: this runs `down` first unless --skip-restart), and the resident
memory of the running cluster: the sum of VmRSS over its component processes, and
separately over the containerd shims and pod processes of the idle node.
Figures are printed as one table; times are from one run on a shared machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "e2e" / "cluster"
RUN = Path("/run/architect-e2e")
COMPONENTS = ("etcd", "kube-apiserver", "containerd", "kube-controller-manager",
              "kube-scheduler", "kubelet")


def rss_kib(status_text: str) -> int:
    """VmRSS in KiB from /proc/PID/status text (0 for kernel threads)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def component_rss() -> dict[str, int]:
    out: dict[str, int] = {}
    for name in COMPONENTS:
        pid = _read(RUN / "pids" / f"{name}.pid").strip()
        if pid:
            out[name] = rss_kib(_read(Path("/proc") / pid / "status"))
    return out


def pod_side_rss() -> int:
    """Shims of our containerd plus every process in the kubelet's pod cgroups."""
    pids: set[str] = set()
    sock = str(RUN / "containerd" / "containerd.sock")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            cmd = _read(proc / "cmdline").replace("\0", " ")
            if "containerd-shim" in cmd and sock in cmd:
                pids.add(proc.name)
    kubepods = Path("/sys/fs/cgroup/memory/kubepods")
    if kubepods.is_dir():
        for procs in kubepods.rglob("cgroup.procs"):
            pids.update(p for p in _read(procs).split() if p)
    return sum(rss_kib(_read(Path("/proc") / p / "status")) for p in pids)


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-restart", action="store_true",
                        help="measure memory of the running cluster only")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    sys.path.insert(0, str(REPO))
    versions = subprocess.run(["bash", "-c", f". {CLUSTER}/lib/versions.sh; echo $K8S_BIN"],
                              capture_output=True, text=True, check=True).stdout.strip()
    build_s = _read(Path(versions) / ".build-seconds").strip()
    rows.append(("cold build of 5 Kubernetes binaries (recorded)", f"{build_s} s"))
    if not args.skip_restart:
        subprocess.run([str(CLUSTER / "down")], check=True, stderr=subprocess.DEVNULL)
        cp_s = timed([str(CLUSTER / "up"), "--control-plane"])
        rows.append(("up --control-plane, warm caches", f"{cp_s:.1f} s"))
        subprocess.run([str(CLUSTER / "down")], check=True, stderr=subprocess.DEVNULL)
        rows.append(("up (node tier, incl. busybox pod check), warm caches",
                     f"{timed([str(CLUSTER / 'up')]):.1f} s"))
        rows.append(("up again while running (idempotent no-op)",
                     f"{timed([str(CLUSTER / 'up')]):.1f} s"))
        time.sleep(10)  # let the check pod's deletion and startup churn settle
    comp = component_rss()
    if not comp:
        print("cluster is not running: run e2e/cluster/up first", file=sys.stderr)
        return 1
    for name, kib in comp.items():
        rows.append((f"RSS {name}", f"{kib / 1024:.0f} MiB"))
    total = sum(comp.values())
    rows.append(("RSS sum of cluster components", f"{total / 1024:.0f} MiB"))
    pods = pod_side_rss()
    rows.append(("RSS of shims + pod processes (idle node)", f"{pods / 1024:.0f} MiB"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
