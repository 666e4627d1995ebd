"""`architect operator` argument handling: user mistakes get a message, not a traceback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from architect.engine import config
from architect.engine.serve import main


def test_cert_without_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tls-cert", "x.pem"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_no_certificate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "--tls-cert and --tls-key are required" in capsys.readouterr().err


def test_bad_duration_names_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config.parser().parse_args(["--gc-interval", "soon"])
    assert exc.value.code == 2
    assert "argument --gc-interval: 'soon' is not a duration" in capsys.readouterr().err


def test_settings_from_args() -> None:
    cfg = config.from_args(
        config.parser().parse_args(
            ["--consumed-ttl", "3s", "--sidecar-image", "img:1", "--webhook-port", "1"]
        )
    )
    assert cfg.gc.consumed_ttl == timedelta(seconds=3)
    assert cfg.sidecar.image == "img:1"
    assert cfg.webhook_port == 1


def test_transfer_settings_from_args(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config.from_args(
        config.parser().parse_args(
            ["--namespace", "arch", "--transfer-port", "9000", "--ticket-ttl", "2m"]
        )
    )
    assert (cfg.transfer.namespace, cfg.transfer.port) == ("arch", 9000)
    assert cfg.transfer.ticket_ttl == timedelta(minutes=2)
    with pytest.raises(SystemExit):
        config.parser().parse_args(["--transfer-port", "http"])
    assert "argument --transfer-port: invalid int value: 'http'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parser().parse_args(["--ticket-ttl", "0s"])
    assert "argument --ticket-ttl:" in capsys.readouterr().err
