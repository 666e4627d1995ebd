"""The chart renders what Architect needs, from the project's own sources.

Needs helm (e2e/cluster/install builds it into /var/cache/architect/bin); no cluster.
"""

from __future__ import annotations

import argparse
import base64
import copy
import subprocess
from typing import Any

import pytest
from cryptography import x509

from architect.engine.admission.webhooks import ClientConfig, build_configurations
from architect.engine.controlplane import trust
from architect.policy.crdgen import all_crds
from architect.runtime.shim import nodeinstall
from charts.generate import CHART, ChartError, drifted, expected_files, helm_binary, render
from tests.charts.render import by_kind, can, custom_values, objects, one, rendered

NS = "architect-system"
TRUST_NS = "architect-system-trust"


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return rendered()


@pytest.fixture(scope="module")
def custom() -> list[dict[str, Any]]:
    return rendered(values=custom_values())


def test_generated_files_and_golden_renders_are_current() -> None:
    bad = drifted(expected_files())
    assert not bad, f"out of date (run `python -m charts.generate`): {[str(p) for p in bad]}"


@pytest.mark.parametrize("values", [[], ["custom"]], ids=["default", "custom"])
def test_helm_lint_passes(values: list[str]) -> None:
    cmd = [helm_binary(), "lint", str(CHART), "--strict", "--kube-version", "1.33.13"]
    for _ in values:
        cmd += ["--values", str(custom_values()[0])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_every_component(default: list[dict[str, Any]]) -> None:
    kinds = {k: len(v) for k, v in by_kind(default).items()}
    assert kinds == {
        "CustomResourceDefinition": 4,
        "ServiceAccount": 2,
        "Secret": 1,
        "ClusterRole": 2,
        "ClusterRoleBinding": 2,
        "Role": 3,
        "RoleBinding": 3,
        "Namespace": 1,
        "Service": 2,
        "DaemonSet": 1,
        "Deployment": 1,
        "RuntimeClass": 2,
        "MutatingWebhookConfiguration": 1,
        "ValidatingWebhookConfiguration": 1,
    }
    assert {rc["metadata"]["name"]: rc["handler"] for rc in by_kind(default)["RuntimeClass"]} == {
        "runc-architect": "runc-architect",
        "runsc-architect": "runsc-architect",
    }


def test_crds_are_the_generated_ones(default: list[dict[str, Any]]) -> None:
    assert by_kind(default)["CustomResourceDefinition"] == sorted(
        all_crds(), key=lambda c: c["metadata"]["name"]
    )


def _hooks(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        h
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for h in one(objs, kind)["webhooks"]
    ]


def test_webhooks_are_the_engines_with_the_release_service(default: list[dict[str, Any]]) -> None:
    secret = one(default, "Secret", "webhook-tls")
    ca = secret["data"]["ca.crt"]
    want_m, want_v = build_configurations(
        ClientConfig(ca, service_namespace=NS, service_name="architect-webhook")
    )
    for kind, want in (
        ("MutatingWebhookConfiguration", want_m),
        ("ValidatingWebhookConfiguration", want_v),
    ):
        got = copy.deepcopy(one(default, kind)["webhooks"])
        for hook in got:
            # The chart's own scoping; the rest must be the engine's, field for field.
            assert hook.pop("namespaceSelector") == {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": [NS, "kube-system"],
                    }
                ]
            }
        for hook in want["webhooks"]:
            hook.pop("namespaceSelector")
        assert got == want["webhooks"]


def test_serving_certificate_is_signed_by_the_ca_for_the_service(
    default: list[dict[str, Any]],
) -> None:
    data = one(default, "Secret", "webhook-tls")["data"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(data["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"architect-webhook.{NS}.svc" in sans.get_values_for_type(x509.DNSName)
    assert all(h["clientConfig"]["caBundle"] == data["ca.crt"] for h in _hooks(default))
    deploy = one(default, "Deployment", "operator")
    volumes = deploy["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tls", "secret": {"secretName": "architect-webhook-tls"}}]


def test_failure_policy_and_scope_values(custom: list[dict[str, Any]]) -> None:
    hooks = _hooks(custom)
    assert len(hooks) >= 5
    assert {h["failurePolicy"] for h in hooks} == {"Ignore"}
    for hook in hooks:
        assert hook["timeoutSeconds"] == 10
        assert hook["clientConfig"]["service"]["name"] == "arch-webhook"
        assert hook["namespaceSelector"] == {
            "matchLabels": {"architect.loopholelabs.io/enabled": "true"},
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": [NS, "kube-system", "monitoring"],
                },
                {"key": "tier", "operator": "NotIn", "values": ["system"]},
            ],
        }


