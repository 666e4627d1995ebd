"""Fixtures of the checkpoint tests: a namespace lab, runtime state roots, the app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ckpt_lab import Lab, build_server, sh


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("checkpoint engine tests need root (runtime/checkpoint/install, then sudo)")


@pytest.fixture(scope="session")
def server_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_server(tmp_path_factory.mktemp("app"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    _need_root()
    lab = Lab()
    lab.start()
    try:
        yield lab
    finally:
        lab.close()


def _cleanup_root(binary: str, root: Path, force_flag: str) -> None:
    # runc spells it -q, runsc -quiet; both take the long Go flag form.
    done = sh(binary, "--root", str(root), "list", "-quiet" if binary == "runsc" else "-q",
              check=False)  # fmt: skip
    for cid in done.stdout.split():
        sh(binary, "--root", str(root), "delete", force_flag, cid, check=False)


@pytest.fixture
def runc_root(tmp_path: Path) -> Iterator[Path]:
    _need_root()
    root = tmp_path / "runc-state"
    root.mkdir()
    try:
        yield root
    finally:
        _cleanup_root("runc", root, "--force")


@pytest.fixture
def runsc_root(tmp_path: Path) -> Iterator[Path]:
    _need_root()
    root = tmp_path / "runsc-state"
    root.mkdir()
    try:
        yield root
    finally:
        _cleanup_root("runsc", root, "-force")
