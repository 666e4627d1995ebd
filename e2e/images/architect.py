"""The `architect` image: the python:3.11 image plus this project, three layers.

    python -m e2e.images.architect --cache DIR [--import SOCKET]

1. the python image's own layer (Debian bookworm minbase + python3 3.11), reused
   as is, so containerd stores it once for both images;
2. dependencies, keyed by what they are made from: the wheels of the project's
   runtime dependencies and netfilterqueue built by the host's pip for cp311
   (the host is the same Debian), plus the Debian packages the node daemon
   needs (iptables, conntrack, libnetfilter-queue1) and the shared libraries
   they need that the base lacks, unpacked with `dpkg -x`;
3. the project itself, installed from its wheel (``pip wheel`` of a copy of the
   tree, so setuptools' build/ and egg-info never land in the checkout): what
   ``pip install architect`` installs, plus an ``architect`` command for the
   image's python3; keyed by the hash of its files and pyproject.toml.

Every layer is byte-compiled with unchecked-hash .pyc files, so a container
with a read-only root starts without recompiling. The archive is cached in DIR
under `architect-r<recipe>-<deps key>-<source key>.tar`; older ones are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from e2e.images import build
from e2e.images.oci import ImageError, ImageSpec, write_layer, write_layered_archive

REPO = Path(__file__).resolve().parents[2]
RECIPE = "1"  # bump when a builder below changes what it puts in a layer
REPOSITORY = "architect.local/architect"
SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian python3's sys.path
NFQ_REQUIREMENT = "netfilterqueue==1.1.0"  # the version runtime/network/install pins
DEBS = ("iptables", "conntrack", "libnetfilter-queue1")
# The project's package: architect/ links these three layers in.
PACKAGE_DIRS = ("architect", "policy", "engine", "runtime")
# What the wheel is built from besides PACKAGE_DIRS (README.md: the metadata's readme).
PROJECT_FILES = ("pyproject.toml", "README.md")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "install", "gen-proto", "*.patch")
ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
)
CLI = "#!/usr/bin/python3\nimport sys\nfrom architect.cli import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class Built:
    ref: str
    archive: Path
    seconds: float  # 0 when it came from the cache


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise ImageError(
            f"{what}: `{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc.stdout


def requirements() -> list[str]:
    """The project's runtime dependencies (pyproject.toml) plus netfilterqueue."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], NFQ_REQUIREMENT]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _candidate(package: str) -> str:
    out = _run(["apt-cache", "policy", package], f"apt-cache policy {package}")
    found = re.search(r"Candidate: (\S+)", out)
    if not found or found.group(1) == "(none)":
        raise ImageError(f"Debian package {package}: no candidate version (run apt-get update)")
    return found.group(1)


def pycriu_dir() -> Path:
    """pycriu as runtime/checkpoint/install put it into this Python (pure Python,
    generated from CRIU's own image .protos): the shim reads and rewrites CRIU
    images with it, so the node payload carries it."""
    spec = importlib.util.find_spec("pycriu")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("pycriu is not importable: run runtime/checkpoint/install first")
    return Path(next(iter(spec.submodule_search_locations)))


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def deps_key() -> str:
    debs = [f"{p}={_candidate(p)}" for p in DEBS]
    return _short("\n".join([RECIPE, sys.version.split()[0], *requirements(), *debs,
                             f"pycriu={_tree_digest(pycriu_dir())}"]))


def source_key() -> str:
    h = hashlib.sha256(RECIPE.encode())
    for name in PROJECT_FILES:
        h.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    for top in PACKAGE_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO).as_posix()
            if "__pycache__" in rel or path.suffix == ".pyc" or not path.is_file():
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def image_ref(src_key: str) -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    return f"{REPOSITORY}:{version}-{src_key}"


# --- layers -----------------------------------------------------------------


def base_layer(cache: Path) -> tuple[Path, str]:
    """The python image's layer, taken out of its archive once."""
    archive = build.ensure(cache, build.IMAGES["python"])
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.name.startswith("blobs/sha256/")]
        sizes = {n: tar.getmember(n).size for n in names}
        layer = max(names, key=lambda n: sizes[n])  # config and manifest are tiny
        digest = layer.rsplit("/", 1)[1]
        out = cache / "layers" / f"python-{digest[:12]}.tar"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(layer)
            if src is None:
                raise ImageError(f"{archive}: layer {layer} is not a file")
            tmp = out.with_name(out.name + ".tmp")
            with tmp.open("wb") as fh:
                shutil.copyfileobj(src, fh, 1 << 20)
            tmp.replace(out)
    return out, digest


