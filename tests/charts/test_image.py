"""The chart's image builder (e2e/images/architect.py): its pure parts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from e2e.images import architect as image
from e2e.images.oci import ImageError, ImageSpec, write_layer, write_layered_archive

STATUS = """Package: python3
Status: install ok installed
Version: 3.11.2-1+b1

Package: libmnl0
Status: deinstall ok config-files
Version: 1.0.4-3

Package: dpkg
Status: install ok installed
"""


def _layer_with(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    out = tmp_path / "layer.tar"
    with out.open("wb") as fh:
        write_layer(root, fh)
    return out


def test_installed_packages_come_from_dpkg_status(tmp_path: Path) -> None:
    layer = _layer_with(tmp_path, {"var/lib/dpkg/status": STATUS})
    assert image.installed_in_layer(layer) == {"python3", "dpkg"}


def test_a_layer_without_dpkg_status_is_named(tmp_path: Path) -> None:
    layer = _layer_with(tmp_path, {"etc/hostname": "x"})
    with pytest.raises(ImageError, match="no var/lib/dpkg/status"):
        image.installed_in_layer(layer)


def test_layered_archive_keeps_layer_order_and_digests(tmp_path: Path) -> None:
    layers = []
    for i in range(3):
        d = tmp_path / f"l{i}"
        d.mkdir()
        (d / f"f{i}").write_text(str(i))
        path = tmp_path / f"l{i}.tar"
        with path.open("wb") as fh:
            layers.append((path, write_layer(d, fh)))
    out = tmp_path / "img.tar"
    write_layered_archive(layers, ImageSpec(ref="architect.local/t:1"), out)
    with tarfile.open(out) as tar:
        index = json.load(io.BytesIO(tar.extractfile("index.json").read()))  # type: ignore[union-attr]
        mdigest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{mdigest}"))  # type: ignore[arg-type]
        cdigest = manifest["config"]["digest"].split(":")[1]
        config = json.load(tar.extractfile(f"blobs/sha256/{cdigest}"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    want = [d for _, d in layers]
    assert [m["digest"].split(":")[1] for m in manifest["layers"]] == want
    assert config["rootfs"]["diff_ids"] == [f"sha256:{d}" for d in want]
    assert {f"blobs/sha256/{d}" for d in want} <= names
    with pytest.raises(ImageError, match="no layers"):
        write_layered_archive([], ImageSpec(ref="architect.local/t:1"), out)


def test_source_key_follows_the_package_files() -> None:
    key = image.source_key()
    assert key == image.source_key()
    assert image.image_ref(key).startswith("architect.local/architect:") and key in image.image_ref(
        key
    )


def test_requirements_are_the_projects_plus_netfilterqueue() -> None:
    reqs = image.requirements()
    assert reqs[-1] == image.NFQ_REQUIREMENT
    assert any(r.startswith("kopf") for r in reqs)


def test_the_wheel_carries_what_node_install_reads() -> None:
    """The image installs the project's wheel: runtime/shim/deploy (read by
    `architect node install`) must match the package data patterns."""
    import fnmatch
    import tomllib

    from architect.runtime.shim import nodeinstall

    patterns = tomllib.loads((image.REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["*"]
    files = sorted(p.name for p in nodeinstall.DEPLOY.iterdir())
    assert files, nodeinstall.DEPLOY
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), (name, patterns)
