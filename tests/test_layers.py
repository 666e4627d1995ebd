"""The layering is a test, not a wish: runtime -> engine -> policy, never back."""

import shutil
import subprocess
from pathlib import Path


def test_import_contracts() -> None:
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    r = subprocess.run(
        [lint],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
