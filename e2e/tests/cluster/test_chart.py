"""`helm install` of charts/architect on the e2e node: the operator runs from the
architect image, the API server calls its webhooks through the chart's Service,
annotated workloads get their compiled policies, bad annotations are refused at
`kubectl apply` with the compiler's message, the transfer CA's key sits in a
namespace no daemon can read, and `helm uninstall` leaves nothing that could
block the cluster.

The release's webhooks only see namespaces labelled for this test, so other
engineers' namespaces on the shared cluster are never touched. The daemon's
DaemonSet selects no node (the node's daemon belongs to other tests) but its
ServiceAccount and RBAC are installed, so what it may read is checked for real.
The RuntimeClasses are off: cluster-wide objects other tests own (the render
tests cover them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from architect.engine.controlplane import trust
from e2e.images import architect as image
from e2e.pytest_cluster import NODE, Cluster
from e2e.tests.cluster.kube import eventually, get_json, kubectl

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "architect"
CACHE = Path("/var/cache/architect")
HELM = CACHE / "bin" / "helm"
CONTAINERD = Path("/run/architect-e2e/containerd/containerd.sock")
LABEL = "architect.loopholelabs.io/chart-test"
HELM_LABEL_KEY = LABEL.replace(".", "\\.")  # --set splits keys at unescaped dots
INSTALL_TIMEOUT_S = 240
NO_NODE = "architect.loopholelabs.io/chart-test-no-node"  # no node has this label
NO_NODE_KEY = NO_NODE.replace(".", "\\.")


@dataclass(frozen=True)
class Release:
    cluster: Cluster
    name: str
    namespace: str  # where the chart is installed
    apps: str  # a namespace the webhooks see
    trust: str  # the chart's trust namespace (default: <namespace>-trust)
    image_ref: str
    install_s: float  # helm install until the operator pod is Ready


def helm(cluster: Cluster, *args: str, timeout: float = INSTALL_TIMEOUT_S + 30) -> str:
    home = Path("/tmp/architect-helm")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    cmd = [
        str(HELM),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--kube-context",
        cluster.context,
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def deployment(name: str, annotations: dict[str, str]) -> str:
    # replicas 0: admission compiles the template; no pod needs the shim to run.
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {
                        "runtimeClassName": "runc-architect",
                        "containers": [{"name": "app", "image": "architect.local/busybox:1.35"}],
                    },
                },
            },
        }
    )


def _cluster_scoped(rel: Release) -> list[str]:
    out = kubectl(
        rel.cluster,
        "get",
        "mutatingwebhookconfigurations,"
        "validatingwebhookconfigurations,clusterroles,clusterrolebindings",
        "-l",
        f"app.kubernetes.io/instance={rel.name}",
        "-o",
        "name",
    ).stdout
    return out.split()


@pytest.fixture(scope="module")
def release(node_cluster: Cluster) -> Iterator[Release]:
    built = image.ensure(CACHE / "images")
    image.import_image(built, CONTAINERD)
    tag = built.ref.rsplit(":", 1)[1]
    label = uuid.uuid4().hex[:6]
    rel = Release(
        node_cluster,
        f"chart-{label}",
        f"architect-chart-{label}",
        f"architect-chart-apps-{label}",
        f"architect-chart-{label}-trust",
        built.ref,
        0.0,
    )
    for ns in (rel.namespace, rel.apps):
        kubectl(node_cluster, "create", "namespace", ns)
    kubectl(node_cluster, "label", "namespace", rel.apps, f"{LABEL}={label}")
    # What an older release left where daemons read: the operator must delete it.
    kubectl(
        node_cluster,
        "-n",
        rel.namespace,
        "create",
        "secret",
        "generic",
        trust.TRUST_SECRET,
        "--from-literal=key=left-by-an-older-release",
    )
    try:
        start = time.monotonic()
        helm(
            node_cluster,
            "install",
            rel.name,
            str(CHART),
            "--namespace",
            rel.namespace,
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set-string",
            f"daemon.nodeSelector.{NO_NODE_KEY}=none",
            "--set",
            "runtimeClasses.create=false",
            "--set-string",
            f"admission.namespaceSelector.matchLabels.{HELM_LABEL_KEY}={label}",
            "--wait",
            "--timeout",
            f"{INSTALL_TIMEOUT_S}s",
        )
        kubectl(
            node_cluster,
            "-n",
            rel.namespace,
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app.kubernetes.io/component=operator",
            "--timeout=60s",
        )
        rel = Release(
            rel.cluster,
            rel.name,
            rel.namespace,
            rel.apps,
            rel.trust,
            rel.image_ref,
            time.monotonic() - start,
        )
        how = f"built in {built.seconds:.1f}s" if built.seconds else "cached"
        size = image.image_size(built.archive) / 2**20
        print(
            f"\nchart: image {built.ref} ({how}, {size:.0f} MiB); "
            f"install to Ready {rel.install_s:.1f}s"
        )
        yield rel
    finally:
        # Whatever failed: no webhook configuration of this release may outlive it.
        subprocess.run(
            [
                str(HELM),
                "--kubeconfig",
                str(node_cluster.kubeconfig),
                "uninstall",
                rel.name,
                "--namespace",
                rel.namespace,
                "--ignore-not-found",
                "--wait",
                "--timeout",
                "60s",
            ],
            capture_output=True,
            timeout=90,
            check=False,
            env={
                **os.environ,
                "HELM_CONFIG_HOME": "/tmp/architect-helm/config",
                "HELM_CACHE_HOME": "/tmp/architect-helm/cache",
                "HELM_DATA_HOME": "/tmp/architect-helm/data",
            },
        )
        for ns in (rel.apps, rel.namespace, rel.trust):
            kubectl(
                node_cluster,
                "delete",
                "namespace",
                ns,
                "--wait=false",
                "--ignore-not-found",
                check=False,
            )


def _operator_pod(rel: Release) -> dict[str, Any]:
    pods = get_json(
        rel.cluster, "pods", "-n", rel.namespace, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_operator_runs_the_architect_image_unprivileged(release: Release) -> None:
    pod = _operator_pod(release)
    assert pod["spec"]["containers"][0]["image"] == release.image_ref
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0
    # The image carries what the daemon needs too (Debian's iptables, netfilterqueue,
    # the daemon's entry point with the flags the chart passes).
    out = kubectl(
        release.cluster,
        "-n",
        release.namespace,
        "exec",
        pod["metadata"]["name"],
        "--",
        "sh",
        "-c",
        "id -u; iptables --version; python3 -c 'import netfilterqueue; "
        "print(netfilterqueue.__version__)'; python3 -m architect.runtime.daemon --help",
    ).stdout
    assert out.split("\n")[0] == "65534"
    assert "nf_tables" in out and "\n1.1.0\n" in out
    assert "--shim-run" in out and "--kubelet-root" in out


def test_annotated_deployment_gets_its_compiled_policies(release: Release) -> None:
    kubectl(
        release.cluster,
        "-n",
        release.apps,
        "apply",
        "-f",
        "-",
        stdin=deployment(
            "web",
            {
                "architect.loopholelabs.io/managed-containers": '["app"]',
                "architect.loopholelabs.io/scaledown-durations": '{"app":"45s"}',
                "architect.loopholelabs.io/network-monitor": '{"app":"packets"}',
            },
        ),
    )
    uid = get_json(release.cluster, "deployment", "web", "-n", release.apps)["metadata"]["uid"]

    def compiled() -> bool:
        got = kubectl(
            release.cluster, "-n", release.apps, "get", "hp,mp", "-o", "json", check=False
        )
        return got.returncode == 0 and len(json.loads(got.stdout)["items"]) == 2

    eventually("HibernationPolicy and MigrationPolicy of Deployment web", compiled, 30)
    hp = get_json(release.cluster, "hp", "web", "-n", release.apps)
    assert hp["metadata"]["ownerReferences"][0]["uid"] == uid
    (container,) = hp["spec"]["containers"]
    assert container["name"] == "app" and container["scaledownAfter"] == "45s"
    assert container["wakeOn"]["network"] == "packets"
    mp = get_json(release.cluster, "mp", "web", "-n", release.apps)
    assert mp["metadata"]["ownerReferences"][0]["uid"] == uid


def test_bad_annotation_is_refused_with_the_compilers_message(release: Release) -> None:
    bad = deployment(
        "broken",
        {
            "architect.loopholelabs.io/managed-containers": '["app"]',
            "architect.loopholelabs.io/scaledown-durations": '{"app":"soon"}',
        },
    )
    compiled = subprocess.run(
        ["architect", "compile", "-f", "-"],
        input=bad,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert compiled.returncode == 1
    message = compiled.stderr.strip().split("(Deployment/broken): ", 1)[1]
    assert message.startswith("architect.loopholelabs.io/scaledown-durations: value 'soon'")
    proc = kubectl(release.cluster, "-n", release.apps, "apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert 'admission webhook "workloads.architect.loopholelabs.io" denied' in proc.stderr
    assert message in proc.stderr
    assert (
        kubectl(
            release.cluster, "-n", release.apps, "get", "deployment", "broken", check=False
        ).returncode
        != 0
    )


def test_other_namespaces_never_reach_the_webhooks(release: Release) -> None:
    # Same bad annotation in an unlabelled namespace: this release does not see it.
    hooks = get_json(
        release.cluster,
        "validatingwebhookconfigurations",
        "-l",
        f"app.kubernetes.io/instance={release.name}",
    )["items"]
    assert len(hooks) == 1
    for hook in hooks[0]["webhooks"]:
        exprs = hook["namespaceSelector"]["matchExpressions"]
        assert release.namespace in exprs[0]["values"]
        assert LABEL in hook["namespaceSelector"]["matchLabels"]


def test_metrics_service_reaches_the_operator(release: Release) -> None:
    eps = get_json(
        release.cluster, "endpoints", "-n", release.namespace, f"{release.name}-architect-metrics"
    )
    (subset,) = eps["subsets"]
    ip, port = subset["addresses"][0]["ip"], subset["ports"][0]["port"]
    # Host to pod IP works on this cluster (no kube-proxy for ClusterIPs).
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'architect_admission_reviews_total{allowed="false",handler="validate-workload"}' in text


def test_operator_works_within_its_rbac(release: Release) -> None:
    # The control plane's pass issues a certificate Secret for every Node into the
    # release namespace: nodes read, secrets written, through the chart's RBAC only.
    def node_cert() -> bool:
        return (
            kubectl(
                release.cluster,
                "-n",
                release.namespace,
                "get",
                "secret",
                f"architect-node-{NODE}",
                check=False,
            ).returncode
            == 0
        )

    eventually(f"Secret architect-node-{NODE} in {release.namespace}", node_cert, 60)
    logs = kubectl(
        release.cluster,
        "-n",
        release.namespace,
        "logs",
        f"deployment/{release.name}-architect-operator",
    ).stdout
    assert "Forbidden" not in logs and "(403)" not in logs, logs[-3000:]


def _can_i(rel: Release, account: str, verb: str, what: str, namespace: str) -> str:
    """`kubectl auth can-i` as a ServiceAccount of the release: the API server's answer."""
    who = f"system:serviceaccount:{rel.namespace}:{rel.name}-architect-{account}"
    proc = kubectl(
        rel.cluster, "auth", "can-i", verb, what, "-n", namespace, f"--as={who}", check=False
    )
    return proc.stdout.strip()


