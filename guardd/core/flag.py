"""The flag file: read it (never raises on garbage), write it atomically, remove it.

A scope is in maintenance exactly while its flag file exists; the content only adds
detail (reason, until, since, by, note). ``reason`` is public (pages, JSON answers,
agent lines); ``note`` is for operators only (status, watch, logs).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime

from guardd.core.atomic import fsync_dir, write_atomic
from guardd.core.durations import format_time, format_timestamp, parse_time
from guardd.core.paths import make_dir
from guardd.core.switch import own_files, probe
from guardd.core.text import clean_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from guardd.core.paths import RunView

# Read no more than this: a flag is a few hundred bytes, a huge file is garbage.
MAX_FLAG_BYTES = 64 * 1024
# Errors that say nothing about the file, only that no descriptor was to be had.
NO_DESCRIPTOR = frozenset({errno.EMFILE, errno.ENFILE})
MAX_REASON_CHARS = 1000
MAX_PLAIN_REASON_CHARS = 200
MAX_NOTE_CHARS = 1000
MAX_MODE_CHARS = 64
# A "mode" that is not text names no mode: full maintenance, as for an unknown one.
INVALID_MODE = "(invalid)"


@dataclass(frozen=True)
class FlagInfo:
    """What a present flag file says. Times are RFC 3339 strings (UTC) or None.

    ``since`` is None when no time can be told (an mtime outside years 1-9999, a flag
    whose existence is only presumed). ``doubt`` is set when whether the file exists
    cannot be known (why: "Permission denied"): it then counts as present, content
    unknown. ``by_guardd`` marks an application's ``lock_file`` that guardctl wrote.
    """

    reason: str | None
    until: str | None
    since: str | None
    by: str | None
    # Partial maintenance (SPEC "modes"): the mode's name; None is full maintenance.
    mode: str | None = None
    # Internal text for operators: never on a page, a JSON answer or an agent line.
    note: str | None = None
    doubt: str | None = None
    by_guardd: bool = False

    def to_json_obj(self) -> dict[str, str | bool | None]:
        """The JSON object written to a flag file."""
        obj: dict[str, str | bool | None] = {
            "reason": self.reason,
            "until": self.until,
            "since": self.since,
            "by": self.by,
        }
        if self.mode is not None:
            obj["mode"] = self.mode
        if self.by_guardd:
            obj["by_guardd"] = True
        if self.note is not None:
            obj["note"] = self.note
        return obj


def _json_time(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return format_time(parse_time(value))
    except (ValueError, OverflowError):
        return None


def parse_flag_content(data: bytes, *, mtime: float) -> FlagInfo:
    """Interpret a flag file's bytes. Pure; never raises, whatever the bytes."""
    text = data.decode("utf-8", errors="replace")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            reason = obj.get("reason")
            by = obj.get("by")
            mode = obj.get("mode")
            note = obj.get("note")
            return FlagInfo(
                reason=clean_text(reason, limit=MAX_REASON_CHARS)
                if isinstance(reason, str)
                else None,
                until=_json_time(obj.get("until")),
                since=_json_time(obj.get("since")) or format_timestamp(mtime),
                by=clean_text(by, limit=200) if isinstance(by, str) else None,
                # Any non-empty value counts: a mode the config lacks is full
                # maintenance (fail safe), decided where the config is known.
                mode=clean_text(mode, limit=MAX_MODE_CHARS)
                if isinstance(mode, str)
                else (None if mode is None else INVALID_MODE),
                by_guardd=obj.get("by_guardd") is True,
                note=clean_text(note, limit=MAX_NOTE_CHARS) if isinstance(note, str) else None,
            )
    first_line = stripped.split("\n", 1)[0] if stripped else ""
    if "\x00" in first_line:
        first_line = ""  # binary: no sensible reason to show
    return FlagInfo(
        reason=clean_text(first_line, limit=MAX_PLAIN_REASON_CHARS),
        until=None,
        since=format_timestamp(mtime),
        by=None,
    )


