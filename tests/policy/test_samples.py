"""Every sample behaves as documented: valid ones pass, invalid ones fail as their header says."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from architect.policy.commands import compile_files, validate_files
from architect.policy.validation import all_rules

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def _run(fn: object, path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fn([str(path)], out, err)  # type: ignore[operator]
    return code, out.getvalue(), err.getvalue()


def _expected(path: Path) -> list[str]:
    return sorted(
        line.removeprefix("# expect: ").rstrip("\n")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    )


def _messages(stderr: str) -> list[str]:
    # "FILE:LINE (document N) (Kind/name): MESSAGE"
    return sorted(line.split("): ", 2)[-1] for line in stderr.splitlines() if line)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_samples(path: Path) -> None:
    code, out, err = _run(validate_files, path)
    assert code == 0, err
    assert "valid" in out
    code, out, err = _run(compile_files, path)
    assert code == 0, err


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_samples_fail_with_their_messages(path: Path) -> None:
    expected = _expected(path)
    assert expected, f"{path} has no '# expect:' line"
    code, _, err = _run(validate_files, path)
    assert code == 1
    assert _messages(err) == expected


def test_every_cel_rule_has_an_invalid_sample() -> None:
    covered = " ".join(" ".join(_expected(p)) for p in INVALID)
    missing = [m for _, _, m in all_rules() if m not in covered]
    assert not missing, f"rules without a sample under samples/invalid: {missing}"


def test_seed_deployment_compiles_to_30s() -> None:
    code, out, _ = _run(compile_files, SAMPLES / "deployment.yaml")
    assert code == 0
    assert "kind: HibernationPolicy" in out and "kind: MigrationPolicy" in out
    assert "- name: my-app-container\n      scaledownAfter: 30s" in out
    assert "scaleupTimeout: 30s" in out
