"""Durations ("1h30m") and RFC 3339 times, both ways. Pure, no I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# The longest duration anything accepts: 100 years. Every clock and date a duration
# is added to (monotonic deadlines, ``now + timedelta``, poll timeouts) has room for
# it, where "99999999999999999999" would overflow somewhere far from the input.
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(text: str) -> float:
    """Parse ``45``, ``30s``, ``10m``, ``2h``, ``1h30m``, ``1d`` into seconds.

    Raises ValueError with a human message on anything else, and on durations
    longer than MAX_DURATION.
    """
    value = text.strip().lower()
    if _NUMBER_RE.fullmatch(value):
        return check_duration(float(value), text)
    match = _DURATION_RE.fullmatch(value)
    if not value or match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (examples: 45, 30s, 10m, 2h, 1h30m)")
    days, hours, minutes, seconds = match.groups()
    # Python ints do not overflow; the float sum of a 400-digit count of days would.
    whole = (
        int(days or 0) * _UNIT_SECONDS["d"]
        + int(hours or 0) * _UNIT_SECONDS["h"]
        + int(minutes or 0) * _UNIT_SECONDS["m"]
    )
    if whole > MAX_DURATION:
        raise ValueError(_too_long(text))
    return check_duration(whole + float(seconds or 0), text)


def check_duration(seconds: float, shown: object) -> float:
    """``seconds`` if it is a finite number from 0 to MAX_DURATION, else ValueError."""
    if not 0 <= seconds <= MAX_DURATION:  # also false for NaN
        raise ValueError(_too_long(shown))
    return seconds


def _too_long(shown: object) -> str:
    return f"{shown!r} is not a duration from 0 to 100 years"


def format_duration(seconds: float) -> str:
    """Format seconds the way parse_duration reads them back (``1h30m``, ``45s``)."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time; a time without offset is taken as local time.

    Always returns an aware datetime that can be shown in UTC (so not one whose
    offset pushes it past year 9999). Raises ValueError on anything else.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # naive: the operator's local time
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is not an RFC 3339 time (example: 2026-11-21T23:00:00Z)"
        ) from None
    return parsed


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, second precision: stable and sortable."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_timestamp(epoch: float) -> str | None:
    """RFC 3339 (UTC) for a Unix timestamp; None when it is outside years 1-9999.

    File systems store such times (``touch -d @300000000000`` on tmpfs, btrfs, NFS);
    a flag's time stamp must never be what makes reading it fail.
    """
    try:
        return format_time(datetime.fromtimestamp(epoch, UTC))
    except (ValueError, OverflowError, OSError):
        return None
