"""Transfer coordination: replacement lookup, claims with grants, hand-back,
revocation, the transfer trust and node certificates. Pure, and the handlers
with a fake API."""

from __future__ import annotations

import asyncio
import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from architect.engine.controlplane import coordinate, trust
from architect.engine.controlplane import handlers as controlplane
from architect.engine.controlplane.transfer import grant_from_data, verify
from architect.engine.tls import make_ca, pem_common_name
from architect.policy.annotations import TEMPLATE_HASH_LABEL
from architect.policy.timestamps import fmt_time
from tests.engine.fakes import FakeKube

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = b"k" * 32
DIGEST = "sha256:" + "a" * 64
SETTINGS = coordinate.TransferSettings(namespace="arch", port=9447)


def ckpt(phase: str = "Ready", **spec: Any) -> dict[str, Any]:
    base = {
        "templateHash": "h1",
        "container": "app",
        "runtime": "runc",
        "sourcePod": "web-old",
        "sourceNode": "node-a",
        "reason": "Migration",
        "image": {"location": "node://node-a/x", "digest": DIGEST, "sizeBytes": 1234},
    }
    base.update(spec)
    return {
        "metadata": {"namespace": "ns", "name": "web-app", "uid": "uid-1"},
        "spec": base,
        "status": {"phase": phase},
    }


def pod(
    name: str, node: str = "node-b", created: str = "2026-11-23T11:59:00Z", **kw: Any
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "creationTimestamp": created,
            "labels": {TEMPLATE_HASH_LABEL: "h1"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "app"}]},
        "status": {"phase": "Pending"},
    }
    for k, v in kw.items():
        p[k].update(v) if isinstance(v, dict) else p.__setitem__(k, v)
    return p


def node(name: str, ip: str | None = "10.0.0.1") -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if ip:
        addresses.append({"type": "InternalIP", "address": ip})
    return {"metadata": {"name": name}, "status": {"addresses": addresses}}


# --- picking the replacement ---------------------------------------------------


def test_the_oldest_eligible_pod_is_picked() -> None:
    pods = [pod("web-2", created="2026-11-23T11:59:30Z"), pod("web-1")]
    assert coordinate.pick_replacement(ckpt(), pods)["metadata"]["name"] == "web-1"  # type: ignore[index]


@pytest.mark.parametrize(
    ("why", "p"),
    [
        ("the source pod itself", pod("web-old")),
        ("not bound", pod("web-1", node="")),
        ("being deleted", pod("web-1", metadata={"deletionTimestamp": "2026-11-23T12:00:00Z"})),
        ("finished", pod("web-1", status={"phase": "Succeeded"})),
        ("another template hash", pod("web-1", metadata={"labels": {TEMPLATE_HASH_LABEL: "h2"}})),
        ("no such container", pod("web-1", spec={"containers": [{"name": "other"}]})),
        (
            "its container already started (fresh)",
            pod("web-1", status={"containerStatuses": [{"name": "app", "state": {"running": {}}}]}),
        ),
        ("another namespace", pod("web-1", metadata={"namespace": "other"})),
    ],
)
def test_ineligible_pods_are_not_picked(why: str, p: dict[str, Any]) -> None:
    assert coordinate.pick_replacement(ckpt(), [p]) is None, why


def test_a_pod_restoring_the_container_from_another_checkpoint_is_not_picked() -> None:
    other = ckpt("Restoring")
    other["metadata"]["name"] = "older"
    other["status"]["consumedBy"] = "web-1"
    assert coordinate.pick_replacement(ckpt(), [pod("web-1")], [other]) is None
    assert coordinate.pick_replacement(ckpt(), [pod("web-1"), pod("web-2")], [other]) is not None


# --- claims ----------------------------------------------------------------------


def test_same_node_claim_has_no_grant() -> None:
    plan = coordinate.plan_claim(ckpt(), pod("web-1", node="node-a"), None, key=KEY, now=NOW)
    assert isinstance(plan, coordinate.Claim)
    assert plan.secret is None
    assert plan.patch[0] == {"op": "test", "path": "/status/phase", "value": "Ready"}
    assert "on the source node node-a" in plan.patch[-1]["value"]


