"""Shim benchmark: memory per pod, and hibernate / wake times as containerd sees them.

Runs a private containerd (as the shim tests do) and reports, in one run:
- RSS of one Architect shim serving one container (against ``--baseline``'s);
- RSS and PSS of Architect's shim per pod (1 container a pod, and one pod of 4;
  one shim serves all the node's pods), next to containerd's own Go shim
  (io.containerd.runc.v2), one per pod, for the same pods;
- with ``--scale N``: the RSS of the node's one shim serving N containers (one pod
  each, 10 of them hibernated), and what each container adds, and its idle CPU;
- the RSS of a bare interpreter (with and without site, as this machine has it),
  the floor under any Python shim;
- hibernate and wake times through the control socket, the exec-wake time seen by
  `ctr task exec` on a hibernated container against the same exec on a running one,
  and the container's cgroup RSS before and after hibernation.

With ``--baseline REV`` a second private containerd runs the shim of git revision
REV (its tree exported to a temporary directory, put first on PYTHONPATH) and the
rounds alternate between the two, so the ratios come from one run on a noisy machine.

Needs root and runtime/shim/install.
Usage: python bench/shim_bench.py [--rounds N] [--pods N] [--scale N] [--memory-only]
       [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.revisions import exported_tree, is_revision
from tests.runtime.shim.conftest import (
    NS,
    Containerd,
    build_busybox_rootfs,
    private_containerd,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"
HOG = "x=$(head -c 25000000 /dev/zero | tr '\\0' a); echo ready > /tmp/ready; " + COUNTER


def mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def shim_pids(marker: str, cd: Containerd | None = None) -> list[int]:
    """Shim daemons by command line; with ``cd`` only those that containerd started."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0") if cd is not None else []
        except OSError:
            continue
        if cd is not None and f"ARCHITECT_SHIM_RUN={cd.shim_run}".encode() not in env:
            continue
        if any(marker.encode() in c for c in cmd) and b"start" not in cmd and b"delete" not in cmd:
            out.append(int(d.name))
    return out


@contextlib.contextmanager
def baseline_containerd(rev: str) -> Iterator[Containerd]:
    """A private containerd whose Architect shim is the code of git revision ``rev``."""
    with exported_tree(rev) as tree:
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(tree)  # containerd, hence its shims, inherit it
        try:
            ctx = private_containerd()
            cd = ctx.__enter__()
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old
        try:
            yield cd
        finally:
            ctx.__exit__(None, None, None)


def run(cd: Containerd, runtime: str, cid: str, rootfs: Path, script: str,
        annotations: dict[str, str] | None = None) -> None:
    ann = [f"--annotation={k}={v}" for k, v in (annotations or {}).items()]
    cd.ctr("run", "-d", "--env", "PATH=/bin", "--runtime", runtime, *ann,
           "--rootfs", str(rootfs), cid, "/bin/sh", "-c", script)
    wait_for(lambda: cd.tasks().get(cid, (0, ""))[1] == "RUNNING", 30, cid)


def shim_memory(cd: Containerd, runtime: str, marker: str, pods: int, per_pod: int,
                hibernated: int = 0) -> dict[str, float]:
    """Shim memory and idle CPU with ``pods`` x ``per_pod`` containers running, the
    first ``hibernated`` of them hibernated (what idle managed containers are)."""
    ids = []
    for p in range(pods):
        for c in range(per_pod):
            cid = f"m{p}x{c}"
            rootfs = build_busybox_rootfs(cd.base / "rootfs" / cid)
            run(cd, runtime, cid, rootfs, COUNTER, {"io.containerd.runc.v2.group": f"pod{p}"})
            ids.append(cid)
    for cid in ids[:hibernated]:
        res = cd.control(cid, {"op": "hibernate", "id": cid})
        assert res["ok"], res
    time.sleep(1.0)
    pids = shim_pids(marker, cd)
    mems = [mem_kib(pid) for pid in pids]
    ticks0, t0 = sum(cpu_ticks(p) for p in pids), time.monotonic()
    time.sleep(IDLE_S)  # idle: no call from containerd, none from a daemon
    cpu = (sum(cpu_ticks(p) for p in pids) - ticks0) / os.sysconf("SC_CLK_TCK")
    for cid in ids:
        cd.remove(cid)
    return {
        "shims": len(pids),
        "rss_total_kib": sum(m[0] for m in mems),
        "cpu_idle_pct": 100 * cpu / (time.monotonic() - t0),
        "rss_per_pod_kib": sum(m[0] for m in mems) / pods,
        "pss_per_pod_kib": sum(m[1] for m in mems) / pods,
    }


