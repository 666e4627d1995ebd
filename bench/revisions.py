"""Run another git revision's code beside this tree's, for ratios from one run.

``exported_tree(rev)`` exports the Python packages of revision ``rev`` (with the
``architect`` links) into a temporary directory; put it first on PYTHONPATH of a
child process and that process imports ``architect`` from ``rev``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("architect", "runtime", "policy", "engine")


def is_revision(rev: str) -> bool:
    ok = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q",
                         f"{rev}^{{commit}}"], capture_output=True, timeout=30)  # fmt: skip
    return ok.returncode == 0


def short(rev: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                          capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return done.stdout.strip()


@contextlib.contextmanager
def exported_tree(rev: str) -> Iterator[Path]:
    """The packages of ``rev`` in a fresh directory, removed afterwards."""
    tree = Path(tempfile.mkdtemp(prefix="arch-rev-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, *PACKAGES],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True,
                       timeout=60)  # fmt: skip
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)
