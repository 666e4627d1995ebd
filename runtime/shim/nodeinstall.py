"""Put the shim on a node from the architect image: ``architect node install``.

The chart runs this in the daemon DaemonSet's privileged init container, with the
host's ``--prefix`` and ``--containerd-config-dir`` mounted at the same paths. It:

1. copies the image's ``/usr`` (Python, the architect package, their libraries)
   to ``PREFIX/payload-KEY`` and points ``PREFIX/current`` at it; KEY hashes the
   tree, so an unchanged image copies nothing;
2. writes the launcher ``PREFIX/bin/containerd-shim-architect-v1``, which runs that
   Python through the payload's own dynamic loader and libraries: the host needs
   no Python at all (only containerd, runc, CRIU and runsc, which the shim drives),
   and links it into a directory on containerd's PATH (``--link-dir``, the host's
   /usr/local/bin mounted there): containerd 1.6 finds shims by name, whatever
   ``runtime_path`` says. A file of that name that is not ours is kept aside as
   ``NAME.architect-saved`` and put back by ``uninstall``;
3. writes containerd's runtime handlers (``runc-architect``, ``runsc-architect``,
   ``runtime_path`` = the launcher) into the drop-in directory containerd imports,
   and the runsc configuration;
4. until containerd has been restarted for this drop-in (a stamp in PREFIX, so a
   failed restart is tried again on the next run), runs ``--restart`` on the host:
   in the namespaces and cgroups of ``--host-process`` (PID 1), so the restarted
   containerd does not live in this container's cgroup and die with it.

The text each step writes is computed by pure functions (tested without a node).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent / "deploy"
SHIM_BINARY = "containerd-shim-architect-v1"
DROPIN_NAME = "architect.toml"
RUNSC_CONFIG = "runsc-architect.toml"
LAUNCHER_MARK = "# Architect shim launcher (architect node install)"
# Run a command as a peer of the host's anchor process (PID 1 on a node): its
# cgroups first (cgroup v1 hierarchies or the v2 unified one), then exec. Without
# it, a containerd restarted from here would sit in this container's cgroup, which
# runc empties (SIGKILL) when the container is deleted.
_JOIN_CGROUPS = r"""
while IFS=: read -r _ ctrl path; do
  case $ctrl in
    '') d=/sys/fs/cgroup/unified; [ -d "$d" ] || d=/sys/fs/cgroup ;;
    name=*) d=/sys/fs/cgroup/${ctrl#name=} ;;
    *) d=/sys/fs/cgroup/$ctrl ;;
  esac
  [ -w "$d$path/cgroup.procs" ] && echo $$ > "$d$path/cgroup.procs" 2>/dev/null
done < "/proc/$ANCHOR/cgroup"
exec "$@"
"""
RESTART_STAMP = ".containerd-restarted-for"


class InstallError(Exception):
    """The node install cannot proceed; the message names what and where."""


@dataclass(frozen=True)
class Payload:
    """Where, inside the copied ``/usr``, the interpreter and its loader are."""

    python: str  # e.g. "usr/bin/python3.11", relative to the payload root
    loader: str  # e.g. "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libdirs: tuple[str, ...]  # library search path, relative

    @classmethod
    def find(cls, root: Path, python: str) -> Payload:
        """Locate the loader and library directories of ``root/usr``."""
        rel_python = os.path.relpath(os.path.realpath(python), "/")
        if not rel_python.startswith("usr/"):
            raise InstallError(f"python {python} is not under /usr: cannot carry it to the node")
        loaders = sorted((root / "usr/lib").glob("*-linux-gnu/ld-linux*.so.*"))
        if not loaders:
            raise InstallError(f"no dynamic loader under {root}/usr/lib/*-linux-gnu")
        multiarch = loaders[0].parent.name
        libdirs = tuple(d for d in (f"usr/lib/{multiarch}", f"usr/local/lib/{multiarch}")
                        if (root / d).is_dir())
        return cls(rel_python, str(loaders[0].relative_to(root)), libdirs)


def launcher_text(prefix: str, payload: Payload) -> str:
    """The shim binary containerd runs: the payload's Python with its own loader."""
    cur = f"{prefix}/current"
    libpath = ":".join(f"{cur}/{d}" for d in payload.libdirs)
    return (
        "#!/bin/sh\n"
        f"{LAUNCHER_MARK}: the image's Python through its own loader and libraries.\n"
        f'export ARCHITECT_SHIM_LAUNCHER="$0"\n'
        # -I: nothing of the host's Python environment (nor the bundle, the cwd) reaches the payload.
        f'exec "{cur}/{payload.loader}" --library-path "{libpath}" '
        f'"{cur}/{payload.python}" -I -m architect.runtime.shim "$@"\n'
    )


