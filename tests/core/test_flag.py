"""Flag files: reading never raises, writing is atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.core.durations import format_timestamp
from guardd.core.flag import (
    FlagInfo,
    make_flag,
    parse_flag_content,
    read_flag,
    remove_flag,
    renew_flag,
    write_flag,
)

MTIME = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_json_flag_fields() -> None:
    """A JSON object gives reason, until, since and by."""
    data = json.dumps(
        {
            "reason": "db move",
            "until": "2026-11-22T01:00:00+01:00",
            "since": "2026-11-21T22:00:00Z",
            "by": "ops@web-1",
        }
    ).encode()
    assert parse_flag_content(data, mtime=MTIME) == FlagInfo(
        reason="db move", until="2026-11-22T00:00:00Z", since="2026-11-21T22:00:00Z", by="ops@web-1"
    )


def test_note_is_read_cleaned_and_written_only_when_set() -> None:
    """``note`` is read like the reason (one clean line); a flag without one writes none."""
    data = json.dumps({"reason": "r", "note": "call\nAna\x00 now"}).encode()
    assert parse_flag_content(data, mtime=MTIME).note == "call Ana now"
    assert "note" not in make_flag(reason="r", until=None, by=None, now=NOW).to_json_obj()
    noted = make_flag(reason="r", until=None, by=None, now=NOW, note="OPS-42")
    assert noted.to_json_obj()["note"] == "OPS-42"


def test_renew_keeps_what_is_not_given_again() -> None:
    """on over a flag already there: since kept; reason, until, note kept unless given;
    by is the new one."""
    old = FlagInfo(reason="one", until="2026-11-22T00:00:00Z", since="2026-11-21T22:00:00Z",
                   by="ana@h", note="n1")  # fmt: skip
    bare = make_flag(reason=None, until=None, by="bob@h", now=NOW)
    assert renew_flag(old, bare) == FlagInfo(
        reason="one", until=old.until, since=old.since, by="bob@h", note="n1"
    )
    again = make_flag(reason="two", until=None, by="bob@h", now=NOW, note="n2")
    renewed = renew_flag(old, again)
    assert (renewed.reason, renewed.note, renewed.until, renewed.since) == (
        "two",
        "n2",
        old.until,
        old.since,
    )
    assert renew_flag(None, again) == again


NOW = datetime(2026, 11, 21, 23, 0, tzinfo=UTC)


def test_bare_touch_since_is_mtime() -> None:
    """An empty flag is on, with since = its mtime and nothing else known."""
    assert parse_flag_content(b"", mtime=MTIME) == FlagInfo(
        reason=None, until=None, since="2023-11-14T22:13:20Z", by=None
    )


def test_plain_text_first_line_is_the_reason_trimmed_to_200() -> None:
    """A non-JSON first line, trimmed to 200 characters, is the reason."""
    info = parse_flag_content(b"  upgrading postgres  \nsecond line\n", mtime=MTIME)
    assert info.reason == "upgrading postgres"
    assert parse_flag_content(b"x" * 500, mtime=MTIME).reason == "x" * 200


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02\xff\xfe",
        b"{not json",
        b"[1,2,3]",
        b'{"reason": 5, "until": "soon"}',
        b'{"until": "2026-13-45T99:00:00Z"}',
        b"\xff" * 100,
        b"{" * 100000,
        b'"just a string"',
    ],
)
def test_garbage_still_means_on(data: bytes) -> None:
    """Garbage gives a flag (on) with a sane since, never an exception."""
    info = parse_flag_content(data, mtime=MTIME)
    assert info.since == "2023-11-14T22:13:20Z"
    assert info.until is None


def test_hostile_reason_loses_control_characters() -> None:
    """CR, LF, NUL and other control characters never survive into a reason."""
    data = json.dumps({"reason": "a\r\nSet-Cookie: x\x00\x1b[31m<b>"}).encode()
    info = parse_flag_content(data, mtime=MTIME)
    assert info.reason == "a Set-Cookie: x [31m<b>"


@given(st.binary(max_size=2048))
def test_any_bytes_parse(data: bytes) -> None:
    """Whatever the bytes, parsing returns a FlagInfo whose texts are one printable line."""
    info = parse_flag_content(data, mtime=MTIME)
    for text in (info.reason, info.by):
        assert text is None or (text.isprintable() and len(text) <= 1000)


def test_read_missing_is_none_and_unreadable_is_on(tmp_path: Path) -> None:
    """A missing flag is None; a directory or dangling symlink at the path still means on."""
    assert read_flag(str(tmp_path / "nope.lock")) is None
    (tmp_path / "dir.lock").mkdir()
    assert read_flag(str(tmp_path / "dir.lock")) is not None
    (tmp_path / "link.lock").symlink_to(tmp_path / "missing")
    assert read_flag(str(tmp_path / "link.lock")) is not None


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """write_flag replaces the flag in one rename, mode 0644, with no stray temp file."""
    path = tmp_path / "sub" / "shop.lock"
    now = datetime(2026, 11, 21, 23, tzinfo=UTC)
    write_flag(str(path), make_flag(reason="first", until=None, by="me", now=now))
    inode = path.stat().st_ino
    write_flag(str(path), make_flag(reason="second", until=now, by="me", now=now))
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    info = read_flag(str(path))
    assert info is not None
    assert (info.reason, info.until) == ("second", "2026-11-21T23:00:00Z")
    assert os.listdir(path.parent) == ["shop.lock"]


def test_write_failure_removes_temp_file_and_keeps_old_flag(tmp_path: Path) -> None:
    """When the rename cannot happen, the old flag stays and the temp file is removed."""
    path = tmp_path / "shop.lock"
    path.write_text("old reason\n")
    blocker = tmp_path / "blocked.lock"
    blocker.mkdir()
    (blocker / "child").write_text("x")  # rename over a non-empty directory fails
    with pytest.raises(OSError):
        write_flag(
            str(blocker), make_flag(reason="new", until=None, by=None, now=datetime.now(UTC))
        )
    assert sorted(os.listdir(tmp_path)) == ["blocked.lock", "shop.lock"]
    assert path.read_text() == "old reason\n"


def test_writer_killed_midway_never_leaves_a_half_flag(tmp_path: Path) -> None:
    """A writer SIGKILLed at random points leaves the old flag or the new one, whole."""
    path = tmp_path / "shop.lock"
    big_reason = "r" * 900
    script = (
        "import sys; from datetime import datetime, UTC\n"
        "from guardd.core.flag import make_flag, write_flag\n"
        "for i in range(100000):\n"
        f"    write_flag(sys.argv[1], make_flag(reason='{big_reason}'+str(i), until=None,"
        " by=None, now=datetime.now(UTC)))\n"
    )
    for delay in (0.15, 0.25, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if path.exists():
            content = json.loads(path.read_text())
            assert content["reason"].startswith(big_reason)
        # Temp files may survive a SIGKILL, but never under a name read as a flag.
        assert [n for n in os.listdir(tmp_path) if n.endswith(".lock")] in ([], ["shop.lock"])


def test_remove_is_idempotent(tmp_path: Path) -> None:
    """remove_flag says whether it removed something and never fails on a missing flag."""
    path = tmp_path / "shop.lock"
    path.touch()
    assert remove_flag(str(path)) is True
    assert remove_flag(str(path)) is False


def test_mtime_out_of_range_is_on_without_a_time() -> None:
    """A time stamp outside years 1-9999 gives since None, never an exception."""
    assert format_timestamp(3e11) is None and format_timestamp(-1e15) is None
    assert parse_flag_content(b"", mtime=3e11).since is None
    assert parse_flag_content(b'{"since": "2026-11-21T23:00:00Z"}', mtime=3e11).since == (
        "2026-11-21T23:00:00Z"
    )
