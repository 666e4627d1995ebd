"""`architect operator` argument handling: user mistakes get a message, not a traceback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from architect.engine import config
from architect.engine.main import main


def test_cert_without_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tls-cert", "x.pem"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


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
