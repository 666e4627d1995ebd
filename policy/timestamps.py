"""Kubernetes timestamps (RFC 3339, ``2026-01-01T12:00:00Z``): the one parser and
the one formatter for the times Architect reads from and writes to API objects."""

from __future__ import annotations

from datetime import datetime


def parse_time(text: str | None) -> datetime | None:
    """``text`` as a datetime; None when it is missing or not a timestamp."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def fmt_time(t: datetime) -> str:
    """``t`` to the second, UTC spelled ``Z`` as the API server writes it."""
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")