def _exists(rel: Release, what: str, namespace: str) -> bool:
    return kubectl(rel.cluster, "get", what, "-n", namespace, check=False).returncode == 0


def test_only_the_operator_reaches_the_transfer_ca(release: Release) -> None:
    secret = f"secret/{trust.TRUST_SECRET}"
    node_secret = f"secret/{trust.node_secret_name(NODE)}"
    eventually(
        f"{secret} in {release.trust}, gone from {release.namespace}",
        lambda: (
            _exists(release, secret, release.trust)
            and not _exists(release, secret, release.namespace)
        ),
        60,
    )
    eventually(
        f"{node_secret} in {release.namespace}",
        lambda: _exists(release, node_secret, release.namespace),
        60,
    )
    ca = get_json(release.cluster, secret, "-n", release.trust)["data"]
    node = get_json(release.cluster, node_secret, "-n", release.namespace)["data"]
    # The node's certificate comes from the CA kept apart, and carries no CA key.
    assert node[trust.CA_CERT_FIELD] == ca[trust.CA_CERT_FIELD]
    assert trust.CA_KEY_FIELD in ca and trust.CA_KEY_FIELD not in node

    for verb, what in (("get", secret), ("list", "secrets"), ("watch", "secrets")):
        assert _can_i(release, "daemon", verb, what, release.trust) == "no", verb
    # The same question where the daemon does read: the check can say yes.
    assert _can_i(release, "daemon", "get", node_secret, release.namespace) == "yes"
    assert _can_i(release, "daemon", "list", "secrets", release.namespace) == "yes"
    # The operator: that one Secret, made once; nothing else of the namespace.
    assert _can_i(release, "operator", "get", secret, release.trust) == "yes"
    assert _can_i(release, "operator", "create", "secrets", release.trust) == "yes"
    assert _can_i(release, "operator", "list", "secrets", release.trust) == "no"
    assert _can_i(release, "operator", "get", "secret/other", release.trust) == "no"


