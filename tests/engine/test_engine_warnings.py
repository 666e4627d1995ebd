"""Admission warnings: each configuration that cannot work, and its message (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from architect.engine.admission import handlers as admission
from architect.engine.admission.pods import SidecarConfig, admit_pod
from architect.engine.admission.warnings import MAX_WARNING, config_warnings
from architect.policy.compiler import compile_workload
from tests.engine.fakes import FakeKube

P = "architect.loopholelabs.io/"


def pod(
    ann: dict[str, str],
    containers: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "p"}, "annotations": ann},
        "spec": {
            "runtimeClassName": "runc-architect",
            "containers": containers
            or [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}],
            **spec,
        },
    }


def warnings(obj: dict[str, Any]) -> list[str]:
    return config_warnings(obj, compile_workload(obj))


def managed(network: dict[str, str] | None = None, **more: str) -> dict[str, str]:
    names = sorted(network or {"app": "packets"})
    ann = {P + "managed-containers": json.dumps(names)}
    if network is None:
        network = {"app": "packets"}
    if network:
        ann[P + "network-monitor"] = json.dumps(network)
    ann.update({P + k: v for k, v in more.items()})
    return ann


def hc(app: int, shadow: int) -> str:
    return json.dumps(
        {"mappings": [{"containerName": "app", "appPort": app, "shadowPort": shadow}]}
    )


def test_a_sound_configuration_has_no_warning() -> None:
    c = [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}],
          "livenessProbe": {"httpGet": {"path": "/", "port": 8080}}}]
    assert warnings(pod(managed(**{"health-check-proxy": hc(8080, 18080)}), c)) == []
    assert warnings(pod({})) == []  # nothing compiled, nothing to say


def test_host_network() -> None:
    (w,) = warnings(pod(managed(), hostNetwork=True))
    assert w.startswith(P + "network-monitor: container 'app': the pod uses hostNetwork")
    assert "wakes only by kubectl exec" in w


def test_managed_container_without_network_monitor() -> None:
    ann = {P + "managed-containers": '["app"]'}
    (w,) = warnings(pod(ann))
    assert w == (
        f"{P}managed-containers: container 'app' has no {P}network-monitor entry: once "
        "hibernated, incoming traffic does not wake it, only kubectl exec does"
    )
    # autoScaledown off: it never hibernates on idle, so there is nothing to wake.
    off = {**ann, P + "disable-autoscaledown-containers": '["app"]'}
    assert warnings(pod(off)) == []


def test_connections_mode_with_only_udp_ports() -> None:
    c = [{"name": "app", "image": "x", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]
    (w,) = warnings(pod(managed({"app": "connections"}), c))
    assert "connections mode but declares only UDP ports" in w
    assert warnings(pod(managed({"app": "packets"}), c)) == []


def test_two_portless_network_containers_share_every_port() -> None:
    c = [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]
    (w,) = warnings(pod(managed({"a": "packets", "b": "connections"}), c))
    assert "containers 'a', 'b' declare no containerPort" in w
    assert warnings(pod(managed({"a": "packets"}), c)) == []  # only one: its ports


@pytest.mark.parametrize(
    ("probe", "scaledown", "expect"),
    [
        # Straight to a watched port: activity. Period < scaledownAfter: never idle.
        ({"tcpSocket": {"port": 8080}}, "60s", "keeps it from ever hibernating (every 10s"),
        ({"tcpSocket": {"port": 8080}, "periodSeconds": 120}, "60s",
         "wakes it at every probe (every 120s)"),
        ({"httpGet": {"port": "http"}}, "60s", "reaches port 8080 directly"),  # a named port
        ({"exec": {"command": ["true"]}}, "60s", "runs a command in it (exec)"),
        # A port the daemon does not watch: nobody answers while hibernated.
        ({"tcpSocket": {"port": 9999}}, "60s", "(port 9999) gets no answer"),
    ],
)
def test_unproxied_probes(probe: dict[str, Any], scaledown: str, expect: str) -> None:
    c = [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}],
          "livenessProbe": probe}]
    ann = managed(**{"scaledown-durations": json.dumps({"app": scaledown})})
    (w,) = warnings(pod(ann, c))
    assert w.startswith("livenessProbe of managed container 'app'") and expect in w
    if "exec" not in expect:
        assert "add a architect.loopholelabs.io/health-check-proxy mapping" in w


def test_probe_without_network_wake_fails_while_hibernated() -> None:
    c = [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}],
          "readinessProbe": {"tcpSocket": {"port": 8080}}}]
    ws = warnings(pod({P + "managed-containers": '["app"]'}, c))
    assert any("gets no answer while it is hibernated" in w and "not ready" in w for w in ws)


def test_health_check_mapping_that_no_probe_uses() -> None:
    c = [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}],
          "livenessProbe": {"httpGet": {"port": 8080}}}]
    ws = warnings(pod(managed(**{"health-check-proxy": hc(7070, 17070)}), c))
    assert any("appPort 7070: no probe of the container uses that port" in w for w in ws)
    assert any("reaches port 8080 directly" in w for w in ws)  # the probe it should cover
    assert len(ws) == 2


def test_the_admitted_pod_is_judged_like_its_manifest() -> None:
    # After mutation the probe points at the shadow port: still proxied, no warning.
    c = [{"name": "app", "image": "x", "ports": [{"containerPort": 8080}],
          "livenessProbe": {"httpGet": {"path": "/", "port": 8080}}}]
    obj = pod(managed(**{"health-check-proxy": hc(8080, 18080)}), c)
    admitted = admit_pod(obj, SidecarConfig(image="x"))
    assert admitted["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] == 18080
    assert warnings(admitted) == []


def test_workloads_are_warned_not_their_pods() -> None:
    template = pod({P + "managed-containers": '["app"]'})
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
              "spec": {"template": {"metadata": template["metadata"],
                                    "spec": template["spec"]}}}
    assert len(warnings(deploy)) == 1


async def test_review_returns_the_warnings_once() -> None:
    kube = FakeKube()
    bare = pod({P + "managed-containers": '["app"]'})
    review = await admission.review_workload(bare, dryrun=True, kube=kube)
    assert len(review.warnings) == 1 and "only kubectl exec" in review.warnings[0]
    owned = pod({P + "managed-containers": '["app"]'})
    owned["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": "r", "uid": "u", "controller": True}
    ]
    assert (await admission.review_workload(owned, dryrun=True, kube=kube)).warnings == []


def test_every_warning_fits_the_api_servers_limit() -> None:
    names = [f"container-with-a-rather-long-name-{i}" for i in range(8)]
    c = [{"name": n, "image": "x"} for n in names]
    ws = warnings(pod(managed(dict.fromkeys(names, "packets")), c))
    assert ws and all(len(w) <= MAX_WARNING for w in ws)