def test_cross_node_claim_issues_a_ticket_bound_to_both_nodes_and_the_pod() -> None:
    plan = coordinate.plan_claim(
        ckpt(), pod("web-1"), node("node-a", "10.0.0.7"), key=KEY, now=NOW, settings=SETTINGS
    )
    assert isinstance(plan, coordinate.Claim) and plan.secret is not None
    secret = plan.secret
    assert secret["metadata"]["namespace"] == "arch"
    assert secret["metadata"]["labels"]["architect.loopholelabs.io/node"] == "node-b"
    grant = grant_from_data(secret["stringData"])
    assert grant.endpoint == "https://10.0.0.7:9447"
    assert (grant.template_hash, grant.container) == ("h1", "app")
    t = verify(grant.token, KEY, NOW)
    assert (t.namespace, t.name, t.uid) == ("ns", "web-app", "uid-1")
    assert (t.source_node, t.destination_node, t.destination_pod) == ("node-a", "node-b", "web-1")
    assert (t.digest, t.size_bytes) == (DIGEST, 1234)
    assert t.expires_at == int((NOW + SETTINGS.ticket_ttl).timestamp())
    assert plan.annotations[coordinate.GRANT_ANNOTATION] == f"arch/{secret['metadata']['name']}"
    assert plan.annotations[coordinate.SOURCE_ANNOTATION] == "https://10.0.0.7:9447"
    assert "moves from node-a (https://10.0.0.7:9447)" in plan.patch[-1]["value"]
    (transfer,) = [op["value"] for op in plan.patch if op["path"] == "/status/transfer"]
    assert transfer == {
        "destinationNode": "node-b",
        "sourceEndpoint": "https://10.0.0.7:9447",
        "grant": f"arch/{secret['metadata']['name']}",
        "expires": fmt_time(NOW + SETTINGS.ticket_ttl),
    }


def test_ipv6_endpoint_is_bracketed() -> None:
    assert coordinate.node_endpoint(node("n", "fd00::7"), 9447) == "https://[fd00::7]:9447"


@pytest.mark.parametrize(
    ("source", "c", "message"),
    [
        (None, ckpt(), "source node node-a no longer exists"),
        (node("node-a", None), ckpt(), "source node node-a has no InternalIP"),
        (node("node-a"), ckpt(image=None), "no image recorded"),
    ],
)
def test_claims_that_cannot_work_fail_with_a_reason(
    source: dict[str, Any] | None, c: dict[str, Any], message: str
) -> None:
    plan = coordinate.plan_claim(c, pod("web-1"), source, key=KEY, now=NOW)
    assert isinstance(plan, coordinate.Fail) and message in plan.message


def test_grant_names_are_valid_and_per_object() -> None:
    a, b = ckpt(), ckpt()
    b["metadata"]["uid"] = "uid-2"
    assert coordinate.grant_name(a) != coordinate.grant_name(b)
    assert len(coordinate.grant_name(a)) < 64 and coordinate.grant_name(a).islower()


# --- hand-back, reports and revocation ------------------------------------------


def test_restoring_for_a_vanished_pod_is_handed_back() -> None:
    c = ckpt("Restoring")
    c["status"]["consumedBy"] = "web-1"
    assert coordinate.handback(c, pod("web-1")) is None
    back = coordinate.handback(c, None)
    assert back == {
        "status": {
            "phase": "Ready",
            "consumedBy": "",
            "message": "pod web-1 was deleted before restoring",
            "transfer": None,
        }
    }
    going = pod("web-1", metadata={"deletionTimestamp": "x"})
    assert "is being deleted" in coordinate.handback(c, going)["status"]["message"]  # type: ignore[index]
    assert coordinate.handback(ckpt("Ready"), None) is None


def test_daemon_reports_are_compare_and_swap() -> None:
    done = coordinate.consumed_patch("web-1", NOW)
    assert {"op": "test", "path": "/status/consumedBy", "value": "web-1"} in done
    assert done[2] == {"op": "replace", "path": "/status/phase", "value": "Consumed"}
    assert coordinate.failed_patch("web-1", "digest mismatch", retry=False)[2]["value"] == "Failed"
    assert coordinate.failed_patch("web-1", "timeout", retry=True)[2]["value"] == "Ready"
    assert coordinate.failed_patch("web-1", "x", retry=True)[-1] == {
        "op": "add", "path": "/status/transfer", "value": None}


