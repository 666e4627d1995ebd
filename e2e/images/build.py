"""Build the e2e cluster's images locally and print their archive paths.

    python -m e2e.images.build --cache DIR [busybox|pause|python ...]

busybox: Debian's busybox-static; pause: e2e/images/pause.c compiled static;
python: `debootstrap --variant=minbase` bookworm plus python3 (the `architect` image the
chart runs is built on it by e2e/images/architect.py, on demand). Archives are cached
in DIR under names keyed by what they are built from, so a second run is instant.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.images.oci import ImageError, ImageSpec, write_archive

HERE = Path(__file__).resolve().parent
# Bump when a builder below changes what it puts in an image.
RECIPE = "1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Image:
    name: str
    spec: ImageSpec
    key: Callable[[], str]  # what the cached archive is keyed by
    build_rootfs: Callable[[Path], None]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(
            f"{what}: `{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def _deb_version(package: str) -> str:
    return _run(["dpkg-query", "-W", "-f", "${Version}", package], f"{package} installed?").strip()


def _base_dirs(root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


def busybox_rootfs(root: Path) -> None:
    _base_dirs(root)
    busybox = Path("/bin/busybox")
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in _run([str(busybox), "--list-full"], "busybox --list-full").split():
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def pause_rootfs(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _run(["cc", "-static", "-Os", "-s", "-o", str(root / "pause"), str(HERE / "pause.c")],
         "compiling pause.c")


def python_rootfs(root: Path) -> None:
    _run(["debootstrap", "--variant=minbase", "--include=python3", DEBIAN_SUITE, str(root),
          DEBIAN_MIRROR], "debootstrap")
    # Package caches and lists are dead weight in an image that never runs apt.
    for junk in ("var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/doc",
                 "usr/share/man", "usr/share/locale", "usr/share/info"):
        shutil.rmtree(root / junk, ignore_errors=True)
        (root / junk).mkdir(parents=True, exist_ok=True)


def _pause_key() -> str:
    import hashlib

    return hashlib.sha256((HERE / "pause.c").read_bytes()).hexdigest()[:12]


IMAGES: dict[str, Image] = {
    "busybox": Image(
        "busybox",
        ImageSpec(ref="architect.local/busybox:1.35", cmd=("sh",)),
        lambda: "busybox-static-" + re.sub(r"[^A-Za-z0-9.-]", "_", _deb_version("busybox-static")),
        busybox_rootfs,
    ),
    "pause": Image(
        "pause",
        ImageSpec(ref="architect.local/pause:3.10", entrypoint=("/pause",)),
        lambda: "pause-" + _pause_key(),
        pause_rootfs,
    ),
    "python": Image(
        "python",
        ImageSpec(ref="architect.local/python:3.11", cmd=("python3",),
                  env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "LANG=C.UTF-8", "PYTHONUNBUFFERED=1")),
        lambda: f"debian-{DEBIAN_SUITE}-minbase-python3",
        python_rootfs,
    ),
}


def archive_path(cache: Path, image: Image) -> Path:
    return cache / f"{image.name}-r{RECIPE}-{image.key()}.tar"


def ensure(cache: Path, image: Image) -> Path:
    out = archive_path(cache, image)
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix=f"architect-image-{image.name}-") as tmp:
        root = Path(tmp) / "rootfs"
        image.build_rootfs(root)
        write_archive(root, image.spec, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e.images.build", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="archive cache directory")
    parser.add_argument("--ref", action="store_true", help="print 'NAME REF ARCHIVE' lines")
    parser.add_argument("images", nargs="*", default=list(IMAGES), help="images to build")
    args = parser.parse_args(argv)
    unknown = [n for n in args.images if n not in IMAGES]
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    try:
        for name in args.images:
            image = IMAGES[name]
            path = ensure(args.cache, image)
            print(f"{name} {image.spec.ref} {path}" if args.ref else path)
    except ImageError as err:
        print(f"e2e/images: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
