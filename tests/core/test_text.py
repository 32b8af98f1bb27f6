"""core/text.py: the one control-character cleaner, used by guardd, guardctl and guard-run."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.core.text import clean_text


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("db upgrade", 200, "db upgrade"),
        ("line one\r\nSet-Cookie: x", 200, "line one Set-Cookie: x"),
        ("\x00\x1b[31mred\x07", 200, "[31mred"),
        ("  spaced \t out  ", 200, "spaced out"),
        ("abcdef", 3, "abc"),
        ("ab   cd", 3, "ab"),
        ("\n\r\t\x00", 200, None),
        ("", 200, None),
        ("Wartung: ünïcödé ✓", 200, "Wartung: ünïcödé ✓"),
    ],
)
def test_clean_text(text: str, limit: int, expected: str | None) -> None:
    """Control characters become spaces, whitespace runs collapse, cut at the limit."""
    assert clean_text(text, limit=limit) == expected


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_any_text_becomes_one_printable_line(text: str, limit: int) -> None:
    """Whatever the input: None or one printable, stripped line of at most ``limit``."""
    cleaned = clean_text(text, limit=limit)
    if cleaned is not None:
        assert cleaned.isprintable() and cleaned == cleaned.strip()
        assert 0 < len(cleaned) <= limit


def test_guard_run_says_the_same_reason(tmp_path) -> None:
    """guard-run's flag_reason and guardd's flag parser clean a hostile reason alike."""
    from guardd.cli.run import MAX_REASON_CHARS, flag_reason
    from guardd.core.flag import parse_flag_content

    flag = tmp_path / "default.lock"
    flag.write_bytes(b'{"reason": "a\\r\\nb\\u0000c    d"}')
    assert flag_reason(str(flag)) == parse_flag_content(flag.read_bytes(), mtime=0).reason
    assert flag_reason(str(flag)) == "a b c d"
    assert MAX_REASON_CHARS > 0
