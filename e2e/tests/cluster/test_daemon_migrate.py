"""The daemon carries out CheckpointForMigration: a Deployment's pod governed by a
MigrationPolicy is deleted, the daemon tells the shim migrate-on-stop before the
kubelet stops it, and the replacement pod restores from the handover: the
in-memory counter goes on."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import architect_node, start_daemon
from e2e.tests.cluster.test_daemon_hibernate import (
    compile_and_apply,
    events,
    http_get,
    shim_entry,
    wait_serving,
    web_pod,
)

pytestmark = pytest.mark.node
__all__ = ["architect_node"]

HANDOVER = Path("/var/lib/architect/shim/handover")
HASH_KEY = "architect.loopholelabs.io/pod-template-hash"


def deployment(template_hash: str) -> dict[str, Any]:
    """The counter pod of test_daemon_hibernate as a Deployment's template."""
    pod = web_pod("packets")
    annotations = pod["metadata"]["annotations"]
    annotations["architect.loopholelabs.io/scaledown-durations"] = '{"main":"1h"}'
    # What admission adds in a full install; the shim keys the handover by it
    # (containerd passes pod annotations under architect.loopholelabs.io/ on).
    annotations[HASH_KEY] = template_hash
    pod["spec"]["terminationGracePeriodSeconds"] = 10
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": pod["metadata"]["labels"],
                                      "annotations": annotations},
                         "spec": pod["spec"]},
        },
    }


def live_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", ns, "-l", "app=web")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pod(cluster: Cluster, ns: str, not_named: str = "") -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        for p in live_pods(cluster, ns):
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if p["metadata"]["name"] != not_named and conds.get("Ready") == "True":
                found[:] = [p]
                return True
        return False

    eventually("a Ready web pod", ready, timeout_s=120)
    return found[0]


def test_deleted_pod_state_moves_to_its_replacement(
    architect_node: Cluster, tmp_path: Path
) -> None:
    cluster = architect_node
    thash = f"dmn-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "daemon.log"
    try:
        with namespace(cluster, "dmnm") as ns:
            # The compiler refuses the hash annotation (users never write it).
            source = deployment(thash)
            del source["spec"]["template"]["metadata"]["annotations"][HASH_KEY]
            compile_and_apply(cluster, ns, deployment(thash), tmp_path, source)
            old = ready_pod(cluster, ns)
            name = old["metadata"]["name"]
            wait_serving(old["status"]["podIP"])
            for _ in range(3):
                count, _ = http_get(old["status"]["podIP"])
            daemon = start_daemon(cluster, log)
            try:
                eventually("the daemon adopted the pod",
                           lambda: f"pod {ns}/{name}: adopted as RUNNING" in daemon.text(),
                           timeout_s=30)
                kubectl(cluster, "delete", "pod", "-n", ns, name, "--wait=false")
                eventually("migrate-on-stop armed by the daemon",
                           lambda: "CheckpointForMigration" in daemon.text(), timeout_s=30)
                new = ready_pod(cluster, ns, not_named=name)
                rec = shim_entry(new["status"]["containerStatuses"][0]["containerID"]
                                 .removeprefix("containerd://"))
                assert rec["start_path"] == "restore", rec
                after, _ = http_get(new["status"]["podIP"])
                assert after == count + 1, (count, after)  # a fresh start would answer 1
                assert new["status"]["containerStatuses"][0]["restartCount"] == 0
                assert "CheckpointForMigration" in events(cluster, ns)
                print(f"FIGURE handover: counter {count} -> {after}, "
                      f"restore {rec['timings'].get('restore', 0):.3f}s in the shim")
            finally:
                # The daemon goes first: the replacement's deletion must not leave
                # another handover behind.
                daemon.kill()
                print(daemon.text()[-4000:])
                kubectl(cluster, "delete", "deployment", "-n", ns, "web", "--wait=true",
                        "--timeout=60s", check=False)
                # The restored container starts disarmed, but it expects a decision
                # and no daemon runs now: its stop waits out the shim's stop window.
                eventually("the pods gone", lambda: not get_json(
                    cluster, "pods", "-n", ns, "-l", "app=web")["items"], timeout_s=60)
    finally:
        shutil.rmtree(HANDOVER / thash, ignore_errors=True)
