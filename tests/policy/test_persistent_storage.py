"""PersistentCheckpoint storage: exactly one of nodeLocal / registry, and a registry
reference the daemon can push to (checked by the CRD schema, before any checkpoint)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from architect.policy.models import REGISTRY_REPOSITORY, CheckpointStorage


@pytest.mark.parametrize("ref", ["registry.local:5000/checkpoints/app", "10.0.0.7:5000/a/b:v1",
                                 "localhost:5000/x_y/z-w:T_1", "ghcr.io/o/r"])
def test_registry_references_accepted(ref: str) -> None:
    assert CheckpointStorage.model_validate({"registry": ref}).registry == ref


@pytest.mark.parametrize("ref", ["app", "reg.local/App", "reg.local/a/", "reg.local/a:",
                                 "reg.local/a@sha256:" + "a" * 64, "http://reg.local/a",
                                 "reg.local/a:" + "t" * 129])
def test_registry_references_refused(ref: str) -> None:
    with pytest.raises(ValidationError):
        CheckpointStorage.model_validate({"registry": ref})
    assert not re.match(REGISTRY_REPOSITORY, ref)
