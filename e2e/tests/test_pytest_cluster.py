"""Unit tests of the cluster fixture's guard: only the test cluster's context passes."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from e2e.pytest_cluster import CONTEXT, SERVER, NotTestCluster, check_kubeconfig

CA = b"-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n"


def _doc() -> dict[str, Any]:
    return {
        "current-context": CONTEXT,
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "admin"}}],
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": SERVER, "certificate-authority-data": base64.b64encode(CA).decode()}}],
    }


def test_the_test_clusters_kubeconfig_passes() -> None:
    check_kubeconfig(_doc(), CA)
    check_kubeconfig(_doc(), None)  # before `up` made a CA, name and server still checked


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update({"current-context": "prod"}), "current-context is 'prod'"),
        (lambda d: d["clusters"][0]["cluster"].update({"server": "https://10.0.0.1:6443"}),
         "points at 'https://10.0.0.1:6443'"),
        (lambda d: d["clusters"][0]["cluster"].update(
            {"certificate-authority-data": base64.b64encode(b"other").decode()}),
         "trusts a CA other"),
        (lambda d: d.update({"contexts": []}), "no context named"),
        (lambda d: d["contexts"][0]["context"].update({"cluster": "elsewhere"}),
         "no cluster named 'elsewhere'"),
    ],
)
def test_anything_else_is_refused_with_the_reason(mutate: Any, reason: str) -> None:
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(NotTestCluster, match=reason):
        check_kubeconfig(doc, CA)


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(NotTestCluster, match="not a YAML mapping"):
        check_kubeconfig(["x"], CA)
