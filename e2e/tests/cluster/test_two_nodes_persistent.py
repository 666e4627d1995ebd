"""A PersistentCheckpoint with node-local storage restores pods on another node,
through the Helm-installed product on two real nodes (`e2e/cluster/up --nodes 2`):
the image is taken on node A; node B's daemon fetches it from node A's over the
mutual-TLS transfer for a new pod pinned to node B, whose counter continues; a
pod of a namespace the object does not allow starts fresh with an Event saying
why; so does one whose holder image was tampered with. Node A keeps its copy.

By hand, as root (it removes node B when it ends):

    flock -o /var/lock/architect-node.lock python3 -m pytest -p no:cacheprovider \
        e2e/tests/cluster/test_two_nodes_persistent.py
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e import product
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import wait_architect_pods_gone
from e2e.tests.cluster.test_two_nodes import NODE_A, NODE_B, PYTHON, two_nodes

pytestmark = pytest.mark.node
__all__ = ["two_nodes"]  # the module fixture, shared

PCKPT = "persistentcheckpoints.architect.loopholelabs.io"
START_FROM = "architect.loopholelabs.io/start-from-persistent-checkpoint"
# Node B's /var/lib/architect as this (node A's) mount namespace sees it.
NODEB_VAR_LIB = Path("/var/lib/architect-e2e/node-b/var-lib-architect")
LOGS = Path("/var/log/architect-e2e/two-nodes-persistent")


@pytest.fixture(scope="module")
def kube(two_nodes: Cluster) -> Iterator[product.Kube]:
    k = product.Kube(two_nodes.kubeconfig, two_nodes.context, two_nodes.kubectl)
    try:
        product.install(k)
        daemons = k.json("pods", "-n", product.NAMESPACE, "-l",
                         "app.kubernetes.io/component=daemon")["items"]
        assert {d["spec"]["nodeName"] for d in daemons} == {NODE_A, NODE_B}
        yield k
    finally:
        product.keep_logs(k, LOGS)
        try:
            wait_architect_pods_gone(two_nodes)
        finally:
            product.uninstall(k)


def _gv_pod(name: str, node: str, ref: str = "") -> str:
    ann = {"architect.loopholelabs.io/managed-pod": "true"}
    if ref:
        ann[START_FROM] = ref
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": ann},
        "spec": {"nodeName": node, "runtimeClassName": "runsc-architect",
                 "terminationGracePeriodSeconds": 0,
                 # The source's name: gVisor matches a restore's containers by name.
                 # The seed's counter app: its count lives in the sandbox's memory only.
                 "containers": [{"name": "gv-src-container", "image": PYTHON,
                                 "imagePullPolicy": "Never", "ports": [{"containerPort": 8080}],
                                 "command": ["python3", "-c", product.COUNTER]}]}})


def _start(k: product.Kube, ns: str, name: str, node: str, ref: str = "") -> dict[str, Any]:
    k.run("apply", "-n", ns, "-f", "-", stdin=_gv_pod(name, node, ref))
    pod = product.ready_pod(k, ns, name, 120)
    assert pod["spec"]["nodeName"] == node
    product.wait_listening(pod["status"]["podIP"])
    return pod


def _count(pod: dict[str, Any]) -> int:
    return product.count_of(product.http_get(pod["status"]["podIP"])[0])


def _event(k: product.Kube, ns: str, pod: str, reason: str) -> str:
    """The message of the pod's Event with ``reason`` (waited for, bounded)."""
    found: list[str] = []

    def seen() -> bool:
        items = k.json("events", "-n", ns, "--field-selector",
                       f"involvedObject.name={pod},reason={reason}")["items"]
        found[:] = [e["message"] for e in items]
        return bool(found)

    try:
        product.eventually(f"{reason} Event on {ns}/{pod}", seen, 30, 0.5)
    except product.ProductError:
        print(k.run("get", "events", "-n", ns, check=False).stdout[-3000:])
        raise
    return found[0]


