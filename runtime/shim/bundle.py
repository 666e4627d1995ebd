"""A container's OCI bundle as the Task API uses it: its config.json's
annotations and cgroup path, and the rootfs mounts containerd hands to Create."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from architect.runtime.shim.ttrpc import Code, TtrpcError


def read_annotations(bundle: Path) -> dict[str, str]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    ann = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}


def cgroup_path(bundle: Path) -> str:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str((spec.get("linux") or {}).get("cgroupsPath") or "")


def mount_rootfs(bundle: Path, mounts: Iterable[Any]) -> None:
    """Mount Create's rootfs mounts (``containerd.types.Mount``) on ``bundle/rootfs``."""
    if not mounts:
        return
    target = bundle / "rootfs"
    target.mkdir(exist_ok=True)
    for m in mounts:
        argv = ["mount", "-t", m.type, m.source, str(target)]
        if m.options:
            argv += ["-o", ",".join(m.options)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise TtrpcError(Code.UNKNOWN, f"mount rootfs {m.type}: {res.stderr.strip()}")


def unmount_rootfs(bundle: Path) -> None:
    rootfs = bundle / "rootfs"
    if os.path.ismount(rootfs):
        subprocess.run(["umount", "-l", str(rootfs)], capture_output=True, timeout=30)
