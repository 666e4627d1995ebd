"""Go-style durations (``500ms``, ``30s``, ``1m30s``, ``2h``).

Annotations and policy fields carry durations as strings in Go's
``time.ParseDuration`` syntax, because that is what the seed's users write and
what Kubernetes' CEL ``duration()`` accepts. This module is the one parser.
"""

from __future__ import annotations

import re
from datetime import timedelta

# The units time.ParseDuration knows, in nanoseconds.
_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|μs|ms|s|m|h)")

# The same language as a JSON-schema pattern, for the CRD (no sign: every
# duration Architect takes is positive). Stricter than Go about bare dots
# (".5s"), so the parser above and the CRD accept exactly the same strings.
GO_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$"

EXAMPLES = "e.g. 500ms, 30s, 1m30s, 2h"


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration; raise ValueError naming the text on bad input."""
    return timedelta(microseconds=_parse_ns(text) / 1000)


def _parse_ns(text: str) -> float:
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string ({EXAMPLES}), got {type(text).__name__}")
    s = text.strip()
    if s != text or not s:
        raise ValueError(f"'{text}' is not a duration ({EXAMPLES})")
    sign = 1
    if s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total_ns = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"'{text}' is not a duration ({EXAMPLES})")
        total_ns += float(m.group(1)) * _UNITS_NS[m.group(2)]
        pos = m.end()
    if total_ns > 2**63 - 1:
        raise ValueError(f"'{text}' is out of range (at most about 2562047h)")
    return sign * total_ns


def parse_positive_duration(text: str) -> timedelta:
    """Parse a duration that must be greater than zero."""
    if _parse_ns(text) <= 0:
        raise ValueError(f"'{text}' must be greater than 0")
    return parse_duration(text)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way Go's Duration.String() would (whole units)."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    sign = "-" if total_ms < 0 else ""
    total_ms = abs(total_ms)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    if not hours and not minutes and not seconds:
        return f"{sign}{millis}ms"
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    frac = f".{millis:03d}".rstrip("0") if millis else ""
    out += f"{seconds}{frac}s"
    return out