@dataclass(frozen=True)
class Snap:
    ns: str
    name: str
    holder_dir: Path  # node A's copy (node A's paths are this namespace's)
    digest: str


@pytest.fixture(scope="module")
def snap(kube: product.Kube) -> Iterator[Snap]:
    """A runsc pod on node A, asked twice (counter 2), and a Ready node-local
    PersistentCheckpoint of it."""
    ns = f"pc2n-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", ns)
    try:
        src = _start(kube, ns, "gv-src", NODE_A)
        assert [_count(src), _count(src)] == [1, 2]
        kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps({
            "apiVersion": "architect.loopholelabs.io/v1alpha1", "kind": "PersistentCheckpoint",
            "metadata": {"name": "gv-snap"},
            "spec": {"sourcePod": "gv-src", "storage": {"nodeLocal": True}}}))
        kube.run("wait", "-n", ns, f"{PCKPT}/gv-snap", "--for=jsonpath={.status.phase}=Ready",
                 "--timeout=90s", timeout=100)
        image = kube.json(PCKPT, "-n", ns, "gv-snap")["status"]["image"]
        assert image["location"].startswith(f"node://{NODE_A}/"), image
        holder = Path(image["location"].removeprefix(f"node://{NODE_A}"))
        assert (holder / "ready").exists()
        yield Snap(ns, "gv-snap", holder, image["digest"])
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def _nodeb_copy(s: Snap) -> Path:
    return NODEB_VAR_LIB / s.holder_dir.relative_to("/var/lib/architect")


def test_a_new_pod_on_node_b_restores_from_node_as_image(kube: product.Kube, snap: Snap) -> None:
    pod = _start(kube, snap.ns, "gv-b", NODE_B, snap.name)
    # The counter lived in node A's sandbox memory only: it continues on node B.
    assert _count(pod) == 3
    msg = _event(kube, snap.ns, "gv-b", "RestoredFromPersistentCheckpoint")
    assert "its state continues" in msg, msg
    # A PersistentCheckpoint restores many pods: the holder keeps its copy, and
    # node B's fetched one goes once its pod runs.
    assert (snap.holder_dir / "ready").exists()
    product.eventually("node B's fetched copy removed", lambda: not _nodeb_copy(snap).exists(),
                       30, 0.5)
    # The same namespace/name ref, a second pod on node B: fetched again, 3 again.
    again = _start(kube, snap.ns, "gv-b2", NODE_B, f"{snap.ns}/{snap.name}")
    assert _count(again) == 3


def test_a_pod_of_a_namespace_not_allowed_starts_fresh_on_node_b(
        kube: product.Kube, snap: Snap) -> None:
    other = f"{snap.ns}-no"
    kube.run("create", "namespace", other)
    try:
        pod = _start(kube, other, "gv-x", NODE_B, f"{snap.ns}/{snap.name}")
        assert _count(pod) == 1
        msg = _event(kube, other, "gv-x", "PersistentCheckpointNotUsed")
        assert f"does not list namespace {other} in allowedNamespaces" in msg, msg
    finally:
        kube.run("delete", "namespace", other, "--wait=false", check=False)


def test_a_tampered_holder_image_starts_fresh_on_node_b(kube: product.Kube, snap: Snap) -> None:
    # The largest file: runsc's state (in the image's payload stream).
    big = max((p for p in snap.holder_dir.rglob("*") if p.is_file()),
              key=lambda p: p.stat().st_size)
    assert big.name != "manifest.json"
    with big.open("r+b") as f:  # one bit, mid-file: the size stays right
        f.seek(big.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    pod = _start(kube, snap.ns, "gv-t", NODE_B, snap.name)
    assert _count(pod) == 1
    msg = _event(kube, snap.ns, "gv-t", "PersistentCheckpointNotUsed")
    assert f"from node {NODE_A} failed" in msg and "digest mismatch" in msg, msg
    # Nothing of the partial download is left on node B.
    left = sorted(p.name for p in _nodeb_copy(snap).iterdir()) if _nodeb_copy(snap).exists() \
        else []
    assert left in ([], ["unavailable"]), left
