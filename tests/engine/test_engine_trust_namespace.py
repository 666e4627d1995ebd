"""The trust Secret's own namespace (``--trust-namespace``): the operator keeps the
transfer CA's key there, node certificates and grants stay where daemons read them.
Flags, and the handlers with the in-memory API (no cluster)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from architect.engine import config
from architect.engine.controlplane import handlers as controlplane
from architect.engine.controlplane import trust
from tests.engine.fakes import FakeKube

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAEMONS, TRUST = "arch", "arch-trust"


def _args(*argv: str, env: dict[str, str] | None = None) -> config.OperatorConfig:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("ARCHITECT_NAMESPACE", "ARCHITECT_TRUST_NAMESPACE"):
            mp.delenv(name, raising=False)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        return config.from_args(config.parser().parse_args(list(argv)))


# --- the flag ------------------------------------------------------------------


def test_trust_namespace_defaults_to_the_namespace() -> None:
    # Existing single-namespace setups keep their trust Secret where it is.
    assert _args().trust_home == "architect-system"
    assert _args("--namespace", DAEMONS).trust_home == DAEMONS
    assert config.OperatorConfig().trust_home == config.OperatorConfig().transfer.namespace


def test_trust_namespace_from_flag_or_environment() -> None:
    cfg = _args("--namespace", DAEMONS, "--trust-namespace", TRUST)
    assert (cfg.transfer.namespace, cfg.trust_home) == (DAEMONS, TRUST)
    env = {"ARCHITECT_NAMESPACE": DAEMONS, "ARCHITECT_TRUST_NAMESPACE": TRUST}
    cfg = _args(env=env)
    assert (cfg.transfer.namespace, cfg.trust_home) == (DAEMONS, TRUST)
    assert _args("--trust-namespace", "other", env=env).trust_home == "other"
    # An empty variable (a chart's unset value) means "not set".
    assert _args(env={"ARCHITECT_TRUST_NAMESPACE": ""}).trust_home == "architect-system"


@pytest.mark.parametrize(
    ("argv", "env", "flag", "value"),
    [
        (["--trust-namespace", "Trust"], {}, "--trust-namespace", "Trust"),
        (["--trust-namespace", "x" * 64], {}, "--trust-namespace", "x" * 64),
        (["--trust-namespace", "a.b"], {}, "--trust-namespace", "a.b"),
        ([], {"ARCHITECT_TRUST_NAMESPACE": "-t"}, "--trust-namespace", "-t"),
        (["--namespace", "arch_system"], {}, "--namespace", "arch_system"),
        ([], {"ARCHITECT_NAMESPACE": "Arch"}, "--namespace", "Arch"),
    ],
)
def test_a_bad_namespace_is_named_without_a_traceback(
    argv: list[str],
    env: dict[str, str],
    flag: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        _args(*argv, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value!r} is not a namespace name" in err
    assert "Traceback" not in err


def test_help_says_why_a_namespace_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ARCHITECT_TRUST_NAMESPACE" in text
    assert "daemons read every Secret of --namespace" in text


# --- the handlers ----------------------------------------------------------------


def _kube() -> FakeKube:
    kube = FakeKube()
    kube.secrets = {}
    kube.nodes = {
        n: {
            "metadata": {"name": n},
            "status": {"addresses": [{"type": "InternalIP", "address": a}]},
        }
        for n, a in (("node-a", "10.0.0.1"), ("node-b", "10.0.0.2"))
    }
    return kube


async def test_trust_is_made_in_its_namespace_and_node_secrets_in_the_daemons() -> None:
    kube = _kube()
    cluster = await controlplane.load_trust(TRUST, kube=kube, daemons_namespace=DAEMONS)
    assert list(kube.secrets) == [(TRUST, trust.TRUST_SECRET)]
    assert await controlplane.load_trust(TRUST, kube=kube, daemons_namespace=DAEMONS) == cluster

    revoked, issued = await controlplane.sweep_transfer(
        kube=kube, now=NOW, namespace=DAEMONS, cluster=cluster
    )
    assert (revoked, issued) == (0, 2)
    in_daemons = {name for ns, name in kube.secrets if ns == DAEMONS}
    assert in_daemons == {trust.node_secret_name("node-a"), trust.node_secret_name("node-b")}
    # Whatever a daemon can read holds no CA key, only the CA's certificate.
    ca_key = base64.b64encode(cluster.ca.key_pem).decode()
    for (ns, _), secret in kube.secrets.items():
        if ns == DAEMONS:
            assert trust.CA_KEY_FIELD not in secret["data"]
            assert ca_key not in secret["data"].values()
    assert kube.secrets[(TRUST, trust.TRUST_SECRET)]["data"][trust.CA_KEY_FIELD] == ca_key
    # The next pass finds every node served: nothing reissued.
    again = await controlplane.sweep_transfer(kube=kube, now=NOW, namespace=DAEMONS, cluster=cluster)
    assert again == (0, 0)


async def test_a_trust_secret_left_where_daemons_read_is_deleted() -> None:
    # An older release kept the CA's key in --namespace: once the trust Secret
    # lives in its own namespace, that copy goes (node certificates get reissued
    # under the new CA by the next pass, since their ca.crt differs).
    kube = _kube()
    legacy = trust.new_trust_secret(DAEMONS)
    kube.secrets[(DAEMONS, trust.TRUST_SECRET)] = legacy
    old = trust.trust_from_secret(legacy)
    old_certs = [trust.node_cert_secret(old, n, DAEMONS) for n in kube.nodes.values()]
    for s in old_certs:
        kube.secrets[(DAEMONS, s["metadata"]["name"])] = s

    cluster = await controlplane.load_trust(TRUST, kube=kube, daemons_namespace=DAEMONS)
    assert (DAEMONS, trust.TRUST_SECRET) not in kube.secrets
    assert (TRUST, trust.TRUST_SECRET) in kube.secrets
    assert ("delete-secret", trust.TRUST_SECRET) in kube.calls
    _, issued = await controlplane.sweep_transfer(
        kube=kube, now=NOW, namespace=DAEMONS, cluster=cluster
    )
    assert issued == 2
    ca_crt = base64.b64encode(cluster.ca.cert_pem).decode()
    for s in old_certs:
        assert kube.secrets[(DAEMONS, s["metadata"]["name"])]["data"][trust.CA_CERT_FIELD] == ca_crt


async def test_one_namespace_for_both_keeps_the_trust_secret() -> None:
    kube = _kube()
    first = await controlplane.load_trust(DAEMONS, kube=kube, daemons_namespace=DAEMONS)
    assert await controlplane.load_trust(DAEMONS, kube=kube, daemons_namespace=DAEMONS) == first
    assert list(kube.secrets) == [(DAEMONS, trust.TRUST_SECRET)]
    assert not [c for c in kube.calls if c[0] == "delete-secret"]


@pytest.mark.parametrize(
    ("status", "reason", "why"),
    [
        (404, "Not Found", "namespace arch-trust does not exist"),
        (403, "Forbidden", "the operator may not get or create Secrets there (its RBAC)"),
        (500, "Internal Server Error", "Internal Server Error"),
        (502, "", "HTTP 502"),
    ],
)
def test_an_unreachable_trust_secret_is_explained(
    status: int | None, reason: str | None, why: str
) -> None:
    assert controlplane.trust_unavailable(TRUST, status, reason) == (
        f"transfer key Secret {TRUST}/{trust.TRUST_SECRET}: {why} (--trust-namespace)"
    )
