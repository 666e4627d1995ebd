"""The daemon's reflectors against the real API server: node-scoped pods (a pod of
another node never reaches this node's cache), policies of every namespace, adds,
updates and deletes followed through the watch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from architect.runtime.daemon.apiserver import Reflector, reflectors
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, kubectl, namespace

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def started(control_plane: Cluster) -> Iterator[tuple[Reflector, Reflector, Reflector]]:
    kubectl(control_plane, "apply", "-f", str(ROOT / "crds"))
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    changes: list[int] = []
    refl = reflectors(api, "ghost-node-a", lambda: changes.append(1))
    for r in refl:
        r.start()
    try:
        for r in refl:
            assert r.synced.wait(30), f"{r.name}: never listed"
        yield refl
    finally:
        for r in refl:
            r.stop.set()
        api.close()


def _pod(name: str, node: str) -> dict[str, Any]:
    # Bound to a node that has no kubelet: the object exists, nothing runs. (The
    # node tier's pod GC force-deletes such pods some 40 s later: delete tolerantly.)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none"}]}}


def _policy(after: str) -> dict[str, Any]:
    return {
        "apiVersion": "architect.loopholelabs.io/v1alpha1", "kind": "HibernationPolicy",
        "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "runtime": "runc",
                 "containers": [{"name": "c", "scaledownAfter": after}]},
    }


def names(r: Reflector, ns: str) -> set[str]:
    return {o["metadata"]["name"] for o in r.snapshot() if o["metadata"]["namespace"] == ns}


def test_reflectors_follow_node_pods_and_policies(
    control_plane: Cluster, started: tuple[Reflector, Reflector, Reflector]
) -> None:
    pods, hps, _ = started
    with namespace(control_plane, "dmnw") as ns:
        kubectl(control_plane, "apply", "-n", ns, "-f", "-",
                stdin=json.dumps(_pod("mine", "ghost-node-a")))
        kubectl(control_plane, "apply", "-n", ns, "-f", "-",
                stdin=json.dumps(_pod("theirs", "ghost-node-b")))
        kubectl(control_plane, "apply", "-n", ns, "-f", "-", stdin=json.dumps(_policy("5s")))
        eventually("this node's pod arrives", lambda: names(pods, ns) == {"mine"}, timeout_s=30)
        eventually("the policy arrives", lambda: names(hps, ns) == {"p"}, timeout_s=30)
        assert all(o["kind"] == "HibernationPolicy" for o in hps.snapshot())

        kubectl(control_plane, "apply", "-n", ns, "-f", "-", stdin=json.dumps(_policy("7s")))

        def updated() -> bool:
            (p,) = [o for o in hps.snapshot() if o["metadata"]["namespace"] == ns]
            return bool(p["spec"]["containers"][0]["scaledownAfter"] == "7s")

        eventually("the update arrives", updated, timeout_s=30)
        kubectl(control_plane, "delete", "-n", ns, "hibernationpolicy", "p")
        kubectl(control_plane, "delete", "-n", ns, "pod", "mine", "--grace-period=0",
                "--force", "--ignore-not-found")
        eventually("deletes arrive",
                   lambda: not names(hps, ns) and not names(pods, ns), timeout_s=30)
        # No kubelet will ever confirm its termination: remove it outright, or the
        # namespace would stay Terminating.
        kubectl(control_plane, "delete", "-n", ns, "pod", "theirs", "--grace-period=0",
                "--force", "--ignore-not-found")
    assert "theirs" not in {o["metadata"]["name"] for o in pods.snapshot()}
