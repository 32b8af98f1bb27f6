"""Durations and RFC 3339 times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.core.durations import format_duration, format_time, parse_duration, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45", 45),
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("0.5", 0.5),
        ("1.5s", 1.5),
        (" 2H ", 7200),
    ],
)
def test_parse_duration_accepts_spec_forms(text: str, seconds: float) -> None:
    """Every form the SPEC lists parses to the right number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "-5", "1h-3m", "m10", "1.5h", "abc", "10 m"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    """Anything else is a ValueError with an example in the message."""
    with pytest.raises(ValueError, match="1h30m"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(seconds: int) -> None:
    """format_duration's output parses back to the same number of seconds."""
    assert parse_duration(format_duration(seconds)) == seconds


def test_parse_time_accepts_z_offsets_and_naive_local() -> None:
    """RFC 3339 with Z or an offset is exact; a naive time is the local time."""
    assert parse_time("2026-11-21T23:00:00Z") == datetime(2026, 11, 21, 23, tzinfo=UTC)
    assert format_time(parse_time("2026-11-22T01:00:00+02:00")) == "2026-11-21T23:00:00Z"
    naive = parse_time("2026-11-21T23:00:00")
    assert naive.tzinfo is not None
    assert naive == datetime(2026, 11, 21, 23).astimezone()


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-13-01T00:00:00Z", "23:00"])
def test_parse_time_rejects_non_times(text: str) -> None:
    """Non-times raise ValueError."""
    with pytest.raises(ValueError):
        parse_time(text)