def _grant_secret(c: dict[str, Any], now: datetime = NOW) -> dict[str, Any]:
    plan = coordinate.plan_claim(c, pod("web-1"), node("node-a"), key=KEY, now=now)
    assert isinstance(plan, coordinate.Claim) and plan.secret is not None
    s = copy.deepcopy(plan.secret)
    s["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in s.pop("stringData").items()}
    return s


def test_grants_are_revoked_when_their_checkpoint_moves_on() -> None:
    restoring = ckpt("Restoring")
    s = _grant_secret(restoring)
    name = s["metadata"]["name"]
    key = ("ns", "web-app")
    assert coordinate.grants_to_revoke([s], {key: restoring}, NOW) == []
    assert coordinate.grants_to_revoke([s], {key: ckpt("Consumed")}, NOW) == [name]
    assert coordinate.grants_to_revoke([s], {}, NOW) == [name]
    replaced = ckpt("Restoring")
    replaced["metadata"]["uid"] = "uid-2"
    assert coordinate.grants_to_revoke([s], {key: replaced}, NOW) == [name]
    later = NOW + SETTINGS.ticket_ttl + timedelta(seconds=1)
    assert coordinate.grants_to_revoke([s], {key: restoring}, later) == [name]


# --- trust -------------------------------------------------------------------------


def test_trust_secret_round_trip_and_errors() -> None:
    s = trust.new_trust_secret("arch")
    t = trust.trust_from_secret(s)
    assert len(t.key) == 32 and pem_common_name(t.ca.cert_pem) == "architect-transfer-ca"
    broken = copy.deepcopy(s)
    broken["data"]["key"] = "!!"
    with pytest.raises(
        trust.TrustError, match="Secret arch/architect-transfer: 'key' is not base64"
    ):
        trust.trust_from_secret(broken)
    broken["data"]["key"] = s["data"]["key"]
    del broken["data"]["ca.key"]
    with pytest.raises(trust.TrustError, match=r"no 'ca\.key'"):
        trust.trust_from_secret(broken)


def test_node_certificates_are_issued_and_renewed() -> None:
    cluster = trust.Trust(KEY, make_ca("ca"))
    nodes = [node("node-a", "10.0.0.1"), node("node-b", "10.0.0.2")]
    assert len(trust.nodes_needing_certs(nodes, [], cluster, NOW)) == 2
    secrets = [trust.node_cert_secret(cluster, n, "arch") for n in nodes]
    now = datetime.now(UTC)
    assert trust.nodes_needing_certs(nodes, secrets, cluster, now) == []
    cert = base64.b64decode(secrets[0]["data"]["tls.crt"])
    assert pem_common_name(cert) == "node-a"
    assert base64.b64decode(secrets[0]["data"]["ticket.key"]) == KEY
    assert "ca.key" not in secrets[0]["data"]  # a node never holds the CA's key
    # An address change, another CA or key, or the last month: issue again.
    moved = [node("node-a", "10.0.0.9"), nodes[1]]
    stale = trust.nodes_needing_certs(moved, secrets, cluster, now)
    assert [n["metadata"]["name"] for n in stale] == ["node-a"]
    assert (
        len(trust.nodes_needing_certs(nodes, secrets, trust.Trust(KEY, make_ca("other")), now)) == 2
    )
    assert (
        len(trust.nodes_needing_certs(nodes, secrets, trust.Trust(b"z" * 32, cluster.ca), now)) == 2
    )
    assert len(trust.nodes_needing_certs(nodes, secrets, cluster, now + timedelta(days=340))) == 2
    assert trust.node_secret_name("n" * 250).startswith("architect-node-")
    assert len(trust.node_secret_name("n" * 250)) < 64


# --- handlers with a fake API --------------------------------------------------


def _fake(c: dict[str, Any], *pods: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    kube.objects[("checkpoints", "ns", "web-app")] = c
    for p in pods:
        kube.pods[("ns", p["metadata"]["name"])] = p
    kube.nodes = {"node-a": node("node-a", "10.0.0.7")}
    kube.secrets = {}
    return kube


async def test_coordinate_claims_and_grants_across_nodes() -> None:
    c = ckpt()
    kube = _fake(c, pod("web-1"))
    events: list[tuple[str, str, str]] = []
    done = await controlplane.coordinate_checkpoint(
        c,
        kube=kube,
        now=NOW,
        key=KEY,
        settings=SETTINGS,
        post_event=lambda o, t, r, m: events.append((t, r, m)),
    )
    assert done.startswith("granted arch/architect-transfer-")
    assert c["status"]["phase"] == "Restoring" and c["status"]["consumedBy"] == "web-1"
    assert [
        s["metadata"]["labels"]["architect.loopholelabs.io/node"] for s in kube.secrets.values()
    ] == ["node-b"]
    assert c["metadata"]["annotations"][coordinate.SOURCE_ANNOTATION] == "https://10.0.0.7:9447"
    assert events[0][1] == "TransferGranted" and "web-1 on node-b" in events[0][2]
    # A second look finds it Restoring for a pod that exists: nothing to do.
    again = await controlplane.coordinate_checkpoint(
        c, kube=kube, now=NOW, key=KEY, settings=SETTINGS, post_event=lambda *a: None
    )
    assert again == "restoring"


async def test_coordinate_loses_a_race_quietly() -> None:
    c = ckpt()
    kube = _fake(copy.deepcopy(c), pod("web-1"))
    kube.objects[("checkpoints", "ns", "web-app")]["status"] = {
        "phase": "Restoring",
        "consumedBy": "x",
    }
    done = await controlplane.coordinate_checkpoint(
        c, kube=kube, now=NOW, key=KEY, settings=SETTINGS, post_event=lambda *a: None
    )
    assert done == "claimed by another" and kube.secrets == {}


async def test_coordinate_fails_when_the_source_node_is_gone() -> None:
    c = ckpt(sourceNode="node-gone")
    kube = _fake(c, pod("web-1"))
    done = await controlplane.coordinate_checkpoint(
        c, kube=kube, now=NOW, key=KEY, settings=SETTINGS, post_event=lambda *a: None
    )
    assert done == "failed" and c["status"]["phase"] == "Failed"
    assert "source node node-gone no longer exists" in c["status"]["message"]


async def test_load_trust_makes_the_secret_once() -> None:
    kube = _fake(ckpt())
    first = await controlplane.load_trust("arch", kube=kube)
    second = await controlplane.load_trust("arch", kube=kube)
    assert first == second and list(kube.secrets) == [("arch", "architect-transfer")]


class _SlowListKube(FakeKube):
    """The API's answers take a turn of the event loop, as real calls do: without
    serialisation, two claims interleave between their lists and their patches."""

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return copy.deepcopy(await super().list_pods(namespace, label_selector))

    async def list_objects(
        self, plural_: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return copy.deepcopy(await super().list_objects(plural_, namespace, label_selector))

    async def get_node(self, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return await super().get_node(name)


async def test_two_checkpoints_ready_together_are_claimed_by_two_replacements() -> None:
    # A drain evicts both replicas: their Checkpoints go Ready in the same second and
    # kopf looks at both at once (CI's kuttl drain-two-replicas: both were claimed by
    # one pod, the other replacement waited, started fresh, and one state was lost).
    kube = _SlowListKube()
    kube.nodes = {"node-a": node("node-a", "10.0.0.7")}
    kube.secrets = {}
    bodies = []
    for i, src in enumerate(("web-old-1", "web-old-2")):
        c = ckpt(sourcePod=src)
        c["metadata"] = {"namespace": "ns", "name": f"{src}-app", "uid": f"uid-{i}"}
        kube.objects[("checkpoints", "ns", f"{src}-app")] = c
        bodies.append(copy.deepcopy(c))
    for p in (pod("web-new-1", created="2026-11-23T11:59:00Z"),
              pod("web-new-2", created="2026-11-23T11:59:01Z")):
        kube.pods[("ns", p["metadata"]["name"])] = p
    done = await asyncio.gather(*(
        controlplane.coordinate_checkpoint(
            b, kube=kube, now=NOW, key=KEY, settings=SETTINGS, post_event=lambda *a: None)
        for b in bodies
    ))
    assert all(d.startswith("granted") for d in done), done
    holders = sorted(o["status"]["consumedBy"] for o in kube.objects.values())
    assert holders == ["web-new-1", "web-new-2"]
