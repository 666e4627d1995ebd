from datetime import timedelta

import pytest

from architect.policy.durations import (
    GO_DURATION_PATTERN,
    format_duration,
    parse_duration,
    parse_positive_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("1m30s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("2h", timedelta(hours=2)),
        ("1.5h", timedelta(minutes=90)),
        ("1h2m3s4ms", timedelta(hours=1, minutes=2, seconds=3, milliseconds=4)),
        ("250us", timedelta(microseconds=250)),
        ("250µs", timedelta(microseconds=250)),
        ("0", timedelta(0)),
        ("-1s", timedelta(seconds=-1)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "abc", "1x", ".5s", "1.s", " 1s", "1s ", "s", "1d"])
def test_parse_rejects_with_the_text_named(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        parse_positive_duration("0s")
    with pytest.raises(ValueError, match="greater than 0"):
        parse_positive_duration("-5m")
    parse_positive_duration("1ns")  # below timedelta's resolution, still positive


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(0), "0s"),
        (timedelta(hours=2), "2h0m0s"),
        (timedelta(seconds=1.25), "1.25s"),
    ],
)
def test_format_round_trips(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_schema_pattern_and_parser_agree() -> None:
    import re

    pattern = re.compile(GO_DURATION_PATTERN)
    for text in ["30s", "1m30s", "1.5h", "500ms", "250µs", "30", ".5s", "1.s", "abc"]:
        try:
            parse_duration(text)
            parsed = True
        except ValueError:
            parsed = False
        assert bool(pattern.match(text)) == parsed, text
