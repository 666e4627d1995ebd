"""Small kubectl helpers for the cluster tests (every wait is bounded)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from e2e.pytest_cluster import Cluster

TIMEOUT_S = 120


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cluster.kubectl_cmd(*args), input=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)


def eventually(what: str, probe: Callable[[], bool], timeout_s: float = 60,
               every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s: {what}")


@contextmanager
def namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(cluster, "create", "namespace", name)
    try:
        yield name
    finally:
        kubectl(cluster, "delete", "namespace", name, "--wait=false", check=False)