def test_helm_upgrade_keeps_the_certificate(release: Release) -> None:
    secret = f"{release.name}-architect-webhook-tls"
    before = get_json(release.cluster, "secret", secret, "-n", release.namespace)["data"]
    helm(
        release.cluster,
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        "admission.timeoutSeconds=7",
        "--wait",
        "--timeout",
        "120s",
    )
    after = get_json(release.cluster, "secret", secret, "-n", release.namespace)["data"]
    assert after == before  # a new CA would break the running operator's certificate
    (hooks,) = get_json(
        release.cluster,
        "validatingwebhookconfigurations",
        "-l",
        f"app.kubernetes.io/instance={release.name}",
    )["items"]
    assert {h["timeoutSeconds"] for h in hooks["webhooks"]} == {7}
    assert {h["clientConfig"]["caBundle"] for h in hooks["webhooks"]} == {before["ca.crt"]}
    # The webhook still answers with the kept certificate.
    proc = kubectl(
        release.cluster,
        "-n",
        release.apps,
        "apply",
        "-f",
        "-",
        check=False,
        stdin=deployment(
            "broken",
            {
                "architect.loopholelabs.io/managed-containers": '["app"]',
                "architect.loopholelabs.io/scaledown-durations": '{"app":"0s"}',
            },
        ),
    )
    assert proc.returncode != 0 and "scaledown-durations: value '0s'" in proc.stderr


