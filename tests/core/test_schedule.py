"""Scheduled windows: the pure plan, with time given by the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from guardd.core.durations import format_time
from guardd.core.schedule import (
    Window,
    due_steps,
    next_wakeup,
    overlaps,
    read_windows,
    upcoming,
    write_windows,
)

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def window(
    at: datetime = T0,
    hours: float = 1,
    notice: float = 3600,
    *,
    auto_off: bool = False,
    started: bool = False,
    done: bool = False,
    wrote_flag: bool = False,
) -> Window:
    return Window(
        id="w1",
        scope="shop",
        at=format_time(at),
        end=format_time(at + timedelta(hours=hours)),
        reason="db",
        notice=notice,
        auto_off=auto_off,
        started=started,
        done=done,
        wrote_flag=wrote_flag,
    )


def test_announced_only_within_notice_before_start() -> None:
    """A window is upcoming from at - notice until at, not before and not after."""
    w = window()
    assert upcoming([w], T0 - timedelta(hours=2)) == []
    assert upcoming([w], T0 - timedelta(minutes=59)) == [w]
    assert upcoming([w], T0) == []


def test_due_steps_start_then_finish() -> None:
    """At `at` the window starts; at its end it finishes; done windows do nothing."""
    w = window()
    assert due_steps([w], T0 - timedelta(seconds=1)) == []
    assert [s.action for s in due_steps([w], T0)] == ["start"]
    started = window(started=True)
    assert due_steps([started], T0 + timedelta(minutes=30)) == []
    assert [s.action for s in due_steps([started], T0 + timedelta(hours=1))] == ["finish"]
    assert due_steps([window(started=True, done=True)], T0 + timedelta(hours=5)) == []


def test_missed_start_happens_late_but_a_missed_window_never_starts() -> None:
    """Restarted mid-window: start now. Restarted after the end: finish, never start."""
    w = window()
    assert [s.action for s in due_steps([w], T0 + timedelta(minutes=10))] == ["start"]
    assert [s.action for s in due_steps([w], T0 + timedelta(hours=2))] == ["finish"]


def test_next_wakeup_is_notice_start_or_end() -> None:
    """The next moment of change: notice start, then start, then end; none when done."""
    w = window(notice=600)
    assert next_wakeup([w], T0 - timedelta(hours=1)) == T0 - timedelta(minutes=10)
    assert next_wakeup([w], T0 - timedelta(minutes=5)) == T0
    assert next_wakeup([w], T0 + timedelta(minutes=5)) == T0 + timedelta(hours=1)
    assert next_wakeup([window(done=True)], T0) is None


def test_overlap_detection() -> None:
    """Windows overlap when their spans intersect; touching ends do not overlap."""
    first = window()
    assert overlaps(window(at=T0 + timedelta(minutes=30)), [first]) == first
    assert overlaps(window(at=T0 + timedelta(hours=1)), [first]) is None
    assert overlaps(window(at=T0 - timedelta(hours=1)), [first]) is None
    assert overlaps(window(at=T0), [window(done=True)]) is None


def test_file_round_trip_and_damaged_file(tmp_path: Path) -> None:
    """Windows survive a write and read; a damaged file reads as no windows."""
    w = window(auto_off=True, started=True, wrote_flag=True)
    write_windows(str(tmp_path), "shop", [w])
    assert read_windows(str(tmp_path), "shop") == [w]
    (tmp_path / "shop.schedule.json").write_bytes(b"\x00garbage{")
    assert read_windows(str(tmp_path), "shop") == []
    (tmp_path / "shop.schedule.json").write_text('{"windows": [{"id": 1}, 5, {"at": "x"}]}')
    assert read_windows(str(tmp_path), "shop") == []
