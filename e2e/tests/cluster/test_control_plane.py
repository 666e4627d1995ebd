"""The control-plane tier is a real, correctly configured API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from e2e.pytest_cluster import REPO, Cluster
from e2e.tests.cluster.kube import eventually, kubectl, namespace

pytestmark = pytest.mark.cluster


def _pinned(name: str) -> str:
    out = subprocess.run(["bash", "-c", f". {REPO}/e2e/cluster/lib/versions.sh; echo ${name}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_server_reports_the_pinned_version(control_plane: Cluster) -> None:
    version = json.loads(kubectl(control_plane, "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == _pinned("K8S_VERSION")
    assert version["clientVersion"]["gitVersion"] == _pinned("K8S_VERSION")


def test_kubeconfig_fixture_is_the_test_clusters(kubeconfig: Path) -> None:
    assert kubeconfig == Path("/var/lib/architect-e2e/kubeconfig")
    assert "current-context: architect-e2e" in kubeconfig.read_text()


def test_rbac_denies_an_unbound_user(control_plane: Cluster) -> None:
    proc = kubectl(control_plane, "auth", "can-i", "create", "pods", "--as", "nobody",
                   check=False)
    assert proc.stdout.strip() == "no"
    assert kubectl(control_plane, "auth", "can-i", "create", "pods").stdout.strip() == "yes"


def test_validating_admission_policy_is_enforced(control_plane: Cluster) -> None:
    with namespace(control_plane, "vap") as ns:
        name = f"e2e-deny-{ns}"
        policy = f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}}
  validations:
  - expression: "!has(object.data) || !('forbidden' in object.data)"
    message: "e2e: key 'forbidden' is not allowed"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
"""
        kubectl(control_plane, "apply", "-f", "-", stdin=policy)
        try:
            attempt = iter(range(10_000))

            def refused() -> bool:
                cm = f"probe-{next(attempt)}"
                proc = kubectl(control_plane, "create", "configmap", cm, "-n", ns,
                               "--from-literal=forbidden=1", check=False)
                return proc.returncode != 0 and "key 'forbidden' is not allowed" in proc.stderr

            # The policy takes effect asynchronously once its type check ran.
            eventually("the ValidatingAdmissionPolicy to deny", refused, timeout_s=60)
            kubectl(control_plane, "create", "configmap", "fine", "-n", ns,
                    "--from-literal=allowed=1")
        finally:
            kubectl(control_plane, "delete", "validatingadmissionpolicybinding,"
                    "validatingadmissionpolicy", name, check=False)


def test_crd_cel_rules_are_enforced_by_the_api_server(control_plane: Cluster) -> None:
    kubectl(control_plane, "apply", "--server-side", "--force-conflicts", "-f",
            str(REPO / "crds"))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/hibernationpolicies.architect.loopholelabs.io")
    with namespace(control_plane, "cel") as ns:
        bad = """
apiVersion: architect.loopholelabs.io/v1alpha1
kind: HibernationPolicy
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: x}}
  runtime: runc
  managedPod: true
"""
        proc = kubectl(control_plane, "apply", "-n", ns, "-f", "-", stdin=bad, check=False)
        assert proc.returncode != 0
        assert "managedPod needs runtime runsc" in proc.stderr