def installed_in_layer(layer: Path) -> set[str]:
    """Package names dpkg's status file in a layer tar says are installed."""
    with tarfile.open(layer) as tar:
        try:
            fh = tar.extractfile("var/lib/dpkg/status")
        except KeyError:
            fh = None
        if fh is None:
            raise ImageError(f"{layer}: no var/lib/dpkg/status (not a Debian root?)")
        text = fh.read().decode()
    out = set()
    for para in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)", para, re.MULTILINE)
        if name and re.search(r"^Status: .* installed$", para, re.MULTILINE):
            out.add(name.group(1))
    return out


def deb_closure(roots: tuple[str, ...], have: set[str]) -> list[str]:
    """The packages roots need (Depends/PreDepends, recursively) that are not in have."""
    out = _run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *roots,
        ],
        "apt-cache depends",
    )
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    # Virtual packages print as <name>; the base provides the ones we meet (debconf...).
    return sorted(n for n in names if not n.startswith("<") and n not in have)


def _iptables_links(root: Path) -> None:
    # dpkg -x runs no maintainer scripts: make the links update-alternatives
    # would, to the nft backend (Debian bookworm's default, as on the nodes).
    sbin = root / "usr/sbin"
    for fam in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            link = sbin / f"{fam}{suffix}"
            if not link.exists():
                link.symlink_to("xtables-nft-multi")


def _compile(site: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-d",
            f"/{SITE}",
            str(site),
        ],
        "byte-compiling",
    )


def deps_layer(cache: Path, base: Path) -> tuple[Path, str]:
    out = cache / "layers" / f"deps-{deps_key()}.tar"
    digest_file = out.with_suffix(".sha256")
    if out.exists() and digest_file.exists():
        return out, digest_file.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="architect-image-deps-") as tmp:
        work = Path(tmp)
        root, wheels, debs = work / "root", work / "wheels", work / "debs"
        site = root / SITE
        for d in (site, wheels, debs):
            d.mkdir(parents=True)
        pip = list(PIP)
        # Wheels from the host's pip (same Debian, same glibc, cp311): sdists such as
        # netfilterqueue are compiled here against the host's libnetfilter-queue.
        _run([*pip, "wheel", "--wheel-dir", str(wheels), *requirements()], "pip wheel")
        _run(
            [
                *pip,
                "install",
                "--no-index",
                "--find-links",
                str(wheels),
                "--no-compile",
                "--target",
                str(site),
                *requirements(),
            ],
            "pip install --target",
        )
        shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with the host's shebang
        shutil.copytree(pycriu_dir(), site / "pycriu", ignore=SKIP)
        packages = deb_closure(DEBS, installed_in_layer(base))
        try:
            _run(["apt-get", "download", *packages], "apt-get download", cwd=debs)
        except ImageError:
            # Stale package lists name files the mirror no longer has.
            _run(["apt-get", "update", "-q"], "apt-get update")
            _run(["apt-get", "download", *packages], "apt-get download", cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
            shutil.rmtree(root / junk, ignore_errors=True)
        _iptables_links(root)
        _compile(site)
        tmp_out = out.with_name(out.name + ".tmp")
        with tmp_out.open("wb") as fh:
            digest = write_layer(root, fh)
        tmp_out.replace(out)
        digest_file.write_text(digest + "\n")
    return out, digest


def project_wheel(work: Path) -> Path:
    """The project's wheel, built by pip from a copy of the tree: an in-tree build
    would leave build/ and architect.egg-info in the checkout. The copy keeps
    architect/'s symlinks; setuptools follows them into the wheel."""
    src, wheels = work / "src", work / "wheels"
    src.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, src / name)
    for top in PACKAGE_DIRS:
        shutil.copytree(REPO / top, src / top, symlinks=True, ignore=SKIP)
    _run([*PIP, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)], "pip wheel (project)")
    found = sorted(wheels.glob("architect-*.whl"))
    if len(found) != 1:
        raise ImageError(f"pip wheel (project): want one architect wheel, got {found}")
    return found[0]


