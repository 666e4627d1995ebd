"""Every object the chart renders is accepted by the real API server (server-side dry run,
strict field validation): schema, CEL rules of CRDs, webhook configurations, RBAC."""

from __future__ import annotations

import re

import pytest

from charts.generate import cases, render
from e2e.pytest_cluster import Cluster
from e2e.tests.cluster.kube import kubectl, namespace
from tests.charts.render import objects

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("case", sorted(cases()))
def test_every_rendered_object_passes_server_dry_run(control_plane: Cluster, case: str) -> None:
    # A dry run creates no namespace: the trust namespace the chart makes must exist.
    with (
        namespace(control_plane, "architect-chart-dry") as ns,
        namespace(control_plane, "architect-chart-dry-trust") as trust_ns,
    ):
        text = render(cases()[case], [f"trust.namespace={trust_ns}"], namespace=ns)
        assert f"namespace: {trust_ns}\n" in text
        want = objects(text)
        proc = kubectl(
            control_plane,
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
            stdin=text,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        accepted = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
        assert len(accepted) == len(want), proc.stdout
        for obj in want:
            kind = str(obj["kind"]).lower()
            # kubectl prints KIND[.GROUP]/NAME created|configured (server dry run)
            line = re.compile(rf"^{kind}(\.[a-z0-9.]+)?/{re.escape(obj['metadata']['name'])} ")
            assert any(line.match(a) for a in accepted), (kind, obj["metadata"]["name"])


def test_server_refuses_a_broken_render(control_plane: Cluster) -> None:
    # The dry run can fail: a webhook without its service name is refused by name.
    with namespace(control_plane, "architect-chart-dry") as ns:
        text = render(None, namespace=ns).replace("name: architect-webhook\n", "name: ''\n")
        proc = kubectl(
            control_plane, "apply", "--dry-run=server", "-f", "-", stdin=text, check=False
        )
        assert proc.returncode != 0
        assert "clientConfig.service.name" in proc.stderr
