"""`architect node install`: what it writes, that it is idempotent, and that the
launcher really runs a relocated Python through the payload's own loader.

The whole path (image payload, containerd restart, pods through the shim) runs on
the e2e node in e2e/tests/cluster/test_product.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from architect.runtime.shim import nodeinstall as ni

LAUNCHER = "/opt/architect/bin/containerd-shim-architect-v1"


def test_dropin_sets_runtime_path_on_every_handler_and_keeps_the_rest() -> None:
    template = (ni.DEPLOY / "containerd-architect.toml").read_text()
    text = ni.dropin_text(template, LAUNCHER, "/etc/x/runsc-architect.toml")
    doc = tomllib.loads(text)
    runtimes = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert set(runtimes) == {"runc-architect", "runsc-architect"}
    for rt in runtimes.values():
        assert rt["runtime_type"] == "io.containerd.architect.v1"
        assert rt["runtime_path"] == LAUNCHER
        assert rt["pod_annotations"] == ["architect.loopholelabs.io/*"]
    assert runtimes["runsc-architect"]["options"]["ConfigPath"] == "/etc/x/runsc-architect.toml"


def test_launcher_uses_the_payloads_loader_and_ignores_the_hosts_python_env() -> None:
    p = ni.Payload("usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                   ("usr/lib/x86_64-linux-gnu",))
    text = ni.launcher_text("/opt/architect", p)
    assert text.startswith("#!/bin/sh\n")
    assert '"/opt/architect/current/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"' in text
    assert '--library-path "/opt/architect/current/usr/lib/x86_64-linux-gnu"' in text
    assert '"/opt/architect/current/usr/bin/python3.11" -I -m architect.runtime.shim' in text
    assert 'ARCHITECT_SHIM_LAUNCHER="$0"' in text


def test_restart_runs_on_the_host_as_a_peer_of_the_anchor() -> None:
    argv = ni.restart_argv(["systemctl", "restart", "containerd"])
    assert argv[:3] == ["nsenter", "-t", "1"] and "ANCHOR=1" in argv
    assert argv[-3:] == ["systemctl", "restart", "containerd"]
    assert '"/proc/$ANCHOR/cgroup"' in argv[argv.index("-c") + 1]
    assert ni.restart_argv(["up"], 4242)[:3] == ["nsenter", "-t", "4242"]


def test_anchor_by_pid_or_by_name(tmp_path: Path) -> None:
    for pid, comm in ((7, "containerd"), (9, "containerd"), (3, "kubelet")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    (tmp_path / "self").mkdir()
    assert ni.find_anchor("1", tmp_path) == 1
    assert ni.find_anchor("containerd", tmp_path) == 7
    with pytest.raises(ni.InstallError, match="no such process"):
        ni.find_anchor("systemd", tmp_path)


def test_a_failed_restart_is_tried_again_on_the_next_run(tmp_path: Path) -> None:
    assert ni.restart_needed(tmp_path, "dropin v1")
    ni._mark_restarted(tmp_path, "dropin v1")
    assert not ni.restart_needed(tmp_path, "dropin v1")
    assert ni.restart_needed(tmp_path, "dropin v2")


def test_restart_failure_fails_the_install_and_the_rerun_restarts(tmp_path: Path) -> None:
    """The real install on a scratch tree, with a restart command that fails once."""
    src, prefix, conf, cfg = (tmp_path / n for n in ("img", "opt", "conf.d", "etc"))
    _tiny_usr(src, {"bin/python3.11": "x", "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "x"})
    flag = tmp_path / "fail-once"
    flag.write_text("")
    me = str(os.getpid())
    restart = ["/bin/sh", "-c", f'if [ -e {flag} ]; then rm {flag}; exit 3; fi; echo ok']
    with pytest.raises(ni.InstallError, match="failed"):
        ni.install(prefix, conf, cfg, restart, source=src, python="/usr/bin/python3.11",
                   host_process=me)
    assert (conf / ni.DROPIN_NAME).exists()  # written, but containerd not restarted
    report = ni.install(prefix, conf, cfg, restart, source=src, python="/usr/bin/python3.11",
                        host_process=me)
    assert report.restarted and not report.dropin_changed
    again = ni.install(prefix, conf, cfg, restart, source=src, python="/usr/bin/python3.11",
                       host_process=me)
    assert not again.restarted


def _tiny_usr(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        f = root / "usr" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def test_payload_is_copied_once_and_replaced_when_the_image_changes(tmp_path: Path) -> None:
    src, prefix = tmp_path / "img", tmp_path / "opt"
    _tiny_usr(src, {"bin/python3.11": "x", "lib/python3.11/os.py": "# os"})
    (src / "usr/lib/link").symlink_to("python3.11")
    first, copied = ni.install_payload(src, prefix)
    assert copied and (first / "usr/lib/python3.11/os.py").read_text() == "# os"
    assert (first / "usr/lib/link").is_symlink()  # links stay links
    assert os.readlink(prefix / "current") == first.name
    again, copied = ni.install_payload(src, prefix)
    assert again == first and not copied
    (src / "usr/lib/python3.11/new.py").write_text("# new")
    second, copied = ni.install_payload(src, prefix)
    assert copied and second != first
    assert os.readlink(prefix / "current") == second.name
    assert not first.exists()  # the old payload is gone, the new one is current


def test_payload_without_a_loader_is_a_clear_error(tmp_path: Path) -> None:
    _tiny_usr(tmp_path, {"bin/python3.11": "x"})
    with pytest.raises(ni.InstallError, match="no dynamic loader"):
        ni.Payload.find(tmp_path, "/usr/bin/python3.11")


def _needed_libs(binary: str) -> list[Path]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split("=>")
        path = (parts[1] if len(parts) > 1 else parts[0]).split("(")[0].strip()
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


HOST_PYTHON = Path("/usr/bin/python3.11")  # Debian's, as in the architect image


def test_launcher_runs_a_relocated_python_with_its_own_libraries(tmp_path: Path) -> None:
    """A payload made of Debian's python3.11, its stdlib and exactly the libraries it
    needs: the launcher runs it from the new place, with a poisoned host env."""
    src = tmp_path / "img"
    multiarch = src / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    (src / "usr/bin").mkdir(parents=True)
    shutil.copy2(HOST_PYTHON, src / "usr/bin/python3.11")
    shutil.copytree("/usr/lib/python3.11", src / "usr/lib/python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "dist-packages"))
    for lib in _needed_libs(str(HOST_PYTHON)):
        shutil.copy2(lib.resolve(), multiarch / lib.name)
    shim = src / "usr/local/lib/python3.11/dist-packages/architect/runtime/shim"
    shim.mkdir(parents=True)
    for d in (shim.parent.parent, shim.parent):
        (d / "__init__.py").write_text("")
    (shim / "__init__.py").write_text("")
    (shim / "__main__.py").write_text(
        "import os, sys\nprint(sys.prefix, os.environ['ARCHITECT_SHIM_LAUNCHER'], *sys.argv[1:])\n")
    prefix = tmp_path / "opt"
    payload_dir, _ = ni.install_payload(src, prefix)
    payload = ni.Payload.find(payload_dir, str(HOST_PYTHON))
    launcher = prefix / "bin" / ni.SHIM_BINARY
    launcher.parent.mkdir(parents=True)
    launcher.write_text(ni.launcher_text(str(prefix), payload))
    launcher.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHONHOME": "/nonexistent", "PYTHONPATH": "/nonexistent"}
    proc = subprocess.run([str(launcher), "-v"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    prefix_seen, launcher_seen, arg = proc.stdout.split()
    assert prefix_seen == str(prefix / "current" / "usr")
    assert launcher_seen == str(launcher) and arg == "-v"


def test_cli_reports_a_bad_prefix_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "architect.runtime.shim.nodeinstall", "install",
         "--prefix", "relative/path", "--containerd-config-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "must be absolute" in proc.stderr and "Traceback" not in proc.stderr


def test_shim_link_keeps_a_foreign_file_aside_and_puts_it_back(tmp_path: Path) -> None:
    bin_dir, prefix = tmp_path / "usr-local-bin", tmp_path / "opt"
    bin_dir.mkdir()
    foreign = bin_dir / ni.SHIM_BINARY
    foreign.write_text("#!/bin/sh\n# a host install\n")
    launcher = prefix / "bin" / ni.SHIM_BINARY
    assert ni.link_shim(bin_dir, launcher)
    assert os.readlink(bin_dir / ni.SHIM_BINARY) == str(launcher)
    saved = bin_dir / (ni.SHIM_BINARY + ni.SAVED_SUFFIX)
    assert saved.read_text().endswith("# a host install\n")
    assert not ni.link_shim(bin_dir, launcher)  # unchanged the second time
    ni.unlink_shim(bin_dir, prefix)
    assert not (bin_dir / ni.SHIM_BINARY).is_symlink()
    assert (bin_dir / ni.SHIM_BINARY).read_text().endswith("# a host install\n")
    assert not saved.exists()
