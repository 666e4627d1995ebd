"""Each layer loads once, as architect.<layer>: the bare name is refused.

The architect/ symlinks put policy/, engine/ and runtime/ inside the architect
package; with the repo root on sys.path the same files are also reachable as
top-level `runtime` etc., which would load every module a second time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("policy", "engine", "runtime")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter whose sys.path starts with the repo root, as under pytest
    # or a bench script; -I keeps the caller's PYTHONPATH and site dir out of it.
    return subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_the_bare_layer_name_is_refused_with_the_right_name(layer: str) -> None:
    r = _python(f"import {layer}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        f"ImportError: '{layer}' is Architect's {layer} layer: import it as 'architect.{layer}'"
        in r.stderr
    ), r.stderr


def test_a_submodule_by_its_bare_name_is_refused_too() -> None:
    r = _python("import runtime.shim.plan")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "import it as 'architect.runtime'" in r.stderr, r.stderr


def test_the_layers_load_under_architect_from_this_tree() -> None:
    r = _python(
        "import architect.runtime.shim.plan as p, architect.engine, architect.policy; "
        "print(p.__name__, p.__file__)"
    )
    assert r.returncode == 0, r.stderr
    name, path = r.stdout.split()
    assert name == "architect.runtime.shim.plan"
    assert Path(path) == REPO / "architect" / "runtime" / "shim" / "plan.py"
