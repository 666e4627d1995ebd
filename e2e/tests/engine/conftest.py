"""Fixtures of the engine's cluster tests: the operator, running against the e2e API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.pytest_cluster import Cluster
from e2e.tests.engine.harness import Operator, OperatorFailed, running_operator


@pytest.fixture(scope="session")
def operator(
    control_plane: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    try:
        with running_operator(control_plane, tmp_path_factory.mktemp("engine-operator")) as op:
            yield op
    except OperatorFailed as err:
        pytest.fail(str(err), pytrace=False)
