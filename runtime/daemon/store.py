"""The requests a container was admitted with, kept on the node while it runs on
hibernated ones: after a daemon restart the pod's spec only shows the token
requests, so the originals must come from here.

One small JSON file (``<state dir>/requests.json``), rewritten atomically; keys
are ``<pod uid>/<container>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class JsonStore:
    """A small JSON object of string maps in one file, rewritten atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: memory only (tests, or no state dir)
        self.data: dict[str, dict[str, str]] = {}
        if path is not None and path.exists():
            try:
                doc = json.loads(path.read_text())
                if isinstance(doc, dict):
                    self.data = {
                        str(k): {str(a): str(b) for a, b in v.items()}
                        for k, v in doc.items()
                        if isinstance(v, dict)
                    }
            except (OSError, ValueError):
                self.data = {}  # unreadable: start over (the spec's values are used)

    def get_key(self, key: str) -> dict[str, str] | None:
        return self.data.get(key)

    def put_key(self, key: str, value: dict[str, str]) -> None:
        self.data[key] = dict(value)
        self._save()

    def drop_key(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)


class RequestsStore(JsonStore):
    """Original requests by ``<pod uid>/<container>``."""

    @staticmethod
    def key(pod_uid: str, container: str) -> str:
        return f"{pod_uid}/{container}"

    def get(self, pod_uid: str, container: str) -> dict[str, str] | None:
        return self.get_key(self.key(pod_uid, container))

    def put(self, pod_uid: str, container: str, requests: dict[str, str]) -> None:
        self.put_key(self.key(pod_uid, container), requests)

    def drop(self, pod_uid: str, container: str) -> None:
        self.drop_key(self.key(pod_uid, container))
