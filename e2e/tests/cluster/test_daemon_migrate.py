"""The daemon carries out CheckpointForMigration: a Deployment's pod governed by a
MigrationPolicy is deleted, the daemon tells the shim migrate-on-stop before the
kubelet stops it, and the replacement pod takes over the handover.

By default (postmigration-autoscaleup-containers lists nothing) the replacement
stays hibernated: no process, the shim says SCALED_DOWN, the daemon adopts it as
hibernated and holds its packets; the first request wakes it and gets the next
count. With the container listed it runs right after the restore, before any
request. Either way the in-memory counter goes on."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from architect.policy.annotations import POSTMIGRATION_AUTOSCALEUP
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import architect_node, start_daemon
from e2e.tests.cluster.test_daemon_hibernate import (
    compile_and_apply,
    events,
    http_get,
    shim_entry,
    states,
    wait_serving,
    web_pod,
)

pytestmark = pytest.mark.node
__all__ = ["architect_node"]

HANDOVER = Path("/var/lib/architect/shim/handover")
HASH_KEY = "architect.loopholelabs.io/pod-template-hash"


def deployment(template_hash: str, autoscaleup: bool = False) -> dict[str, Any]:
    """The counter pod of test_daemon_hibernate as a Deployment's template;
    ``autoscaleup``: postmigration-autoscaleup-containers lists its container."""
    pod = web_pod("packets")
    annotations = pod["metadata"]["annotations"]
    annotations["architect.loopholelabs.io/scaledown-durations"] = '{"main":"1h"}'
    if autoscaleup:
        annotations[POSTMIGRATION_AUTOSCALEUP] = '["main"]'
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


@pytest.mark.parametrize("autoscaleup", [False, True], ids=["default-stays-hibernated",
                                                         "autoscaleup-runs"])
def test_deleted_pod_state_moves_to_its_replacement(
    architect_node: Cluster, tmp_path: Path, autoscaleup: bool
) -> None:
    cluster = architect_node
    thash = f"dmn-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "daemon.log"
    try:
        with namespace(cluster, "dmnm") as ns:
            # The compiler refuses the hash annotation (users never write it).
            source = deployment(thash, autoscaleup)
            del source["spec"]["template"]["metadata"]["annotations"][HASH_KEY]
            compile_and_apply(cluster, ns, deployment(thash, autoscaleup), tmp_path, source)
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
                new_name = new["metadata"]["name"]
                cid = new["status"]["containerStatuses"][0]["containerID"].removeprefix(
                    "containerd://")
                rec = shim_entry(cid)
                assert rec["start_path"] == "restore", rec
                assert "handover checkpoint" in rec["start_reason"], rec
                if autoscaleup:
                    # Running before any request: a process of its own.
                    assert rec["status"] == "RUNNING" and not rec["hibernated"], rec
                    assert rec["pid"] > 0 and Path(f"/proc/{rec['pid']}").exists(), rec
                    eventually("adopted as running", lambda: states(
                        cluster, ns, new_name) == {"main": "RUNNING"}, timeout_s=30)
                else:
                    # The default: the handover image became its hibernation image.
                    assert rec["status"] == "SCALED_DOWN" and rec["hibernated"], rec
                    assert rec["pid"] == 0, rec
                    assert POSTMIGRATION_AUTOSCALEUP in rec["start_reason"], rec
                    # Published after the adoption armed the hold: the request
                    # below is held, not refused by a netns with no listener.
                    eventually("adopted as hibernated", lambda: states(
                        cluster, ns, new_name) == {"main": "SCALED_DOWN"}, timeout_s=30)
                    assert f"pod {ns}/{new_name}: adopted as SCALED_DOWN" in daemon.text()
                after, seconds = http_get(new["status"]["podIP"])
                assert after == count + 1, (count, after)  # a fresh start would answer 1
                woken = shim_entry(cid)
                assert not woken["hibernated"] and woken["pid"] > 0, woken
                if not autoscaleup:
                    assert woken["timings"].get("wake", 0) > 0, woken  # the request woke it
                    eventually("awake after the request", lambda: states(
                        cluster, ns, new_name) == {"main": "RUNNING"}, timeout_s=30)
                final = get_json(cluster, "pod", "-n", ns, new_name)["status"]
                assert final["containerStatuses"][0]["restartCount"] == 0
                assert "CheckpointForMigration" in events(cluster, ns)
                print(f"FIGURE handover ({'autoscaleup' if autoscaleup else 'default'}): "
                      f"counter {count} -> {after}, "
                      f"restore {rec['timings'].get('restore', 0):.3f}s in the shim, "
                      f"first request answered in {seconds:.3f}s")
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
