"""Regenerate what the chart copies from the project, and the golden renders.

    python -m charts.generate           # write everything below
    python -m charts.generate --check   # exit 1 naming every file that drifted

- charts/architect/crds/*.yaml: the CRDs, from architect.policy.crdgen (the same
  text as crds/); Helm installs a chart's crds/ before its templates.
- charts/architect/files/webhooks.json: the webhook configurations from
  architect.engine.admission.webhooks.build_configurations; the template fills
  in only the client config and the scoping values.
- charts/architect/files/runtimeclasses.yaml: runtime/shim/deploy/runtimeclasses.yaml.
- tests/charts/golden/CASE.yaml: `helm template` of the chart with
  tests/charts/values/CASE.yaml (none for `default`), generated secrets masked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from architect.engine.admission.webhooks import ClientConfig, build_configurations
from architect.policy.crdgen import crd_files

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "architect"
RUNTIME_CLASSES = REPO / "runtime" / "shim" / "deploy" / "runtimeclasses.yaml"
GOLDEN = REPO / "tests" / "charts" / "golden"
CASES = REPO / "tests" / "charts" / "values"
HELM_CACHE = Path("/var/cache/architect/bin/helm")  # e2e/cluster/install puts it there

# Golden renders use one fixed release, so the text depends on the chart only.
RELEASE = "architect"
NAMESPACE = "architect-system"
MASK = "<generated>"
KUBE_VERSION = "1.33.13"  # what `helm template` assumes offline: the e2e cluster's version
# Values genCA / genSignedCert make anew on each render.
_GENERATED = re.compile(r"^(\s*(?:caBundle|ca\.crt|tls\.crt|tls\.key): )\S+$", re.MULTILINE)


class ChartError(Exception):
    """A failure with a message meant for the person running the command."""


def helm_binary() -> str:
    found = shutil.which("helm")
    if found:
        return found
    if HELM_CACHE.exists():
        return str(HELM_CACHE)
    raise ChartError(
        "helm not found on PATH nor at /var/cache/architect/bin: run e2e/cluster/install"
    )


def webhooks_json() -> str:
    # Placeholders: the template sets caBundle and the Service per release.
    client = ClientConfig(ca_bundle="", service_namespace="", service_name="", service_port=443)
    mutating, validating = build_configurations(client)
    return (
        json.dumps({"mutating": mutating, "validating": validating}, indent=2, sort_keys=True)
        + "\n"
    )


def source_files() -> dict[Path, str]:
    """Files the chart copies from the project: path -> expected text."""
    out = {CHART / "crds" / name: text for name, text in crd_files().items()}
    out[CHART / "files" / "webhooks.json"] = webhooks_json()
    out[CHART / "files" / "runtimeclasses.yaml"] = RUNTIME_CLASSES.read_text(encoding="utf-8")
    return out


def mask_generated(text: str) -> str:
    return _GENERATED.sub(lambda m: m.group(1) + MASK, text)


def render(
    values: list[Path] | None = None,
    sets: list[str] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> str:
    """`helm template` output (CRDs included); raises ChartError with helm's message."""
    cmd = [
        helm_binary(),
        "template",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
    ]
    for v in values or []:
        cmd += ["--values", str(v)]
    for s in sets or []:
        cmd += ["--set", s]
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/architect-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/architect-helm/config",
        "HELM_DATA_HOME": "/tmp/architect-helm/data",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=120)
    if proc.returncode != 0:
        raise ChartError(f"helm template failed: {proc.stderr.strip()}")
    return proc.stdout


def cases() -> dict[str, list[Path]]:
    """Golden case name -> values files (`default` uses the chart's values only)."""
    out: dict[str, list[Path]] = {"default": []}
    for path in sorted(CASES.glob("*.yaml")):
        out[path.stem] = [path]
    return out


def golden_files() -> dict[Path, str]:
    return {
        GOLDEN / f"{name}.yaml": mask_generated(render(values)) for name, values in cases().items()
    }


def expected_files() -> dict[Path, str]:
    return {**source_files(), **golden_files()}


def drifted(expected: dict[Path, str]) -> list[Path]:
    """Expected files that are missing or differ, plus stale generated files."""
    bad = [
        p for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    for directory, pattern in ((CHART / "crds", "*.yaml"), (GOLDEN, "*.yaml")):
        bad += [p for p in sorted(directory.glob(pattern)) if p not in expected]
    return bad


def write(expected: dict[Path, str]) -> list[Path]:
    dirs = {p.parent for p in expected}
    for path in drifted(expected):
        if path not in expected and path.parent in dirs:
            path.unlink()  # a stale generated file (e.g. a removed CRD or case)
    for path, text in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(expected)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m charts.generate", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--check", action="store_true", help="fail naming every drifted file; write nothing"
    )
    args = ap.parse_args(argv)
    try:
        if args.check:
            bad = drifted(expected_files())
        else:
            # Sources first: the golden renders read them through the chart.
            written = write(source_files())
            written += write(golden_files())
    except ChartError as err:
        print(f"charts.generate: {err}", file=sys.stderr)
        return 1
    if args.check:
        for path in bad:
            print(f"charts.generate: {path.relative_to(REPO)} is out of date", file=sys.stderr)
        if bad:
            print("charts.generate: run `python -m charts.generate`", file=sys.stderr)
        return 1 if bad else 0
    for path in written:
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