def _drop_direct_url(site: Path) -> None:
    """pip records the wheel's URL, a temp dir here: without it the layer stays
    reproducible (the same source gives the same digest)."""
    for info in site.glob("architect-*.dist-info"):
        (info / "direct_url.json").unlink(missing_ok=True)
        record = info / "RECORD"
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        record.write_text("".join(ln for ln in lines if "/direct_url.json," not in ln),
                          encoding="utf-8")


def project_layer(cache: Path, key: str) -> tuple[Path, str]:
    out = cache / "layers" / f"project-{key}.tar"
    with tempfile.TemporaryDirectory(prefix="architect-image-src-") as tmp:
        work = Path(tmp)
        root = work / "root"
        wheel = project_wheel(work)
        _run(
            [*PIP, "install", "--no-deps", "--no-compile", "--target", str(root / SITE), str(wheel)],
            "pip install --target (project wheel)",
        )
        shutil.rmtree(root / SITE / "bin", ignore_errors=True)  # its script has the host's shebang
        _drop_direct_url(root / SITE)
        _compile(root / SITE)
        cli = root / "usr/local/bin/architect"
        cli.parent.mkdir(parents=True)
        cli.write_text(CLI)
        cli.chmod(0o755)
        tmp_out = out.with_name(out.name + ".tmp")
        with tmp_out.open("wb") as fh:
            digest = write_layer(root, fh)
        tmp_out.replace(out)
    return out, digest


# --- the image ---------------------------------------------------------------


def _prune(cache: Path, keep: set[Path]) -> None:
    """Old builds of this image: each source change makes a new one."""
    for pattern in ("architect-r*.tar", "layers/project-*.tar", "layers/deps-*.tar"):
        for path in cache.glob(pattern):
            if path not in keep:
                path.unlink(missing_ok=True)
                path.with_suffix(".sha256").unlink(missing_ok=True)


def ensure(cache: Path) -> Built:
    start = time.monotonic()
    src = source_key()
    dkey = deps_key()
    ref = image_ref(src)
    out = cache / f"architect-r{RECIPE}-{dkey}-{src}.tar"
    if out.exists():
        return Built(ref, out, 0.0)
    base = base_layer(cache)
    deps = deps_layer(cache, base[0])
    project = project_layer(cache, src)
    write_layered_archive(
        [base, deps, project], ImageSpec(ref=ref, cmd=("architect",), env=ENV), out
    )
    project[0].unlink()  # its bytes are in the archive; a new source makes a new one
    _prune(cache, {out, deps[0], base[0]})
    return Built(ref, out, time.monotonic() - start)


def import_image(built: Built, socket: Path) -> None:
    """Import into the e2e containerd's k8s.io namespace unless that manifest is there."""
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
    listed = _run([*ctr, "images", "ls", f"name=={built.ref}"], "ctr images ls")
    with tarfile.open(built.archive) as tar:
        fh = tar.extractfile("index.json")
        want = fh.read().decode() if fh else ""
    digest = re.search(r'"digest":"(sha256:[0-9a-f]{64})"', want)
    if digest and digest.group(1) in listed:
        return
    _run([*ctr, "images", "import", str(built.archive)], f"importing {built.archive}")


def image_size(archive: Path) -> int:
    return archive.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="e2e.images.architect", description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="archive cache directory")
    ap.add_argument(
        "--import",
        dest="socket",
        type=Path,
        metavar="SOCKET",
        help="also import into this containerd's k8s.io namespace",
    )
    args = ap.parse_args(argv)
    try:
        built = ensure(args.cache)
        if args.socket:
            import_image(built, args.socket)
    except ImageError as err:
        print(f"e2e/images: {err}", file=sys.stderr)
        return 1
    how = f"built in {built.seconds:.1f}s" if built.seconds else "cached"
    size = image_size(built.archive) / 2**20
    print(f"{built.ref} {built.archive} ({how}, {size:.0f} MiB)")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("e2e.images.architect: needs root (apt-get download, ctr)", file=sys.stderr)
    sys.exit(main())
