"""A bad setting in the operator's environment is a usage error naming the flag.

Kubernetes Service links once set ARCHITECT_WEBHOOK_PORT=tcp://10.96.x.y:443 in
the operator's pod (a release named "architect" has a Service architect-webhook):
that must never be a traceback at start.
"""

from __future__ import annotations

import pytest

from architect.engine import config


def test_bad_environment_port_names_the_flag(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ARCHITECT_WEBHOOK_PORT", "tcp://10.96.93.119:443")
    with pytest.raises(SystemExit) as exit_info:
        config.parser().parse_args([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--webhook-port" in err and "tcp://10.96.93.119:443" in err


def test_environment_defaults_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHITECT_METRICS_PORT", "8081")
    monkeypatch.setenv("ARCHITECT_GC_INTERVAL", "5s")
    a = config.parser().parse_args([])
    assert a.metrics_port == 8081 and a.gc_interval.total_seconds() == 5
    assert a.webhook_port == 9443 and a.transfer_port == 9447
