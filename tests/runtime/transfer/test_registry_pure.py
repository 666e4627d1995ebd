"""The OCI registry client's pure parts: references, manifests, the checks on pull."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from architect.runtime.shim import plan
from architect.runtime.transfer import registry as r

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


@pytest.mark.parametrize(("text", "want"), [
    ("registry.local:5000/checkpoints/app", ("registry.local:5000", "checkpoints/app", "dflt", "")),
    ("10.0.0.1:5000/a:v1", ("10.0.0.1:5000", "a", "v1", "")),
    (f"localhost/x/y/z:t@{D1}", ("localhost", "x/y/z", "t", D1)),
    ("[::1]:5000/a", ("[::1]:5000", "a", "dflt", "")),
])
def test_references_parse(text: str, want: tuple[str, str, str, str]) -> None:
    ref = r.parse_reference(text, "dflt")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == want


@pytest.mark.parametrize("text", ["app", "checkpoints/app", "Reg.local/App", "reg.local/",
                                  "reg.local/a:", "reg.local/a@sha256:12", "reg.local/../a"])
def test_bad_references_say_what_is_expected(text: str) -> None:
    with pytest.raises(r.RegistryError, match="registry"):
        r.parse_reference(text)


def test_default_tag_and_location() -> None:
    assert r.default_tag("team-a", "warm.cache") == "team-a.warm.cache"
    assert len(r.default_tag("n" * 63, "x" * 253)) == 128
    ref = r.parse_reference("reg:5000/c/app", "team-a.warm")
    assert r.location(ref, D1) == f"reg:5000/c/app:team-a.warm@{D1}"
    assert r.parse_reference(r.location(ref, D1)).digest == D1


@pytest.mark.parametrize(("host", "plain"), [
    ("127.0.0.1:5000", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("10.1.2.3:5000", False), ("registry.local:5000", False), ("ghcr.io", False)])
def test_plain_http_only_for_loopback_and_listed(host: str, plain: bool) -> None:
    assert r.plain_http(host) is plain
    assert r.plain_http(host, [host]) is True


@pytest.mark.parametrize("title", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"])
def test_layer_titles_never_leave_the_directory(title: str) -> None:
    with pytest.raises(r.RegistryError, match="safe file name"):
        r.layer_path({"digest": D1, "annotations": {r.TITLE: title}})
    assert str(r.layer_path({"annotations": {r.TITLE: "pages/0.img"}})) == "pages/0.img"


def _manifest(layers: list[tuple[str, str]], config_type: str = r.CONFIG_TYPE) -> bytes:
    return r.build_manifest(r.descriptor(config_type, D2, 10),
                            [r.descriptor(r.LAYER_TYPE, d, 5, t) for t, d in layers])


def test_manifest_is_canonical_and_checked() -> None:
    raw = _manifest([("manifest.json", D1), ("checkpoint.img", D2)])
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    pinned = "sha256:" + hashlib.sha256(raw).hexdigest()
    m = r.check_manifest(raw, pinned, D1)
    assert [x["annotations"][r.TITLE] for x in m["layers"]] == ["manifest.json", "checkpoint.img"]


@pytest.mark.parametrize(("raw", "pinned", "ckpt", "why"), [
    (_manifest([("manifest.json", D1)]), D2, D1, "digest mismatch: the tag names manifest"),
    (_manifest([("manifest.json", D2)]), "", D1, "digest mismatch: the image's manifest.json"),
    (_manifest([("checkpoint.img", D1)]), "", D1, "has no manifest.json"),
    (_manifest([("manifest.json", D1), ("manifest.json", D1)]), "", D1, "twice"),
    (_manifest([("manifest.json", D1)], "application/vnd.oci.image.config.v1+json"), "", D1,
     "not a PersistentCheckpoint image"),
    (b"{}", "", D1, "not an OCI image manifest"),
    (r.build_manifest(r.descriptor(r.CONFIG_TYPE, "sha256:zz", 1), []), "", D1, "bad descriptor"),
])
def test_manifest_refusals(raw: bytes, pinned: str, ckpt: str, why: str) -> None:
    with pytest.raises(r.RegistryError, match=why):
        r.check_manifest(raw, pinned, ckpt)


def test_files_of_skip_marks(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("manifest.json", "sub/p.img", *r.MARKS):
        (tmp_path / name).write_text("x")
    assert [rel for rel, _ in r.files_of(tmp_path, r.MARKS)] == ["manifest.json", "sub/p.img"]


def test_unavailable_leaves_no_image_file_and_says_why(tmp_path: Path) -> None:
    d = tmp_path / "pc"
    (d / "sub").mkdir(parents=True)
    for name in ("manifest.json", "sub/p.img", plan.PENDING_MARK, plan.GRANT_FILE):
        (d / name).write_text("x")
    r.mark_unavailable(d, "tag t not found")
    assert sorted(p.name for p in d.iterdir()) == [plan.UNAVAILABLE_MARK]
    assert plan.unavailable(d) == "tag t not found"


def test_push_needs_a_sealed_image(tmp_path: Path) -> None:
    with pytest.raises(r.RegistryError, match="no sealed image"):
        r.push_checkpoint(tmp_path, "127.0.0.1:1/a", "ns", "n")
