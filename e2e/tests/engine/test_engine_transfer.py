"""A checkpoint moves between two nodes: the operator against the real API
server claims it for a replacement pod on another node and issues the grant;
two daemons (the real runtime/transfer server and client, on loopback, with
the node certificates and transfer key the operator keeps in Secrets) move a
real image; the daemon's report moves the Checkpoint on and revokes the grant.

The two nodes are Node objects this test creates (unschedulable, tainted, no
kubelet): the control plane only reads their names and addresses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane import coordinate, trust
from architect.engine.controlplane.transfer import grant_from_data
from architect.runtime.shim.plan import READY_MARK, source_slot
from architect.runtime.transfer import NodeTLS, TransferError, TransferServer, export, fetch
from architect.runtime.transfer.images import outgoing_dir
from e2e.tests.cluster.kube import eventually, get_json, kubectl
from e2e.tests.engine.harness import Operator
from e2e.tests.engine.test_engine_operator import _events, _set_status

pytestmark = pytest.mark.cluster

P = "architect.loopholelabs.io/"
HASH = "h7x"


@pytest.fixture
def nodes(operator: Operator) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = (f"architect-e2e-xfer-{tag}-src", f"architect-e2e-xfer-{tag}-dst")
    for name in names:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"architect-e2e": "transfer"}},
            # Nothing may be scheduled here: the cluster may be shared.
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "architect-e2e/fake", "effect": "NoSchedule"}],
            },
        }
        kubectl(operator.cluster, "create", "-f", "-", stdin=json.dumps(node))
        status = {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}
        kubectl(
            operator.cluster,
            "patch",
            f"node/{name}",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
    try:
        yield names
    finally:
        kubectl(operator.cluster, "delete", "node", *names, "--ignore-not-found", check=False)


def _secret(op: Operator, name: str, namespace: str | None = None) -> dict[str, bytes]:
    obj = get_json(op.cluster, f"secret/{name}", "-n", namespace or op.system_namespace)
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def _node_tls(op: Operator, node: str) -> NodeTLS:
    name = trust.node_secret_name(node)
    eventually(
        f"node certificate {name}",
        lambda: (
            kubectl(
                op.cluster, "get", f"secret/{name}", "-n", op.system_namespace, check=False
            ).returncode
            == 0
        ),
        timeout_s=30,
    )
    data = _secret(op, name)
    return NodeTLS(node, data["ca.crt"], data["tls.crt"], data["tls.key"])


def _checkpoint(op: Operator, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = get_json(op.cluster, f"checkpoint/{name}", "-n", ns)
    return obj


def _make_checkpoint(
    op: Operator, ns: str, name: str, src: str, root: Path, container: str
) -> None:
    d = root / "handover" / HASH / container / source_slot("ns", name)
    d.mkdir(parents=True)
    (d / "pages-1.img").write_bytes(os.urandom(1 << 20))
    (d / "core-1.img").write_bytes(b"core")
    (d / READY_MARK).touch()
    ref = export(root, src, HASH, container, d.name)  # what the source daemon records
    body = {
        "apiVersion": "architect.loopholelabs.io/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {"name": name, "labels": {P + "pod-template-hash": HASH}},
        "spec": {
            "templateHash": HASH,
            "container": container,
            "runtime": "runc",
            "sourcePod": "web-old",
            "sourceNode": src,
            "reason": "Migration",
            "image": ref.as_spec(),
        },
    }
    kubectl(op.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(body))
    eventually(
        "Pending", lambda: (_checkpoint(op, ns, name).get("status") or {}).get("phase") == "Pending"
    )
    _set_status(op, "checkpoint", ns, name, {"phase": "Ready", "message": "image written"})


def _replacement(op: Operator, ns: str, name: str, node: str, container: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {P + "pod-template-hash": HASH}},
        "spec": {
            "nodeName": node,  # bound, as the scheduler would
            "containers": [{"name": container, "image": "architect.local/pause:3.10"}],
        },
    }
    kubectl(op.cluster, "apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))


def _status_patch(op: Operator, ns: str, name: str, patch: list[dict[str, Any]]) -> None:
    kubectl(
        op.cluster,
        "patch",
        f"checkpoint/{name}",
        "-n",
        ns,
        "--subresource=status",
        "--type=json",
        "-p",
        json.dumps(patch),
    )


def _phase(op: Operator, ns: str, name: str) -> str:
    return str((_checkpoint(op, ns, name).get("status") or {}).get("phase"))


def _lookup(op: Operator) -> Any:
    async def lookup(ns: str, name: str) -> Mapping[str, Any] | None:
        proc = await asyncio.to_thread(
            kubectl, op.cluster, "get", f"checkpoint/{name}", "-n", ns, "-o", "json", check=False
        )
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    return lookup


def test_checkpoint_moves_to_a_replacement_on_another_node(
    operator: Operator, nodes: tuple[str, str], tmp_path: Path
) -> None:
    src, dst = nodes
    ns = operator.namespace("eng-xfer")
    _make_checkpoint(operator, ns, "web-app", src, tmp_path / "src", "app")
    _replacement(operator, ns, "web-new", dst, "app")

    # The control plane claims it for the replacement and grants the transfer.
    eventually("claimed", lambda: _phase(operator, ns, "web-app") == "Restoring", timeout_s=30)
    ck = _checkpoint(operator, ns, "web-app")
    assert ck["status"]["consumedBy"] == "web-new"
    ann = ck["metadata"]["annotations"]
    assert ann[coordinate.SOURCE_ANNOTATION] == f"https://127.0.0.1:{operator.transfer_port}"
    assert ann[coordinate.DESTINATION_ANNOTATION] == dst
    grant_ns, _, grant_name = ann[coordinate.GRANT_ANNOTATION].partition("/")
    assert grant_ns == operator.system_namespace
    assert f"moves from {src}" in ck["status"]["message"]
    # The same arrangement in the status, as the CRD's schema keeps it.
    assert ck["status"]["transfer"]["destinationNode"] == dst
    assert ck["status"]["transfer"]["grant"] == ann[coordinate.GRANT_ANNOTATION]
    assert ck["status"]["transfer"]["sourceEndpoint"] == ann[coordinate.SOURCE_ANNOTATION]
    eventually(
        "transition time observed",
        lambda: bool(_checkpoint(operator, ns, "web-app")["status"].get("lastTransitionTime")),
    )
    eventually(
        "TransferGranted event", lambda: "TransferGranted" in _events(operator, ns, "web-app")
    )
    # The destination daemon finds its grant with a label selector.
    listed = get_json(
        operator.cluster,
        "secrets",
        "-n",
        grant_ns,
        "-l",
        f"{P}node={dst},{coordinate.GRANT_LABEL}=true",
    )["items"]
    assert [s["metadata"]["name"] for s in listed] == [grant_name]

    grant = grant_from_data({k: v.decode() for k, v in _secret(operator, grant_name).items()})
    src_tls, dst_tls = _node_tls(operator, src), _node_tls(operator, dst)
    # The source daemon verifies tickets with the key in its own node Secret.
    key = _secret(operator, trust.node_secret_name(src))[trust.TICKET_KEY_FIELD]
    assert key == _secret(operator, trust.TRUST_SECRET, operator.trust_namespace)["key"]
    # The CA's key is in the operator's trust namespace, never where daemons read.
    assert kubectl(operator.cluster, "get", f"secret/{trust.TRUST_SECRET}", "-n",
                   operator.system_namespace, check=False).returncode != 0
    assert "ca.key" not in _secret(operator, trust.node_secret_name(src))

    async def move() -> Path:
        server = TransferServer(tmp_path / "src", src_tls, key, _lookup(operator))
        await server.start("127.0.0.1", operator.transfer_port)
        try:
            # Another node of the cluster, with its own valid certificate, is refused.
            intruder = NodeTLS(dst, src_tls.ca_pem, src_tls.cert_pem, src_tls.key_pem)
            with pytest.raises(TransferError, match=f"is for node {dst}; the caller is {src}"):
                await fetch(grant, tmp_path / "elsewhere", intruder)
            return await fetch(grant, tmp_path / "dst", dst_tls)
        finally:
            await server.close()

    dest = asyncio.run(move())
    assert (dest / READY_MARK).exists()
    assert (dest / "core-1.img").read_bytes() == b"core"
    assert (dest / "pages-1.img").read_bytes() == (
        tmp_path / "src" / "handover" / HASH / "app" / source_slot("ns", "web-app") / "pages-1.img"
    ).read_bytes()

    # The destination daemon reports the restore; the grant is revoked.
    _status_patch(operator, ns, "web-app", coordinate.consumed_patch("web-new", datetime.now(UTC)))
    eventually("Consumed event", lambda: "CheckpointConsumed" in _events(operator, ns, "web-app"))
    eventually(
        "grant revoked",
        lambda: (
            kubectl(
                operator.cluster, "get", f"secret/{grant_name}", "-n", grant_ns, check=False
            ).returncode
            != 0
        ),
        timeout_s=30,
    )
    assert outgoing_dir(tmp_path / "src", HASH, "app").is_dir()  # the source daemon's to drop


def test_failed_transfer_and_vanished_pod(
    operator: Operator, nodes: tuple[str, str], tmp_path: Path
) -> None:
    src, dst = nodes
    ns = operator.namespace("eng-xfer-fail")
    _make_checkpoint(operator, ns, "bad", src, tmp_path / "src", "app")
    _make_checkpoint(operator, ns, "gone", src, tmp_path / "src2", "side")
    _replacement(operator, ns, "web-new", dst, "app")
    _replacement(operator, ns, "web-side", dst, "side")
    eventually("claimed", lambda: _phase(operator, ns, "bad") == "Restoring", timeout_s=30)
    eventually("claimed", lambda: _phase(operator, ns, "gone") == "Restoring", timeout_s=30)
    bad_grant = _checkpoint(operator, ns, "bad")["metadata"]["annotations"][
        coordinate.GRANT_ANNOTATION
    ]

    # The image was tampered with on the source: the destination refuses it and reports.
    payload = next(
        p
        for p in outgoing_dir(tmp_path / "src", HASH, "app",
                              _checkpoint(operator, ns, "bad")["spec"]["image"]["digest"]).iterdir()
        if p.name.startswith("payload")
    )
    data = bytearray(payload.read_bytes())
    data[-100] ^= 0xFF
    payload.write_bytes(bytes(data))
    grant = grant_from_data(
        {k: v.decode() for k, v in _secret(operator, bad_grant.partition("/")[2]).items()}
    )
    key = _secret(operator, trust.node_secret_name(src))[trust.TICKET_KEY_FIELD]

    async def attempt() -> str:
        server = TransferServer(tmp_path / "src", _node_tls(operator, src), key, _lookup(operator))
        await server.start("127.0.0.1", operator.transfer_port)
        try:
            await fetch(grant, tmp_path / "dst", _node_tls(operator, dst))
        except TransferError as e:
            return str(e)
        finally:
            await server.close()
        return ""

    error = asyncio.run(attempt())
    assert "digest mismatch" in error
    assert not (tmp_path / "dst" / "handover" / HASH / "app").exists()
    _status_patch(operator, ns, "bad", coordinate.failed_patch("web-new", error, retry=False))
    eventually("Failed event", lambda: "CheckpointFailed" in _events(operator, ns, "bad"))
    ck = _checkpoint(operator, ns, "bad")
    assert ck["status"]["phase"] == "Failed" and "digest mismatch" in ck["status"]["message"]
    eventually(
        "grant revoked",
        lambda: (
            kubectl(
                operator.cluster,
                "get",
                f"secret/{bad_grant.partition('/')[2]}",
                "-n",
                operator.system_namespace,
                check=False,
            ).returncode
            != 0
        ),
        timeout_s=30,
    )

    # The other replacement is deleted before it restored: handed back for another.
    kubectl(operator.cluster, "delete", "pod", "web-side", "-n", ns, "--grace-period=0", "--force")
    eventually("handed back", lambda: _phase(operator, ns, "gone") == "Ready", timeout_s=30)
    assert (
        "web-side was deleted before restoring"
        in _checkpoint(operator, ns, "gone")["status"]["message"]
    )
