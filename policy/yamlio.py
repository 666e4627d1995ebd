"""Reading and writing YAML documents, with places for error messages."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError


class InputError(Exception):
    """A file that cannot be read or parsed; the message names the place."""


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with where it came from."""

    obj: Any
    source: str
    index: int  # 1-based position in the stream
    line: int  # 1-based first line, for messages

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line} (document {self.index})"

    def describe(self) -> str:
        """`Kind/name` when the document has them, for messages."""
        if isinstance(self.obj, Mapping):
            kind = self.obj.get("kind", "?")
            meta = self.obj.get("metadata")
            name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
            return f"{kind}/{name}"
        return "document"


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers as plain dicts and lists."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def read_text(path: str) -> tuple[str, str]:
    """(text, display name) of a file path, or stdin for ``-``."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None


def load_documents(text: str, source: str) -> list[Document]:
    """Every non-empty document of a YAML stream, as plain Python values."""
    yaml = YAML(typ="rt")
    docs: list[Document] = []
    try:
        for i, node in enumerate(yaml.load_all(text), start=1):
            if node is None:
                continue
            line = node.lc.line + 1 if hasattr(node, "lc") and node.lc.line is not None else 1
            docs.append(Document(_plain(node), source, i, line))
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    return docs


def dump_documents(objs: Iterable[Mapping[str, Any]]) -> str:
    """YAML documents separated by ``---``, keys in the order they were built."""
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.width = 4096  # long CEL rules and descriptions stay on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump_all([_plain(o) for o in objs], out)
    return out.getvalue()