IDLE_S = 5.0
HIBERNATED = 10  # of the --scale containers


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def interpreter_kib(*flags: str) -> int:
    """RSS of this Python doing nothing (as the test launcher runs it, or with flags)."""
    p = subprocess.Popen([sys.executable, *flags, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    try:
        time.sleep(1.0)
        return mem_kib(p.pid)[0]
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(10)


def timed(fn: object) -> float:
    t0 = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - t0


def cgroup_rss(cid: str) -> int:
    try:
        stat = Path(f"/sys/fs/cgroup/memory/{NS}/{cid}/memory.stat").read_text()
    except FileNotFoundError:
        return 0
    for line in stat.splitlines():
        if line.startswith("total_rss "):
            return int(line.split()[1])
    return 0


def hibernation_round(cd: Containerd, i: int, prefix: str = "h") -> dict[str, float]:
    cid = f"{prefix}{i}"
    rootfs = build_busybox_rootfs(cd.base / "rootfs" / cid)
    run(cd, "io.containerd.architect.v1", cid, rootfs, HOG)
    wait_for(lambda: (rootfs / "tmp" / "ready").exists(), 60, "memory allocated")

    def exec_cat(eid: str) -> None:
        res = cd.run_result("task", "exec", "--exec-id", eid, cid, "/bin/cat", "/tmp/count")
        assert res.returncode == 0, res.stderr

    exec_running = timed(lambda: exec_cat("r"))
    rss_before = cgroup_rss(cid)
    hib = cd.control(cid, {"op": "hibernate", "id": cid})
    assert hib["ok"], hib
    assert cd.tasks()[cid][1] == "RUNNING"
    rss_after = cgroup_rss(cid)
    exec_wake = timed(lambda: exec_cat("w"))
    hib2 = cd.control(cid, {"op": "hibernate", "id": cid})
    wake = cd.control(cid, {"op": "wake", "id": cid})
    assert wake["ok"], wake
    cd.remove(cid)
    return {
        "hibernate_s": hib["seconds"],
        "hibernate2_s": hib2["seconds"],
        "wake_s": wake["seconds"],
        "exec_running_s": exec_running,
        "exec_wake_s": exec_wake,
        "rss_before_kib": rss_before / 1024,
        "rss_after_kib": rss_after / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--scale", type=int, default=0, metavar="N",
                    help="also measure the node's shim serving N containers (2..100)")
    ap.add_argument("--memory-only", action="store_true", help="no hibernation rounds")
    ap.add_argument("--baseline", metavar="REV", help="also run the shim of this git revision")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.pods <= 16:
        ap.error("--rounds must be 1..20 and --pods 1..16")
    if args.scale and not 2 <= args.scale <= 100:
        ap.error("--scale must be 2..100")
    if args.baseline and not is_revision(args.baseline):
        ap.error(f"--baseline {args.baseline!r}: not a git revision of {ROOT}")
    base_rounds: list[dict[str, float]] = []
    base_1: dict[str, float] = {}
    base_scale: dict[str, float] = {}
    scale: dict[str, float] = {}
    rounds: list[dict[str, float]] = []
    bare, bare_s = interpreter_kib(), interpreter_kib("-S")
    with contextlib.ExitStack() as stack:
        cd = stack.enter_context(private_containerd())
        base = stack.enter_context(baseline_containerd(args.baseline)) if args.baseline else None
        # One shim serving one container: what the import diet changes, grouping aside.
        single = shim_memory(cd, "io.containerd.architect.v1", "architect.runtime.shim", 1, 1)
        base_single = (shim_memory(base, "io.containerd.architect.v1", "architect.runtime.shim",
                                   1, 1) if base is not None else {})
        ours_1 = shim_memory(cd, "io.containerd.architect.v1", "architect.runtime.shim",
                             args.pods, 1)
        if base is not None:
            base_1 = shim_memory(base, "io.containerd.architect.v1", "architect.runtime.shim",
                                 args.pods, 1)
        go_1 = shim_memory(cd, "io.containerd.runc.v2", "containerd-shim-runc-v2", args.pods, 1)
        ours_4 = shim_memory(cd, "io.containerd.architect.v1", "architect.runtime.shim", 1, 4)
        if args.scale:
            scale = shim_memory(cd, "io.containerd.architect.v1", "architect.runtime.shim",
                                args.scale, 1, hibernated=HIBERNATED)
            if base is not None:
                base_scale = shim_memory(base, "io.containerd.architect.v1",
                                         "architect.runtime.shim", args.scale, 1,
                                         hibernated=HIBERNATED)
        for i in range(0 if args.memory_only else args.rounds):  # alternated: same load
            rounds.append(hibernation_round(cd, i))
            if base is not None:
                base_rounds.append(hibernation_round(base, i, prefix="b"))
    print(f"interpreter alone: RSS {bare} KiB ({bare_s} KiB with -S, no site)")
    print(f"one shim serving one container: RSS {single['rss_total_kib']:.0f} KiB"
          + (f"; baseline {args.baseline} {base_single['rss_total_kib']:.0f} KiB, this tree / "
             f"baseline = {single['rss_total_kib'] / base_single['rss_total_kib']:.2f}"
             if base_single else ""))
    print(f"shim memory, {args.pods} pods x 1 container:")
    print(f"  architect: RSS {ours_1['rss_per_pod_kib']:.0f} KiB/pod, "
          f"PSS {ours_1['pss_per_pod_kib']:.0f} KiB/pod ({ours_1['shims']:.0f} shims)")
    print(f"  runc-v2:   RSS {go_1['rss_per_pod_kib']:.0f} KiB/pod, "
          f"PSS {go_1['pss_per_pod_kib']:.0f} KiB/pod ({go_1['shims']:.0f} shims)")
    print(f"  ratio architect/runc-v2: RSS {ours_1['rss_per_pod_kib'] / go_1['rss_per_pod_kib']:.2f}, "
          f"PSS {ours_1['pss_per_pod_kib'] / go_1['pss_per_pod_kib']:.2f}")
    print(f"  one pod of 4 containers: RSS {ours_4['rss_per_pod_kib']:.0f} KiB "
          f"({ours_4['shims']:.0f} shim), "
          f"{ours_4['rss_per_pod_kib'] / single['rss_total_kib']:.2f} x one shim with one container")
    if scale:
        one = single["rss_total_kib"]
        print(f"  {args.scale} pods x 1 container ({HIBERNATED} hibernated): "
              f"{scale['shims']:.0f} shim(s), RSS "
              f"{scale['rss_total_kib'] / 1024:.1f} MiB in all, "
              f"{(scale['rss_total_kib'] - one) / (args.scale - 1):.0f} KiB per container more; "
              f"CPU idle {scale['cpu_idle_pct']:.2f} % of a core over {IDLE_S:.0f} s")
    if base_scale:
        print(f"  baseline {args.baseline}, {args.scale} pods: {base_scale['shims']:.0f} shim(s), "
              f"RSS {base_scale['rss_total_kib'] / 1024:.1f} MiB in all, CPU idle "
              f"{base_scale['cpu_idle_pct']:.2f} %; this tree / baseline = "
              f"{scale['rss_total_kib'] / base_scale['rss_total_kib']:.3f}")
    if base_1:
        print(f"  baseline {args.baseline}, {args.pods} pods: RSS "
              f"{base_1['rss_per_pod_kib']:.0f} KiB/pod ({base_1['shims']:.0f} shims); "
              f"this tree / baseline = {ours_1['rss_per_pod_kib'] / base_1['rss_per_pod_kib']:.2f}")
    if not rounds:
        return 0
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"hibernation, median of {args.rounds} rounds (25 MB shell heap):")
    print(f"  hibernate {med['hibernate_s']:.3f}s (again after wake {med['hibernate2_s']:.3f}s), "
          f"wake {med['wake_s']:.3f}s")
    print(f"  ctr task exec: running {med['exec_running_s']:.3f}s, hibernated (restore+exec) "
          f"{med['exec_wake_s']:.3f}s, ratio {med['exec_wake_s'] / med['exec_running_s']:.1f}")
    print(f"  container cgroup RSS {med['rss_before_kib']:.0f} KiB -> {med['rss_after_kib']:.0f} KiB")
    if base_rounds:
        bmed = {k: statistics.median(r[k] for r in base_rounds) for k in base_rounds[0]}
        print(f"baseline {args.baseline} (same run, rounds alternated), this tree / baseline:")
        for k in ("hibernate_s", "wake_s", "exec_wake_s"):
            print(f"  {k[:-2]:<10} {med[k]:.3f}s / {bmed[k]:.3f}s = {med[k] / bmed[k]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
