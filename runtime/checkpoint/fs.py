"""Removing scratch directories an engine may have left mounts in.

A CRIU that was killed half-way leaves its mounts behind (a bind of the
container's rootfs, a tmpfs of cgroup hierarchies): a plain rmtree would walk
into them and delete the rootfs or rmdir cgroups. So: detach every mount
under the tree first, and delete nothing if one stays.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from pathlib import Path

MNT_DETACH = 2


def _unescape(field: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (
        field.decode(errors="surrogateescape")
        .encode("latin-1", "surrogateescape")
        .decode("unicode_escape")
    )


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    root = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            target = _unescape(line.split()[4])
            if target == root or target.startswith(root + "/"):
                found.append(Path(target))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def detach_mounts(path: Path) -> bool:
    """Lazily unmount everything under ``path``; True when nothing is left."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(8):  # stacked mounts need one detach each
        mounts = mounts_under(path)
        if not mounts:
            return True
        for m in mounts:
            libc.umount2(str(m).encode(), MNT_DETACH)
    return not mounts_under(path)


def safe_rmtree(path: Path) -> bool:
    """rmtree that never crosses a mount point; False if it had to leave ``path``."""
    if not path.exists() and not path.is_symlink():
        return True
    if not detach_mounts(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
    return True
