"""The daemon meets the control plane: real Checkpoint objects for real handovers.

The operator (e2e/tests/engine/harness.py, webhooks scoped to this test's
namespaces) and the daemon run against the e2e node:

- same node: a Deployment's pod under a MigrationPolicy is deleted; the daemon
  creates its Checkpoint from the shim's handover (Ready), the replacement
  takes it over and, by default (postmigration-autoscaleup-containers lists
  nothing), stays hibernated; the Checkpoint goes Restoring -> Consumed with the
  control plane's Events all the same, the first request wakes the replacement
  (counter continues), and the control plane deletes the Checkpoint
  (consumed-ttl 3 s). The daemon drops its packed image.
- across nodes, on one real node: a bare pod is deleted on the real node
  (daemon A, the real source), its replacement is bound to a Node object this
  test creates (no kubelet); the control plane grants the transfer to that
  node, and a second daemon process started as that node fetches the image
  from daemon A over mutual TLS into its own shim-state root and reports
  Consumed once "its shim" (this test) took the image.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane import coordinate
from architect.policy.annotations import POSTMIGRATION_AUTOSCALEUP
from architect.runtime.shim.plan import destination_slot, source_slot
from e2e.pytest_cluster import NODE, Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl
from e2e.tests.cluster.shimfix import architect_node, start_daemon
from e2e.tests.cluster.test_daemon_hibernate import (
    http_get,
    shim_entry,
    states,
    wait_serving,
    web_pod,
)
from e2e.tests.cluster.test_daemon_migrate import deployment, live_pods
from e2e.tests.engine.harness import Operator, running_operator

pytestmark = pytest.mark.node
__all__ = ["architect_node"]

SHIM_STATE = Path("/var/lib/architect/shim")
HASH_LABEL = "architect.loopholelabs.io/pod-template-hash"


@pytest.fixture(scope="module")
def operator(architect_node: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with running_operator(architect_node, tmp_path_factory.mktemp("operator")) as op:
        yield op


def daemon_args(op: Operator) -> tuple[str, ...]:
    return ("--transfer-port", str(op.transfer_port), "--namespace", op.system_namespace)


def checkpoint(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    proc = kubectl(cluster, "get", f"checkpoint/{name}", "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def phase(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "")


def events_of(cluster: Cluster, ns: str, name: str) -> list[str]:
    items = get_json(cluster, "events", "-n", ns, "--field-selector",
                     f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def is_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def test_same_node_checkpoint_ready_restoring_consumed_then_collected(
    operator: Operator, tmp_path: Path
) -> None:
    cluster = operator.cluster
    ns = operator.namespace("dck")
    source = deployment("unused")  # postmigration-autoscaleup: the default (none)
    assert POSTMIGRATION_AUTOSCALEUP not in source["spec"]["template"]["metadata"]["annotations"]
    # Admission writes the hash label and annotation on the pods; users never do.
    del source["spec"]["template"]["metadata"]["annotations"][HASH_LABEL]
    thash = ""
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(source))
        eventually("the MigrationPolicy admission recorded", lambda: bool(get_json(
            cluster, "migrationpolicies", "-n", ns)["items"]), timeout_s=60)
        eventually("a Ready web pod", lambda: any(is_ready(p) for p in live_pods(cluster, ns)),
                   timeout_s=120)
        old = next(p for p in live_pods(cluster, ns) if is_ready(p))
        name = old["metadata"]["name"]
        thash = old["metadata"]["annotations"][HASH_LABEL]
        assert old["metadata"]["labels"][HASH_LABEL] == thash
        wait_serving(old["status"]["podIP"])
        for _ in range(3):
            count, _ = http_get(old["status"]["podIP"])
        daemon = start_daemon(cluster, tmp_path / "daemon.log", *daemon_args(operator))
        try:
            eventually("the daemon adopted the pod",
                       lambda: f"pod {ns}/{name}: adopted as RUNNING" in daemon.text(),
                       timeout_s=30)
            ck_name = f"{name}-main"
            t0 = time.monotonic()
            kubectl(cluster, "delete", "pod", "-n", ns, name, "--wait=false")
            seen: dict[str, float] = {}
            new: dict[str, Any] | None = None
            ready_s = 0.0
            deadline = t0 + 150
            while time.monotonic() < deadline and not ("Consumed" in seen and new):
                p = phase(checkpoint(cluster, ns, ck_name))
                if p and p not in seen:
                    seen[p] = time.monotonic() - t0
                if new is None:
                    for pod in live_pods(cluster, ns):
                        if pod["metadata"]["name"] != name and is_ready(pod):
                            new, ready_s = pod, time.monotonic() - t0
                time.sleep(0.2)
            assert new is not None, f"no Ready replacement; phases {seen}\n{daemon.text()[-3000:]}"
            assert "Consumed" in seen, f"phases seen {seen}\n{daemon.text()[-3000:]}"
            new_name = new["metadata"]["name"]
            cid = new["status"]["containerStatuses"][0]["containerID"].removeprefix(
                "containerd://")
            rec = shim_entry(cid)
            assert rec["start_path"] == "restore", rec
            # Consumed while still hibernated: no process until a request comes.
            assert rec["status"] == "SCALED_DOWN" and rec["hibernated"] and rec["pid"] == 0, rec
            eventually("the replacement adopted as hibernated (its packets held)",
                       lambda: states(cluster, ns, new_name) == {"main": "SCALED_DOWN"},
                       timeout_s=30)
            after, wake_s = http_get(new["status"]["podIP"])
            assert after == count + 1, (count, after)  # a fresh start would answer 1
            woken = shim_entry(cid)
            assert not woken["hibernated"] and woken["pid"] > 0, woken
            obj = checkpoint(cluster, ns, ck_name)
            assert obj is not None
            spec, status = obj["spec"], obj["status"]
            assert (spec["sourcePod"], spec["sourceNode"], spec["reason"]) == (name, NODE,
                                                                               "Migration")
            assert spec["templateHash"] == thash and spec["image"]["digest"].startswith("sha256:")
            assert obj["metadata"]["labels"][HASH_LABEL] == thash
            assert status["consumedBy"] == new["metadata"]["name"]
            eventually("the control plane's Events", lambda: {
                "CheckpointReady", "CheckpointRestoring", "CheckpointConsumed"
            } <= set(events_of(cluster, ns, ck_name)), timeout_s=30)
            eventually("the daemon dropped its packed image",
                       lambda: not (SHIM_STATE / "outgoing" / thash / "main").exists(),
                       timeout_s=30)
            eventually("garbage-collected after consumed-ttl",
                       lambda: checkpoint(cluster, ns, ck_name) is None, timeout_s=60)
            created_to_consumed = seen["Consumed"] - min(seen.values())
            print(f"FIGURE same-node: delete -> replacement Ready {ready_s:.2f}s "
                  f"(restore {rec['timings'].get('restore', 0):.2f}s in the shim); "
                  f"phases first seen {json.dumps({k: round(v, 2) for k, v in seen.items()})}; "
                  f"Checkpoint first seen -> Consumed {created_to_consumed:.2f}s; "
                  f"counter {count} -> {after} (first request woke it in {wake_s:.2f}s)")
        finally:
            daemon.kill()  # first: the replacement's deletion must leave no handover
            print(daemon.text()[-5000:])
            kubectl(cluster, "delete", "deployment", "-n", ns, "web", "--wait=true",
                    "--timeout=60s", check=False)
            eventually("the pods gone", lambda: not get_json(
                cluster, "pods", "-n", ns, "-l", "app=web")["items"], timeout_s=90)
    finally:
        if thash:
            shutil.rmtree(SHIM_STATE / "handover" / thash, ignore_errors=True)
            shutil.rmtree(SHIM_STATE / "outgoing" / thash, ignore_errors=True)


@pytest.fixture
def node_b(operator: Operator) -> Iterator[str]:
    name = f"architect-e2e-dck-{uuid.uuid4().hex[:6]}-b"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"architect-e2e": "daemon-transfer"}},
        # Nothing may be scheduled here: the cluster is shared.
        "spec": {"unschedulable": True,
                 "taints": [{"key": "architect-e2e/fake", "effect": "NoSchedule"}]},
    }
    kubectl(operator.cluster, "create", "-f", "-", stdin=json.dumps(node))
    status = {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}
    kubectl(operator.cluster, "patch", f"node/{name}", "--subresource=status", "--type=merge",
            "-p", json.dumps(status))
    try:
        yield name
    finally:
        kubectl(operator.cluster, "delete", "node", name, "--ignore-not-found", check=False)


def test_cross_node_fetch_by_a_second_daemon_over_mtls(
    operator: Operator, node_b: str, tmp_path: Path
) -> None:
    cluster = operator.cluster
    ns = operator.namespace("dckx")
    thash = f"x{uuid.uuid4().hex[:8]}"
    old = web_pod("packets")
    old["metadata"]["name"] = "web-old"
    old["metadata"]["labels"]["pod-template-hash"] = thash  # admission copies it
    old["metadata"]["annotations"]["architect.loopholelabs.io/scaledown-durations"] = (
        '{"main":"1h"}')
    old["spec"]["terminationGracePeriodSeconds"] = 10
    b_root = tmp_path / "b"
    b_state = b_root / "shim"
    daemons = []
    try:
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(old))
        eventually("web-old Ready", lambda: is_ready(get_json(cluster, "pod/web-old", "-n", ns)),
                   timeout_s=120)
        eventually("its MigrationPolicy", lambda: bool(get_json(
            cluster, "migrationpolicies", "-n", ns)["items"]), timeout_s=60)
        (tmp_path / "a").mkdir()
        src = start_daemon(cluster, tmp_path / "a" / "daemon.log", *daemon_args(operator))
        daemons.append(src)
        (b_root / "run").mkdir(parents=True)
        dst = start_daemon(cluster, b_root / "daemon.log", "--node", node_b,
                           "--transfer-port", "0", "--namespace", operator.system_namespace,
                           "--shim-state", str(b_state), "--shim-run", str(b_root / "run"))
        daemons.append(dst)
        eventually("daemon A serves images",
                   lambda: "transfer: serving checkpoint images" in src.text(), timeout_s=60)
        eventually("daemon B has its certificate",
                   lambda: f"node certificate loaded ({node_b})" in dst.text(), timeout_s=60)
        eventually("daemon A adopted web-old",
                   lambda: f"pod {ns}/web-old: adopted as RUNNING" in src.text(), timeout_s=30)
        kubectl(cluster, "delete", "pod", "-n", ns, "web-old", "--wait=false")
        eventually("the Checkpoint Ready", lambda: phase(
            checkpoint(cluster, ns, "web-old-main")) == "Ready", timeout_s=90)
        t0 = time.monotonic()
        replacement = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-new", "labels": {HASH_LABEL: thash}},
            "spec": {"nodeName": node_b,  # bound, as the scheduler would
                     "containers": [{"name": "main", "image": "architect.local/pause:3.10",
                                     "imagePullPolicy": "Never"}]},
        }
        kubectl(cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(replacement))
        incoming = b_state / "handover" / thash / "main" / destination_slot(ns, "web-new")
        eventually("daemon B fetched the image",
                   lambda: (incoming / "ready").exists(), timeout_s=60)
        fetched_s = time.monotonic() - t0
        obj = checkpoint(cluster, ns, "web-old-main")
        assert obj is not None and phase(obj) == "Restoring"
        assert obj["metadata"]["annotations"][coordinate.DESTINATION_ANNOTATION] == node_b
        # Byte for byte what node A's shim wrote (its handover stays: nobody there).
        source = SHIM_STATE / "handover" / thash / "main" / source_slot(ns, "web-old")
        names = sorted(p.name for p in source.iterdir() if p.name not in ("ready", "pending"))
        assert names and names == sorted(
            p.name for p in incoming.iterdir() if p.name not in ("ready", "pending"))
        _, mismatch, errors = filecmp.cmpfiles(source, incoming, names, shallow=False)
        assert (mismatch, errors) == ([], []), (mismatch, errors)
        # This test is node B's shim: it takes the image (the shim removes it once restored).
        shutil.rmtree(incoming)
        eventually("Consumed", lambda: phase(checkpoint(cluster, ns, "web-old-main"))
                   == "Consumed", timeout_s=60)
        consumed_s = time.monotonic() - t0
        obj = checkpoint(cluster, ns, "web-old-main")
        assert obj is not None and obj["status"]["consumedBy"] == "web-new"
        eventually("Events", lambda: {"TransferGranted", "CheckpointConsumed"}
                   <= set(events_of(cluster, ns, "web-old-main")), timeout_s=30)
        eventually("grant revoked", lambda: not get_json(
            cluster, "secrets", "-n", operator.system_namespace, "-l",
            f"{coordinate.GRANT_LABEL}=true,architect.loopholelabs.io/node={node_b}")["items"],
            timeout_s=30)
        eventually("daemon A dropped its packed image",
                   lambda: not (SHIM_STATE / "outgoing" / thash / "main").exists(), timeout_s=30)
        eventually("garbage-collected", lambda: checkpoint(cluster, ns, "web-old-main") is None,
                   timeout_s=60)
        assert "served" in src.text()
        print(f"FIGURE cross-node: replacement created -> image fetched and verified "
              f"{fetched_s:.2f}s, -> Consumed {consumed_s:.2f}s (15 s of it the daemon's wait "
              f"for a start record that node B, having no kubelet, never has)")
    finally:
        for d in daemons:
            d.kill()
            print(d.text()[-4000:])
        kubectl(cluster, "delete", "pod", "-n", ns, "web-old", "web-new", "--force",
                "--grace-period=0", "--ignore-not-found", check=False)
        shutil.rmtree(SHIM_STATE / "handover" / thash, ignore_errors=True)
        shutil.rmtree(SHIM_STATE / "outgoing" / thash, ignore_errors=True)
