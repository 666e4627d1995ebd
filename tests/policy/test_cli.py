"""The CLI contract other tools rely on: outputs, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from architect.policy.yamlio import load_documents

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "architect.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_compile_seed_deployment() -> None:
    r = run("compile", "-f", "samples/deployment.yaml")
    assert r.returncode == 0, r.stderr
    docs = [d.obj for d in load_documents(r.stdout, "out")]
    assert [d["kind"] for d in docs] == ["HibernationPolicy", "MigrationPolicy"]
    assert all(d["apiVersion"] == "architect.loopholelabs.io/v1alpha1" for d in docs)
    (container,) = docs[0]["spec"]["containers"]
    assert container["name"] == "my-app-container"
    assert container["scaledownAfter"] == "30s"
    assert container["scaleupTimeout"] == "30s"


def test_compile_is_stable() -> None:
    assert (
        run("compile", "-f", "samples/multi-container.yaml").stdout
        == run("compile", "-f", "samples/multi-container.yaml").stdout
    )


def test_compile_stdin_and_several_documents() -> None:
    text = (ROOT / "samples/deployment.yaml").read_text()
    r = run(
        "compile",
        "-f",
        "-",
        stdin=text + "\n---\n" + text.replace("name: my-app\n", "name: other\n", 1),
    )
    assert r.returncode == 0, r.stderr
    names = [d.obj["metadata"]["name"] for d in load_documents(r.stdout, "out")]
    assert names == ["my-app", "my-app", "other", "other"]


def test_compile_invalid_annotations_exit_1_with_messages() -> None:
    r = run("compile", "-f", "samples/invalid/annotations-bad-values.yaml")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert (
        "architect.loopholelabs.io/network-monitor: value 'bytes': "
        "container 'cache': expected packets or connections"
    ) in r.stderr
    assert (
        "samples/invalid/annotations-bad-values.yaml:7 (document 1) (Deployment/annotations-bad-values)"
        in r.stderr
    )


def test_bad_input_files_are_named_without_traceback() -> None:
    for args, stdin, expected in [
        (["compile", "-f", "no/such.yaml"], None, "no/such.yaml: no such file"),
        (["compile", "-f", "samples"], None, "samples: is a directory"),
        (["validate", "-f", "-"], "a: [1,\n", "<stdin>:2:1: invalid YAML"),
    ]:
        r = run(*args, stdin=stdin)
        assert r.returncode == 1, r
        assert expected in r.stderr
        assert "Traceback" not in r.stderr


def test_validate_reports_path_and_message() -> None:
    r = run("validate", "-f", "samples/invalid/hp-scaledown-zero.yaml")
    assert r.returncode == 1
    assert "spec.containers[0].scaledownAfter: scaledownAfter must be greater than 0" in r.stderr


def test_validate_valid() -> None:
    r = run("validate", "-f", "samples/hibernationpolicy.yaml", "-f", "samples/runsc-pod.yaml")
    assert r.returncode == 0, r.stderr
    assert "3 objects valid" in r.stdout


def test_crds_prints_all_and_check_detects_drift(tmp_path: Path) -> None:
    r = run("crds")
    kinds = [d.obj["spec"]["names"]["kind"] for d in load_documents(r.stdout, "out")]
    assert kinds == ["HibernationPolicy", "MigrationPolicy", "Checkpoint", "PersistentCheckpoint"]
    assert run("crds", "--check", "crds").returncode == 0
    assert run("crds", "--write", str(tmp_path)).returncode == 0
    (tmp_path / "checkpoints.yaml").write_text("changed\n")
    r = run("crds", "--check", str(tmp_path))
    assert r.returncode == 1 and "checkpoints.yaml: differs" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("compile").returncode == 2


def test_daemon_subcommand_hands_over_its_flags() -> None:
    help_ = run("daemon", "--help")
    assert help_.returncode == 0 and "--node" in help_.stdout
    # A missing node name is a user mistake: one line, no traceback.
    missing = subprocess.run(
        [sys.executable, "-m", "architect.cli", "daemon", "--node", ""],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode != 0
    assert "--node: not given and NODE_NAME is not set" in missing.stderr
    assert "Traceback" not in missing.stderr


BARE_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: bare
  annotations:
    architect.loopholelabs.io/managed-containers: '["app"]'
    architect.loopholelabs.io/network-monitor: '{"app": "packets"}'
spec:
  runtimeClassName: runc-architect
  containers:
  - name: app
    image: registry.local/app:1
"""


def test_compile_bare_pod_without_labels() -> None:
    r = run("compile", "-f", "-", stdin=BARE_POD)
    assert r.returncode == 0, r.stderr
    docs = [d.obj for d in load_documents(r.stdout, "out")]
    assert [d["kind"] for d in docs] == ["HibernationPolicy", "MigrationPolicy"]
    for d in docs:
        assert d["spec"]["selector"]["matchLabels"] == {"architect.loopholelabs.io/pod": "bare"}
    assert "note: the Pod has no labels: admission labels it architect.loopholelabs.io/pod=bare" \
        in r.stderr
    assert "Traceback" not in r.stderr