def test_helm_uninstall_removes_everything(release: Release) -> None:
    assert _cluster_scoped(release)  # the check below can fail
    helm(
        release.cluster,
        "uninstall",
        release.name,
        "--namespace",
        release.namespace,
        "--wait",
        "--timeout",
        "120s",
    )
    assert _cluster_scoped(release) == []

    def gone() -> bool:
        left = kubectl(
            release.cluster,
            "-n",
            release.namespace,
            "get",
            "all,secrets,serviceaccounts,endpoints",
            "-l",
            f"app.kubernetes.io/instance={release.name}",
            "-o",
            "name",
        ).stdout
        return left.strip() == ""

    eventually(f"objects of release {release.name} gone", gone, 60)
    # The chart's trust namespace goes too, with the transfer CA in it.
    eventually(
        f"namespace {release.trust} gone",
        lambda: (
            kubectl(release.cluster, "get", "namespace", release.trust, check=False).returncode != 0
        ),
        120,
    )
    # Nothing blocks annotated workloads any more: the webhook is gone, not failing.
    kubectl(
        release.cluster,
        "-n",
        release.apps,
        "apply",
        "-f",
        "-",
        stdin=deployment(
            "after", {"architect.loopholelabs.io/scaledown-durations": '{"app":"soon"}'}
        ),
    )
