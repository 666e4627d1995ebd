"""Handover on the e2e node: a Deployment's pod is deleted with migrate-on-stop, and
its replacement (same template hash, new pod IP, new emptyDir path) restores from
the checkpoint the shim wrote on stop. Its annotations ask for everything the
defaults leave out (postmigration-autoscaleup, migrate-emptydir and
rewrite-listener-addresses list the container): it runs right after the restore,
its in-memory counter goes on, its emptyDir content came along, and its listener,
bound to the old pod IP, answers on the new one. A corrupt handover image makes
the replacement start fresh, and it is Ready, whether the replacement was to run
at once or (the default) to stay hibernated."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import pytest

from architect.policy.annotations import (
    MANAGED_CONTAINERS,
    MIGRATE_EMPTYDIR,
    POSTMIGRATION_AUTOSCALEUP,
    REWRITE_LISTENER,
)
from architect.policy.annotations import TEMPLATE_HASH_ANNOTATION as HASH_KEY
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl, namespace
from e2e.tests.cluster.shimfix import (  # noqa: F401
    HANDOVER,
    architect_node,
    container_id,
    left_handover,
    ready_pod,
    remove_handover,
    shim_control,
    shim_record,
)

pytestmark = pytest.mark.node
APP = "app=counter"
# A listener bound to the pod IP (restore must rewrite it), an in-memory counter
# written to the rootfs, and a log in the emptyDir. httpd's directory is in the
# emptyDir: the writable layer of the rootfs does not travel, and CRIU reopens a
# process's cwd by path, so the emptyDir must travel too.
# What this app needs from a migration, none of it the default.
MIGRATION = {
    MANAGED_CONTAINERS: '["main"]',
    POSTMIGRATION_AUTOSCALEUP: '["main"]',
    MIGRATE_EMPTYDIR: '["main"]',
    REWRITE_LISTENER: '["main"]',
}
SCRIPT = (
    "mkdir -p /data/www && echo hello > /data/www/index.html && "
    "httpd -f -p $POD_IP:8080 -h /data/www & "
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; "
    "mv /tmp/count.new /tmp/count; echo $i >> /data/log; sleep 1; done"
)


def _deployment(template_hash: str, autoscaleup: bool = True) -> dict[str, Any]:
    annotations = {**MIGRATION, HASH_KEY: template_hash}
    if not autoscaleup:
        del annotations[POSTMIGRATION_AUTOSCALEUP]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "counter"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "counter"}},
            "template": {
                # The shim keys handovers by this annotation (containerd passes pod
                # annotations under architect.loopholelabs.io/ to the OCI spec).
                "metadata": {"labels": {"app": "counter"}, "annotations": annotations},
                "spec": {
                    "runtimeClassName": "runc-architect",
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "main", "image": "architect.local/busybox:1.35",
                        "imagePullPolicy": "Never", "command": ["sh", "-c", SCRIPT],
                        "env": [{"name": "POD_IP", "valueFrom": {
                            "fieldRef": {"fieldPath": "status.podIP"}}}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def _exec(cluster: Cluster, ns: str, pod: str, *cmd: str) -> str:
    return kubectl(cluster, "exec", "-n", ns, pod, "--", *cmd).stdout


def _count(cluster: Cluster, ns: str, pod: str) -> int:
    return int(_exec(cluster, ns, pod, "cat", "/tmp/count") or 0)


def _http(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
        return str(r.read().decode())


def _start(cluster: Cluster, ns: str, template_hash: str,
           autoscaleup: bool = True) -> dict[str, Any]:
    kubectl(cluster, "apply", "-n", ns, "-f", "-",
            stdin=json.dumps(_deployment(template_hash, autoscaleup)))
    pod = ready_pod(cluster, ns, APP)
    name = pod["metadata"]["name"]
    eventually("the counter reaches 8", lambda: _count(cluster, ns, name) >= 8, timeout_s=60)
    assert _http(pod["status"]["podIP"]) == "hello\n"
    reply = shim_control(container_id(pod), {"op": "migrate-on-stop", "id": container_id(pod)})
    assert reply["ok"] and reply["migrate_on_stop"], reply
    return pod


def test_replacement_pod_restores_from_handover(architect_node: Cluster) -> None:  # noqa: F811
    cluster = architect_node
    thash = f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        with namespace(cluster, "handover") as ns:
            old = _start(cluster, ns, thash)
            name, old_ip = old["metadata"]["name"], old["status"]["podIP"]
            before = _count(cluster, ns, name)
            t0 = time.monotonic()
            kubectl(cluster, "delete", "pod", "-n", ns, name, "--wait=false")
            new = ready_pod(cluster, ns, APP, not_named=name)
            ready_s = time.monotonic() - t0
            new_name, new_ip = new["metadata"]["name"], new["status"]["podIP"]

            rec = shim_record(container_id(new))
            assert rec["start_path"] == "restore", rec
            assert "handover checkpoint" in rec["start_reason"], rec
            # postmigration-autoscaleup lists it: running at once, not hibernated.
            assert rec["status"] == "RUNNING" and not rec["hibernated"], rec
            assert rec["pid"] > 0, rec
            # The counter went on from its checkpointed value; a fresh start would
            # count from 1 (and reach `before` only after as many seconds). The new
            # rootfs has no /tmp/count until the restored loop's next round.
            eventually("the restored counter writes", lambda: kubectl(
                cluster, "exec", "-n", ns, new_name, "--", "test", "-s", "/tmp/count",
                check=False).returncode == 0, timeout_s=30)
            after = _count(cluster, ns, new_name)
            assert after >= before, (before, after)
            # The emptyDir (a new host path in the new pod) holds the old pod's lines.
            lines = _exec(cluster, ns, new_name, "cat", "/data/log").split()
            assert lines[:before] == [str(i) for i in range(1, before + 1)], lines[:before + 2]
            # httpd was bound to the old pod IP; restored with the socket rewritten,
            # it answers on the new one.
            assert _http(new_ip) == "hello\n"
            assert not (HANDOVER / thash / "main").exists(), "a consumed handover must go"
            restarts = new["status"]["containerStatuses"][0]["restartCount"]
            assert restarts == 0
            print(f"\nhandover: old {old_ip} -> new {new_ip}; counter {before} -> {after}; "
                  f"restore {rec['timings'].get('restore', 0):.3f}s in the shim, "
                  f"delete -> replacement Ready {ready_s:.1f}s")
    finally:
        remove_handover(thash)


@pytest.mark.parametrize("autoscaleup", [True, False], ids=["restore", "stay-hibernated"])
def test_corrupt_handover_starts_fresh_and_ready(
    architect_node: Cluster, autoscaleup: bool,  # noqa: F811
) -> None:
    """Both of Create's paths verify the image: the restore (autoscaleup listed)
    and the one that keeps the image as the replacement's hibernation image."""
    cluster = architect_node
    thash = f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        with namespace(cluster, "handover") as ns:
            _start(cluster, ns, thash, autoscaleup)
            # Scale to zero: the pod stops with SIGTERM and the shim writes the handover.
            kubectl(cluster, "scale", "-n", ns, "deployment/counter", "--replicas=0")
            eventually("the handover image",
                       lambda: (left_handover(thash) / "ready").exists(), timeout_s=60)
            image = left_handover(thash)
            eventually("the pod gone", lambda: not get_json(
                cluster, "pods", "-n", ns, "-l", "app=counter")["items"], timeout_s=60)
            manifest = json.loads((image / "manifest.json").read_text())
            payload = image / manifest["payload"]["file"]
            data = bytearray(payload.read_bytes())
            data[len(data) // 2] ^= 0x5A  # one flipped byte in the middle of the payload
            payload.write_bytes(bytes(data))

            kubectl(cluster, "scale", "-n", ns, "deployment/counter", "--replicas=1")
            new = ready_pod(cluster, ns, APP)
            rec = shim_record(container_id(new))
            assert rec["start_path"] == "fresh", rec
            assert not rec["hibernated"] and rec["pid"] > 0, rec
            # The reason names the image and what was wrong with it.
            assert "failed" in rec["start_reason"] and str(image) in rec["start_reason"], rec
            assert _count(cluster, ns, new["metadata"]["name"]) < 8, "state came back?"
            assert not image.exists(), "a broken handover must not fail the next pod too"
            assert _http(new["status"]["podIP"]) == "hello\n"
    finally:
        remove_handover(thash)