def test_default_failure_policy_fails_closed_except_the_status_webhook(
    default: list[dict[str, Any]],
) -> None:
    policies = {h["name"]: h["failurePolicy"] for h in _hooks(default)}
    assert policies.pop("checkpoint-status.architect.loopholelabs.io") == "Ignore"
    assert set(policies.values()) == {"Fail"}


def test_custom_values_drop_daemon_runtime_classes_and_metrics(
    custom: list[dict[str, Any]],
) -> None:
    kinds = by_kind(custom)
    assert "DaemonSet" not in kinds and "RuntimeClass" not in kinds
    assert [s["metadata"]["name"] for s in kinds["Service"]] == ["arch-webhook"]
    assert [sa["metadata"]["name"] for sa in kinds["ServiceAccount"]] == ["arch-operator"]
    assert all(
        o["metadata"]["labels"]["team"] == "platform"
        for o in custom
        if o["kind"] != "CustomResourceDefinition"
    )
    pod = one(custom, "Deployment", "operator")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.test/architect:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert "--sidecar-image=registry.example.test/architect-sidecar:1.2.3" in container["args"]
    assert container["args"][-1] == "--webhook-host=arch-webhook.team.svc"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_operator_runs_unprivileged_and_daemon_has_host_access(
    default: list[dict[str, Any]],
) -> None:
    op = one(default, "Deployment", "operator")["spec"]["template"]["spec"]
    assert op["securityContext"]["runAsNonRoot"] is True
    sc = op["containers"][0]["securityContext"]
    assert sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    ds = one(default, "DaemonSet")["spec"]["template"]["spec"]
    assert ds["hostPID"] is True and ds["hostNetwork"] is True
    daemon = ds["containers"][0]
    assert daemon["securityContext"] == {"privileged": True}
    assert daemon["command"] == ["python3", "-m", "architect.runtime.daemon"]
    assert daemon["env"] == [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]
    mounts = {m["mountPath"] for m in daemon["volumeMounts"]}
    assert {"/run/architect", "/var/lib/architect"} <= mounts
    assert ds["serviceAccountName"] == "architect-daemon"


def _rules(role: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    ]


def test_rbac_is_least_privilege(default: list[dict[str, Any]]) -> None:
    for role in by_kind(default)["ClusterRole"]:
        rules = _rules(role)
        assert not [r for r in rules if "*" in r], role["metadata"]["name"]
        assert not [r for r in rules if r[1] in ("secrets", "pods/exec", "nodes/proxy")]
        assert not [r for r in rules if r[0] == "admissionregistration.k8s.io"]
    operator = set(_rules(one(default, "ClusterRole", "operator")))
    # What engine/kubeclient.py and kopf call, and nothing that writes pods or workloads.
    assert ("architect.loopholelabs.io", "hibernationpolicies", "create") in operator
    assert ("architect.loopholelabs.io", "checkpoints/status", "patch") in operator
    assert ("apps", "deployments", "get") in operator
    assert not [
        r for r in operator if r[1] in ("pods", "deployments") and r[2] != "get" and r[2] != "list"
    ]
    daemon = set(_rules(one(default, "ClusterRole", "daemon")))
    assert ("", "pods/resize", "patch") in daemon
    assert not [r for r in daemon if r[2] == "delete"]
    # Secrets only through Roles: the daemon's reads the release namespace, the
    # operator's two write there and reach the trust Secret.
    roles = {r["metadata"]["name"]: r for r in by_kind(default)["Role"]}
    assert {n: r["metadata"]["namespace"] for n, r in roles.items()} == {
        "architect-daemon": NS,
        "architect-operator": NS,
        "architect-operator-trust": TRUST_NS,
    }
    assert set(_rules(roles["architect-daemon"])) == {
        ("", "secrets", v) for v in ("get", "list", "watch")
    }
    assert set(_rules(roles["architect-operator"])) == {
        ("", "secrets", v) for v in ("list", "create", "update", "delete")
    }
    for binding in by_kind(default)["RoleBinding"]:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        (subject,) = binding["subjects"]
        assert binding["metadata"]["name"].startswith(subject["name"])
        assert subject["namespace"] == NS


# --- the trust namespace ----------------------------------------------------------


def test_trust_namespace_is_the_chart_s_and_the_operator_s_only(
    default: list[dict[str, Any]],
) -> None:
    (namespace,) = by_kind(default)["Namespace"]
    assert namespace["metadata"]["name"] == TRUST_NS
    op = one(default, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]
    assert f"--trust-namespace={TRUST_NS}" in op["args"]
    in_trust = [o for o in default if o["metadata"].get("namespace") == TRUST_NS]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in in_trust) == [
        ("Role", "architect-operator-trust"),
        ("RoleBinding", "architect-operator-trust"),
    ]
    # The name the Role grants is the one the control plane uses.
    role = one(default, "Role", "operator-trust")
    assert [r.get("resourceNames") for r in role["rules"]] == [[trust.TRUST_SECRET], None]


