"""The one control-character cleaner: text from flag files made safe to show.

No imports at all: guard-run uses it to say why a job was skipped.
"""

from __future__ import annotations


def clean_text(text: str, *, limit: int) -> str | None:
    """One line of printable text: control characters (CR, LF, NUL, ...) become spaces.

    Runs of whitespace become one space, the result is cut to ``limit`` characters;
    None when nothing printable is left. Reasons end up in headers, agent lines and
    pages; nothing in them may break a line or a header, whatever the flag file held.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    cleaned = " ".join(cleaned.split())[:limit].strip()
    return cleaned or None