def read_flag(path: str) -> FlagInfo | None:
    """The flag at ``path``, or None when it does not exist. Never raises.

    Whether it exists is switch.probe's answer (the one rule): a flag whose existence
    cannot be known comes back with ``doubt`` set, and counts as present. One that
    exists but cannot be read (permissions, a directory, a FIFO, a dangling symlink)
    is present too, with no detail beyond its time stamp.
    """
    hit = probe(path)
    if hit is None:
        return None
    if hit.doubt is not None:
        return FlagInfo(reason=None, until=None, since=None, by=None, doubt=hit.doubt)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in NO_DESCRIPTOR:
            # Present (the probe said so), but its content cannot be known now: a doubt,
            # so that guardd keeps what it last read rather than blank it.
            return FlagInfo(reason=None, until=None, since=None, by=None, doubt=err.strerror)
        # Symlink (O_NOFOLLOW), permissions, or gone since the probe: the probe decided.
        return FlagInfo(reason=None, until=None, since=_time_of(path), by=None)
    try:
        mtime = os.fstat(fd).st_mtime
        data = b""
        try:
            data = os.read(fd, MAX_FLAG_BYTES)
        except OSError:
            pass  # a directory, or I/O error: still present, still "on"
        return parse_flag_content(data, mtime=mtime)
    finally:
        os.close(fd)


def read_scope(
    view: RunView, scope: str, read: Callable[[str], FlagInfo | None] = read_flag
) -> FlagInfo | None:
    """What ``scope``'s own files say (switch.own_files, in order): the first one
    present, None when none is. ``default``'s are combined by switch.effective."""
    for path in own_files(view, scope):
        info = read(path)
        if info is not None:
            return info
    return None


def _time_of(path: str) -> str | None:
    for stat in (os.stat, os.lstat):
        try:
            return format_timestamp(stat(path).st_mtime)
        except OSError:
            continue
    return None


def make_flag(
    *,
    reason: str | None,
    until: datetime | None,
    by: str | None,
    now: datetime,
    mode: str | None = None,
    note: str | None = None,
) -> FlagInfo:
    """A new flag's content, cleaned the same way as one read from disk."""
    return FlagInfo(
        reason=clean_text(reason, limit=MAX_REASON_CHARS) if reason else None,
        until=format_time(until) if until else None,
        since=format_time(now),
        by=by,
        mode=mode,
        note=clean_text(note, limit=MAX_NOTE_CHARS) if note else None,
    )


def renew_flag(existing: FlagInfo | None, new: FlagInfo) -> FlagInfo:
    """``guardctl on`` over a scope that is already on: keep ``since``, and keep
    ``reason``, ``until``, ``mode`` and ``note`` unless the new flag gives them again."""
    if existing is None:
        return new
    return FlagInfo(
        reason=new.reason if new.reason is not None else existing.reason,
        until=new.until if new.until is not None else existing.until,
        since=existing.since or new.since,  # None: its time could not be told
        by=new.by,
        mode=new.mode if new.mode is not None else existing.mode,
        note=new.note if new.note is not None else existing.note,
    )


def write_flag(path: str, info: FlagInfo) -> None:
    """Write the flag atomically: temp file in the same directory, fsync, rename, fsync dir.

    A crash at any point leaves the old flag or the new one, never half of one; the
    temp name never ends in ``.lock``, so a stray one is never read as a flag.
    Raises OSError on failure, after removing the temp file.
    """
    make_dir(os.path.dirname(path) or ".", 0o755)
    payload = (json.dumps(info.to_json_obj(), ensure_ascii=False) + "\n").encode()
    # 0644: readable by every job's user, whatever the umask.
    write_atomic(path, payload, mode=0o644)


def remove_flag(path: str) -> bool:
    """Remove the flag; True if it was there. Idempotent. Raises OSError on failure."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    try:
        fsync_dir(os.path.dirname(path) or ".")
    except OSError:
        pass  # the unlink happened; durability of the removal is best effort
    return True