@pytest.mark.parametrize("values", [["custom"], []], ids=["custom", "default"])
def test_daemon_cannot_read_the_trust_secret_and_the_operator_can(values: list[str]) -> None:
    objs = rendered("daemon.enabled=true", values=custom_values() if values else None)
    daemon, operator = (
        next(
            sa["metadata"]["name"]
            for sa in by_kind(objs)["ServiceAccount"]
            if c in sa["metadata"]["name"]
        )
        for c in ("daemon", "operator")
    )
    secret = trust.TRUST_SECRET
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert not can(objs, daemon, verb, "secrets", TRUST_NS, secret), verb
    # The daemon reads its node certificate and grants where the operator writes them.
    node_cert = trust.node_secret_name("node-a")
    for verb in ("get", "list", "watch"):
        assert can(objs, daemon, verb, "secrets", NS, node_cert), verb
    assert not can(objs, daemon, "create", "secrets", NS, node_cert)
    # The operator: get that one Secret and create it, nothing else there.
    assert can(objs, operator, "get", "secrets", TRUST_NS, secret)
    assert can(objs, operator, "create", "secrets", TRUST_NS, secret)
    for verb in ("list", "watch", "update", "patch", "delete"):
        assert not can(objs, operator, verb, "secrets", TRUST_NS, secret), verb
    assert not can(objs, operator, "get", "secrets", TRUST_NS, "someone-elses")
    # Release namespace: node certificates and grants, and a legacy trust Secret deleted.
    for verb in ("list", "create", "update", "delete"):
        assert can(objs, operator, verb, "secrets", NS, node_cert), verb
    # The checker itself: a binding in another namespace grants nothing here.
    assert not can(objs, daemon, "get", "secrets", "elsewhere", node_cert)


def test_trust_namespace_value_and_an_existing_namespace() -> None:
    objs = rendered("trust.namespace=architect-ca", "trust.createNamespace=false")
    assert "Namespace" not in by_kind(objs)
    assert one(objs, "Role", "operator-trust")["metadata"]["namespace"] == "architect-ca"
    op = one(objs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--trust-namespace=architect-ca" in op["args"]
    assert can(objs, "architect-operator", "get", "secrets", "architect-ca", trust.TRUST_SECRET)
    # `helm upgrade --reuse-values` from a chart without `trust` renders the defaults.
    objs = rendered("trust=null")
    assert one(objs, "Namespace")["metadata"]["name"] == TRUST_NS
    assert one(objs, "Role", "operator-trust")["metadata"]["namespace"] == TRUST_NS


@pytest.mark.parametrize(
    ("setting", "namespace", "message"),
    [
        (
            f"trust.namespace={NS}",
            NS,
            f'trust.namespace: "{NS}" is the release namespace, where every daemon can read '
            "Secrets; the transfer CA's key needs a namespace of its own",
        ),
        # <release namespace>-trust cut to 63 characters is the release namespace again.
        ("rbac.create=true", "n" * 63, f'trust.namespace: "{"n" * 63}" is the release namespace'),
        (
            "trust.namespace=Trust_CA",
            NS,
            "at '/trust/namespace': 'Trust_CA' does not match pattern",
        ),
        ("trust.createNamespce=false", NS, "at '/trust': additional properties 'createNamespce'"),
    ],
)
def test_bad_trust_namespace_is_refused_naming_the_value(
    setting: str, namespace: str, message: str
) -> None:
    with pytest.raises(ChartError) as err:
        render(None, [setting], namespace=namespace)
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_cluster_scoped_names_include_the_release_namespace() -> None:
    objs = rendered(namespace="team-a", release="arch")
    for kind in (
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ):
        names = [o["metadata"]["name"] for o in objs if o["kind"] == kind]
        assert names and all("team-a" in n for n in names), (kind, names)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "admission.failurePolicy=Sometimes",
            "at '/admission/failurePolicy': value must be one of 'Fail', 'Ignore'",
        ),
        ("daemon.enabeld=true", "at '/daemon': additional properties 'enabeld' not allowed"),
        ("operator.gcInterval=soon", "at '/operator/gcInterval': 'soon' does not match pattern"),
        ("operator.webhookPort=0", "at '/operator/webhookPort': minimum"),
    ],
)
def test_bad_values_are_refused_naming_the_value(setting: str, message: str) -> None:
    with pytest.raises(ChartError) as err:
        render(None, [setting])
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_kopf_needs_no_peering_and_render_is_parseable() -> None:
    # `standalone=True` in engine/serve.py: no KopfPeering objects or permissions.
    text = render()
    assert "kopfpeerings" not in text
    assert objects(text)