def dropin_text(template: str, launcher: str, runsc_config: str) -> str:
    """containerd's runtime handlers with ``runtime_path`` set to the launcher."""
    out: list[str] = [f"# Written by architect node install; launcher {launcher}."]
    for line in template.splitlines():
        if line.strip().startswith("#"):
            continue
        if "ConfigPath" in line:
            line = line.split("=", 1)[0] + f'= "{runsc_config}"'
        out.append(line)
        if line.strip().startswith("runtime_type"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}runtime_path = "{launcher}"')
    return "\n".join(out).strip() + "\n"


def tree_key(root: Path) -> str:
    """A digest of a tree's names, sizes, modes and link targets (not contents:
    an image's files are never modified in place, only replaced)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(f"{dirpath}/{d}")]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            target = os.readlink(p) if os.path.islink(p) else ""
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mode}\0{target}\n".encode())
    return h.hexdigest()[:16]


def restart_argv(command: Sequence[str], anchor: int = 1) -> list[str]:
    """``command`` run on the host as a peer of ``anchor`` (namespaces and cgroups)."""
    return ["nsenter", "-t", str(anchor), "-m", "-u", "-i", "-n", "-p", "--",
            "/usr/bin/env", f"ANCHOR={anchor}", "/bin/sh", "-c", _JOIN_CGROUPS, "sh", *command]


def find_anchor(spec: str, proc: Path = Path("/proc")) -> int:
    """The host process to run the restart beside: a pid, or ``containerd`` for the
    containerd process (for nodes whose PID 1 is not the host's init, such as a
    sandbox that hides it: the e2e node)."""
    if spec.isdigit():
        return int(spec)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == spec:
                found.append(int(entry.name))
        except OSError:
            continue
    if not found:
        raise InstallError(f"--host-process {spec!r}: no such process on this node")
    return min(found)  # the longest-running one: containerd's shims are not named so


def restart_needed(prefix: Path, dropin_text: str) -> bool:
    """The drop-in differs from the one containerd was last restarted for (so a
    restart that failed is tried again on the next run, not skipped as unchanged)."""
    stamp = prefix / RESTART_STAMP
    want = hashlib.sha256(dropin_text.encode()).hexdigest()
    return not stamp.exists() or stamp.read_text().strip() != want


def _mark_restarted(prefix: Path, dropin_text: str) -> None:
    _write_if_changed(prefix / RESTART_STAMP,
                      hashlib.sha256(dropin_text.encode()).hexdigest() + "\n")


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)
    return True


SAVED_SUFFIX = ".architect-saved"


def link_shim(link_dir: Path, launcher: Path) -> bool:
    """``link_dir/containerd-shim-architect-v1`` -> the launcher; True if it changed."""
    link = link_dir / SHIM_BINARY
    if link.is_symlink() and os.readlink(link) == str(launcher):
        return False
    if (link.exists() or link.is_symlink()) and not _ours(link):
        link.rename(link.with_name(link.name + SAVED_SUFFIX))
    tmp = link_dir / f".{SHIM_BINARY}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(launcher)
    tmp.replace(link)
    return True


def _ours(link: Path) -> bool:
    """A link another install of ours made (to any prefix's launcher)."""
    return link.is_symlink() and os.readlink(link).endswith(f"/bin/{SHIM_BINARY}") and (
        Path(os.readlink(link)).parent.parent / "current").is_symlink()


def unlink_shim(link_dir: Path, prefix: Path) -> None:
    link = link_dir / SHIM_BINARY
    if link.is_symlink() and os.readlink(link) == str(prefix / "bin" / SHIM_BINARY):
        link.unlink()
        saved = link.with_name(link.name + SAVED_SUFFIX)
        if saved.exists() or saved.is_symlink():
            saved.rename(link)


def install_payload(source: Path, prefix: Path) -> tuple[Path, bool]:
    """Copy ``source/usr`` to ``prefix/payload-KEY`` (once) and switch ``current``."""
    key = tree_key(source / "usr")
    dest = prefix / f"payload-{key}"
    copied = False
    if not (dest / ".complete").exists():
        tmp = prefix / f".payload-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(source / "usr", tmp / "usr", symlinks=True)
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        copied = True
    link = prefix / "current"
    if not link.is_symlink() or os.readlink(link) != dest.name:
        tmp_link = prefix / ".current.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(dest.name)
        tmp_link.replace(link)
    # Older payloads: running shims keep their open files, new ones use current.
    for old in prefix.glob("payload-*"):
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest, copied


@dataclass(frozen=True)
class Report:
    payload: Path
    copied: bool
    dropin_changed: bool
    restarted: bool

    def text(self) -> str:
        return (f"payload {self.payload} ({'copied' if self.copied else 'unchanged'}); "
                f"containerd drop-in {'written' if self.dropin_changed else 'unchanged'}"
                f"{'; containerd restarted' if self.restarted else ''}")


def install(
    prefix: Path,
    containerd_config_dir: Path,
    config_dir: Path,
    restart: Sequence[str] = (),
    source: Path = Path("/"),
    python: str = sys.executable,
    host_process: str = "1",
    link_dir: Path | None = None,
) -> Report:
    if not prefix.is_absolute() or not containerd_config_dir.is_absolute():
        raise InstallError("--prefix and --containerd-config-dir must be absolute host paths")
    payload_dir, copied = install_payload(source, prefix)
    payload = Payload.find(payload_dir, python)
    launcher = prefix / "bin" / SHIM_BINARY
    _write_if_changed(launcher, launcher_text(str(prefix), payload), mode=0o755)
    if link_dir is not None:
        link_shim(link_dir, launcher)
    runsc_config = config_dir / RUNSC_CONFIG
    _write_if_changed(runsc_config, (DEPLOY / RUNSC_CONFIG).read_text(encoding="utf-8"))
    template = (DEPLOY / "containerd-architect.toml").read_text(encoding="utf-8")
    text = dropin_text(template, str(launcher), str(runsc_config))
    changed = _write_if_changed(containerd_config_dir / DROPIN_NAME, text)
    restarted = False
    if restart and restart_needed(prefix, text):
        anchor = find_anchor(host_process)
        proc = subprocess.run(restart_argv(restart, anchor), capture_output=True, text=True,
                              timeout=600, check=False)
        if proc.returncode != 0:
            raise InstallError(f"restarting containerd with {list(restart)} beside pid "
                               f"{anchor} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        _mark_restarted(prefix, text)
        restarted = True
    return Report(payload_dir, copied, changed, restarted)


def uninstall(prefix: Path, containerd_config_dir: Path, config_dir: Path,
              link_dir: Path | None = None) -> None:
    """Remove what install wrote (containerd keeps its handlers until restarted)."""
    if link_dir is not None:
        unlink_shim(link_dir, prefix)
    (containerd_config_dir / DROPIN_NAME).unlink(missing_ok=True)
    (config_dir / RUNSC_CONFIG).unlink(missing_ok=True)
    shutil.rmtree(prefix, ignore_errors=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--prefix", type=Path, default=Path("/opt/architect"),
                   help="host directory of the shim's payload and launcher")
    p.add_argument("--containerd-config-dir", type=Path, default=Path("/etc/containerd/conf.d"),
                   help="the directory containerd's config imports (drop-ins)")
    p.add_argument("--config-dir", type=Path, default=Path("/etc/architect"),
                   help="host directory for the runsc configuration")
    p.add_argument("--link-dir", type=Path, default=None,
                   help="a directory on containerd's PATH (as mounted here) to link the "
                        "shim into, e.g. the host's /usr/local/bin")
    p.add_argument("--host-process", default="1",
                   help="pid (or process name, e.g. containerd) whose namespaces and cgroups "
                        "the restart runs in; 1 on a node whose PID 1 is its init")
    p.add_argument("--restart", nargs=argparse.REMAINDER, default=[],
                   help="command (run on the host) that restarts containerd when the "
                        "drop-in changed, e.g. --restart systemctl restart containerd")


def run(a: argparse.Namespace) -> int:
    try:
        if a.action == "uninstall":
            uninstall(a.prefix, a.containerd_config_dir, a.config_dir, a.link_dir)
            print(f"architect node: removed {a.prefix} and the containerd drop-in")
            return 0
        report = install(a.prefix, a.containerd_config_dir, a.config_dir, a.restart,
                         host_process=a.host_process, link_dir=a.link_dir)
    except (InstallError, OSError, subprocess.TimeoutExpired) as e:
        print(f"architect node install: {e}", file=sys.stderr)
        return 1
    print(f"architect node install: {report.text()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="architect node", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
