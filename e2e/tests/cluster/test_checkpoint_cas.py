"""The Checkpoint compare-and-swap patches against the real API server.

The control plane's ``claim_patch`` and the daemon's ``reclaim_patch`` rely on
JSON patch ``test`` ops being checked by the API server's own patch code (and on
``replace`` of a status field the object may not have yet); unit tests only see
FakeApi. Here both go through ``Kube.try_patch_status`` to the status
subresource of a Checkpoint made by the daemon's ``checkpoint_body``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import config

from architect.engine.controlplane.phases import claim_patch
from architect.engine.kubeclient import Kube
from architect.runtime.daemon.checkpointobjects import (
    Written,
    checkpoint_body,
    reclaim_patch,
    written_status,
)
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import kubectl, namespace

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def kube(control_plane: Cluster) -> Iterator[Kube]:
    kubectl(control_plane, "apply", "-f", str(ROOT / "crds" / "checkpoints.yaml"))
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield Kube(api)
    finally:
        api.close()


def _ready_checkpoint(kube: Kube, ns: str) -> str:
    w = Written(namespace=ns, pod="web-old", container="app", template_hash="abc123",
                node="node-a")
    image = {"location": "node://node-a/x", "digest": "sha256:" + "0" * 64, "sizeBytes": 1}
    body = checkpoint_body(w, image, handover_digest="sha256:" + "1" * 64)
    created = cast(dict[str, Any], kube.custom.create_namespaced_custom_object(
        "architect.loopholelabs.io", "v1alpha1", ns, "checkpoints", body))
    name = str(created["metadata"]["name"])
    patch = written_status(None, ok=True, message="written")
    assert patch is not None
    asyncio.run(kube.patch_status("checkpoints", ns, name, patch))
    return name


def _status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    obj = cast(dict[str, Any], kube.custom.get_namespaced_custom_object_status(
        "architect.loopholelabs.io", "v1alpha1", ns, "checkpoints", name))
    return dict(obj.get("status") or {})


def test_claim_is_a_compare_and_swap_on_the_real_server(
    control_plane: Cluster, kube: Kube
) -> None:
    with namespace(control_plane, "cas") as ns:
        name = _ready_checkpoint(kube, ns)
        # A Ready status has no consumedBy yet: the claim's replace must still apply.
        first = asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                  claim_patch("web-new-1", NOW)))
        assert first is not None, "the claim of a Ready checkpoint was refused"
        assert _status(kube, ns, name)["consumedBy"] == "web-new-1"
        # A second replacement's claim loses: the phase is Restoring now.
        second = asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                   claim_patch("web-new-2", NOW)))
        assert second is None
        st = _status(kube, ns, name)
        assert (st["phase"], st["consumedBy"]) == ("Restoring", "web-new-1")


def test_reclaim_moves_only_the_claim_it_names(control_plane: Cluster, kube: Kube) -> None:
    with namespace(control_plane, "cas") as ns:
        name = _ready_checkpoint(kube, ns)
        assert asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                 claim_patch("web-new-1", NOW))) is not None
        # Naming the wrong holder: the server's test op refuses, nothing changes.
        wrong = asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                  reclaim_patch("web-other", "web-new-2", NOW)))
        assert wrong is None
        assert _status(kube, ns, name)["consumedBy"] == "web-new-1"
        moved = asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                  reclaim_patch("web-new-1", "web-new-2", NOW)))
        assert moved is not None
        st = _status(kube, ns, name)
        assert (st["phase"], st["consumedBy"]) == ("Restoring", "web-new-2")
        assert "web-new-1" in st["message"]
        # Once Consumed, a reclaim no longer applies.
        kube.custom.patch_namespaced_custom_object_status(
            "architect.loopholelabs.io", "v1alpha1", ns, "checkpoints", name,
            {"status": {"phase": "Consumed"}})
        late = asyncio.run(kube.try_patch_status("checkpoints", ns, name,
                                                 reclaim_patch("web-new-2", "web-new-3", NOW)))
        assert late is None
        assert _status(kube, ns, name)["consumedBy"] == "web-new-2"


def test_try_patch_of_a_gone_checkpoint_is_none(control_plane: Cluster, kube: Kube) -> None:
    with namespace(control_plane, "cas") as ns:
        assert asyncio.run(kube.try_patch_status("checkpoints", ns, "nothing-here",
                                                 claim_patch("web-new-1", NOW))) is None