def test_rendered_args_are_what_the_programs_accept(default: list[dict[str, Any]]) -> None:
    from architect.engine import config as operator_config
    from architect.runtime.daemon.config import parse_args as daemon_args

    op = one(default, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]
    assert op["command"] == ["python3", "-m", "architect.cli", "operator"]
    ns = operator_config.parser().parse_args(op["args"])
    assert (ns.webhook_port, ns.metrics_port, ns.tls_cert) == (
        9443,
        8080,
        "/etc/architect/tls/tls.crt",
    )
    assert (ns.namespace, ns.trust_namespace, ns.transfer_port) == (NS, TRUST_NS, 9447)
    objs = rendered("daemon.resize=true", "daemon.kubeletRoot=/var/lib/k", "daemon.metricsPort=0")
    ds = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    daemon = ds["containers"][0]
    cfg = daemon_args(daemon["args"], env={"NODE_NAME": "node-1"})
    assert (cfg.resize, cfg.kubelet_root, cfg.metrics_port) == (True, "/var/lib/k", 0)
    assert str(cfg.shim_run) == "/run/architect/shim"
    assert daemon["ports"] == [{"name": "transfer", "containerPort": 9447}]
    mounts = {m["mountPath"]: m.get("mountPropagation") for m in daemon["volumeMounts"]}
    assert mounts["/var/lib/k"] == "HostToContainer"
    init = ds["initContainers"][0]
    init_mounts = {m["mountPath"] for m in init["volumeMounts"]}
    host = {v["hostPath"]["path"] for v in ds["volumes"]}
    assert host == (set(mounts) - {"/host/cgroup"}) | (init_mounts - {"/host/shim-link-dir"}) | {
        "/usr/local/bin", "/sys/fs/cgroup"}
    # The node setup's flags are what `architect node install` takes.
    assert init["command"] == ["python3", "-m", "architect.runtime.shim.nodeinstall", "install"]
    p = argparse.ArgumentParser()
    nodeinstall.add_arguments(p)
    a = p.parse_args(["install", *init["args"]])
    assert (str(a.prefix), str(a.containerd_config_dir), str(a.config_dir)) == (
        "/opt/architect", "/etc/containerd/conf.d", "/etc/architect")
    assert a.restart == ["systemctl", "restart", "containerd"] and a.host_process == "1"
    assert init_mounts == {"/opt/architect", "/etc/containerd/conf.d", "/etc/architect",
                           "/host/shim-link-dir"}
    assert str(a.link_dir) == "/host/shim-link-dir"
    link_vol = next(v for v in ds["volumes"] if v["name"] == "node-shim-link-dir")
    assert link_vol["hostPath"]["path"] == "/usr/local/bin"


@pytest.mark.parametrize("value", [True, False])
def test_daemon_resize_value_reaches_the_daemon(value: bool) -> None:
    """The daemon's own default is on: `false` must really turn it off."""
    from architect.runtime.daemon.config import parse_args as daemon_args

    ds = one(rendered(f"daemon.resize={str(value).lower()}"), "DaemonSet")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert daemon_args(args, env={"NODE_NAME": "n"}).resize is value


def test_daemon_sees_the_nodes_cgroups() -> None:
    """In its pod /sys/fs/cgroup is the daemon's own cgroup: CPU and exec sampling
    needs the node's, mounted read-only and named by --cgroup-root."""
    from architect.runtime.daemon.config import parse_args as daemon_args

    spec = one(rendered(), "DaemonSet")["spec"]["template"]["spec"]
    daemon = spec["containers"][0]
    cfg = daemon_args(daemon["args"], env={"NODE_NAME": "n"})
    mount = next(m for m in daemon["volumeMounts"] if m["mountPath"] == cfg.cgroup_root)
    # No propagation: the kubelet refuses HostToContainer from a private host mount.
    assert mount["readOnly"] is True and "mountPropagation" not in mount
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["hostPath"]["path"] == "/sys/fs/cgroup"
    off = one(rendered("daemon.cgroupRoot="), "DaemonSet")["spec"]["template"]["spec"]
    assert daemon_args(off["containers"][0]["args"], env={"NODE_NAME": "n"}).cgroup_root is None
    assert all(v["name"] != "host-cgroup" for v in off["volumes"])


def test_node_install_off_renders_no_init_container() -> None:
    ds = one(rendered("node.install=false"), "DaemonSet")["spec"]["template"]["spec"]
    assert "initContainers" not in ds
    assert not {v["name"] for v in ds["volumes"]} & {"node-prefix", "node-config"}
