"""The generated CRDs: committed, structural, described, and every rule compiles."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import pytest

from architect.policy.crdgen import all_crds, crd_files
from architect.policy.validation import all_rules

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    for name, text in crd_files().items():
        path = ROOT / "crds" / name
        assert path.is_file(), f"{path} missing: run `architect crds --write crds`"
        assert path.read_text() == text, f"{path} is stale: run `architect crds --write crds`"
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(crd_files())


def _nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from _nodes(schema[key], f"{path}[{key}]")


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_structural(crd: dict[str, Any]) -> None:
    """The API server's structural-schema rules that a generator can get wrong."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        assert "type" in node, f"{path}: every node needs a type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const", "nullable", "$defs"):
            assert banned not in node, f"{path}: {banned} is not structural here"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert "items" in node, path


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_every_field_has_a_description(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        for name, sub in node.get("properties", {}).items():
            if f"{path}.{name}" == ".metadata":
                continue  # the API server describes metadata itself
            assert sub.get("description"), f"{path}.{name} has no description"


def test_every_rule_compiles_and_has_a_message() -> None:
    env = celpy.Environment()
    rules = all_rules()
    assert len(rules) >= 15
    for kind, rule, message in rules:
        env.compile(rule)
        assert message and not message.endswith("."), (kind, rule)


def test_api_md_rules_are_present() -> None:
    messages = {m for _, _, m in all_rules()}
    for expected in [
        "scaledownAfter must be greater than 0",
        "scaleupTimeout is for runtime runc only",
        "healthCheckProxy needs wakeOn.network to be packets or connections",
        "shadowPorts needs wakeOn.network to be packets or connections",
        "container names must be unique",
        "managedPod needs runtime runsc",
        "containers must be empty when managedPod is true",
        "appPort and shadowPort must differ",
        "appPort must be between 1 and 65535",
        "shadowPort must be between 1 and 65535",
        "rewriteListenerAddresses and rewriteEstablishedAddresses are for runtime runc only",
    ]:
        assert expected in messages


def test_names() -> None:
    names = {c["spec"]["names"]["kind"]: c["spec"]["names"] for c in all_crds()}
    assert names["HibernationPolicy"]["shortNames"] == ["hp"]
    assert names["MigrationPolicy"]["shortNames"] == ["mp"]
    assert {c["spec"]["scope"] for c in all_crds()} == {"Namespaced"}
    assert {c["spec"]["group"] for c in all_crds()} == {"architect.loopholelabs.io"}


def test_annotation_docs_match_the_table() -> None:
    from architect.policy.docs import annotations_markdown

    path = ROOT / "docs" / "annotations.md"
    assert path.read_text() == annotations_markdown(), "run `architect docs --write docs`"
