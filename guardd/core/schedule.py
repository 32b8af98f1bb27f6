"""Scheduled maintenance windows: the file format, its atomic update, and the pure plan.

Windows live in ``<lock_dir>/<scope>.schedule.json``. guardctl adds and removes them
(no daemon needed); guardd announces them from ``at - notice``, writes the flag at
``at`` (never over an existing one) and, only with ``auto_off``, removes the flag it
wrote at the end. guardd records each window as started and done in the file, so a
restart neither misses a start nor re-enters a window an operator ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from guardd.core.atomic import write_atomic
from guardd.core.durations import check_duration, format_time, parse_time

log = logging.getLogger(__name__)

SCHEDULE_SUFFIX = ".schedule.json"
MAX_SCHEDULE_BYTES = 1024 * 1024  # a schedule is a few windows; more is garbage
MUTEX_NAME = ".schedule.mutex"  # dot-file: never mistaken for a flag or a schedule
BY_PREFIX = "guardd schedule "


@dataclass(frozen=True)
class Window:
    """One maintenance window of one scope."""

    id: str
    scope: str
    at: str  # RFC 3339 (UTC)
    end: str
    reason: str | None
    notice: float  # seconds before `at` from which the window is announced
    auto_off: bool
    started: bool = False
    done: bool = False
    wrote_flag: bool = False  # guardd wrote the flag at the start (auto-off may remove it)

    @property
    def at_time(self) -> datetime:
        return parse_time(self.at)

    @property
    def end_time(self) -> datetime:
        return parse_time(self.end)

    @property
    def marker(self) -> str:
        """The flag's `by` when guardd wrote it for this window."""
        return BY_PREFIX + self.id

    def upcoming_obj(self) -> dict[str, object]:
        """How the window is announced (status reply, /maintenance.json)."""
        return {
            "id": self.id,
            "scope": self.scope,
            "at": self.at,
            "until": self.end,
            "reason": self.reason,
        }


def schedule_path(lock_dir: str, scope: str) -> str:
    """The scope's schedule file."""
    return os.path.join(lock_dir, f"{scope}{SCHEDULE_SUFFIX}")


def new_id() -> str:
    """A short, unguessable-enough id for operators to type."""
    return secrets.token_hex(4)


# --------------------------------------------------------------------------- file I/O


class BadWindow(ValueError):
    """A window in a schedule file that cannot be used (hand-edited, say)."""


def _window_from(obj: object, scope: str) -> Window:
    """One window of a schedule file; BadWindow says why it cannot be used."""
    if not isinstance(obj, dict):
        raise BadWindow("not a JSON object")
    try:
        window = Window(
            id=str(obj["id"]),
            scope=scope,
            at=format_time(parse_time(str(obj["at"]))),
            end=format_time(parse_time(str(obj["end"]))),
            reason=obj.get("reason") if isinstance(obj.get("reason"), str) else None,
            notice=_notice(obj.get("notice", 0)),
            auto_off=bool(obj.get("auto_off", False)),
            started=bool(obj.get("started", False)),
            done=bool(obj.get("done", False)),
            wrote_flag=bool(obj.get("wrote_flag", False)),
        )
    except KeyError as err:
        raise BadWindow(f"no {err.args[0]!r}") from None
    except (ValueError, TypeError, OverflowError) as err:
        raise BadWindow(str(err)) from None
    if window.end_time <= window.at_time:
        raise BadWindow("it ends before it starts")
    # Its notice may reach back before year 1, where no clock can show it.
    try:
        datetime.fromtimestamp(window.at_time.timestamp() - window.notice, UTC)
    except (ValueError, OverflowError, OSError):
        raise BadWindow("its notice begins before any clock") from None
    return window


def _notice(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadWindow(f"notice: {value!r} is not a number of seconds")
    try:
        return check_duration(float(value), value)
    except (ValueError, OverflowError) as err:
        raise BadWindow(f"notice: {err}") from None


# Bad windows already reported: (path, content), not their position, which a rewrite
# changes (they are kept at the end); each is said once per process.
_reported: set[tuple[str, str]] = set()


def _report_once(path: str, position: int, item: object, why: str) -> None:
    key = (path, repr(item)[:500])
    if key in _reported:
        return
    _reported.add(key)
    ident = item.get("id") if isinstance(item, dict) else None
    name = f"window {ident!r}" if isinstance(ident, str) else f"window #{position + 1}"
    log.warning("%s: %s skipped, the others kept: %s", path, name, why)


def read_windows(lock_dir: str, scope: str, *, skipped: list[object] | None = None) -> list[Window]:
    """The scope's windows; a missing or damaged file reads as none (never raises).

    A window that cannot be used (a hand edit: ``Infinity``, a bad time, an end
    before the start) is skipped and logged once; the others are kept, and the raw
    skipped items are appended to ``skipped`` (so that a rewrite can keep them).
    Only a regular file is read: not a symlink (guardd runs as root, and the link
    could point at any file it may read) nor a FIFO or device, whose read would
    never return and hold up every refresh behind it.
    """
    path = schedule_path(lock_dir, scope)
    try:
        data = json.loads(_read_regular(path).decode(errors="replace"))
    except (OSError, ValueError, RecursionError):
        return []
    items = data.get("windows") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    windows = []
    for position, item in enumerate(items):
        try:
            windows.append(_window_from(item, scope))
        except BadWindow as err:
            _report_once(path, position, item, str(err))
            if skipped is not None:
                skipped.append(item)
    return sorted(windows, key=lambda w: w.at)


def _read_regular(path: str) -> bytes:
    """Up to MAX_SCHEDULE_BYTES of the regular file at ``path``; OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks: list[bytes] = []
        size = 0
        while size < MAX_SCHEDULE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[:MAX_SCHEDULE_BYTES]
    finally:
        os.close(fd)


def write_windows(
    lock_dir: str, scope: str, windows: list[Window], *, kept: Sequence[object] = ()
) -> None:
    """Replace the scope's schedule file atomically (temp file, fsync, rename).

    ``kept``: raw items read_windows skipped, written back as they were (an
    operator's bad edit is theirs to mend, not ours to delete).
    """
    payload = {
        "windows": [
            *(
                {k: v for k, v in asdict(w).items() if k != "scope"}
                for w in sorted(windows, key=lambda w: w.at)
            ),
            *kept,
        ]
    }
    data = (json.dumps(payload, indent=1) + "\n").encode()
    write_atomic(schedule_path(lock_dir, scope), data, mode=0o644)


@contextlib.contextmanager
def locked(lock_dir: str, *, create_dir: bool = True) -> Iterator[None]:
    """Serialise read-modify-write of schedule files between guardctl and guardd.

    guardd passes ``create_dir=False``: a lock directory an operator deleted (say, to
    rename a prepared one into its place) is not guardd's to bring back; it gets
    FileNotFoundError instead.
    """
    if create_dir:
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    # O_NOFOLLOW: a symlink planted here must not make root create a file elsewhere.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(lock_dir, MUTEX_NAME), flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- pure plan


def overlaps(new: Window, existing: list[Window]) -> Window | None:
    """The first not-done window of the same scope whose time overlaps ``new``."""
    for window in existing:
        if window.done:
            continue
        if new.at_time < window.end_time and window.at_time < new.end_time:
            return window
    return None


Action = Literal["start", "finish"]


@dataclass(frozen=True)
class Step:
    """What guardd must do now for one window."""

    action: Action
    window: Window


def due_steps(windows: list[Window], now: datetime) -> list[Step]:
    """Steps due at ``now``: start windows whose time has come, finish those past their end.

    A window whose start was missed entirely (guardd down for its whole span) is
    finished without starting: entering maintenance after the fact would surprise.
    """
    steps = []
    for window in windows:
        if window.done:
            continue
        if now >= window.end_time:
            steps.append(Step("finish", window))
        elif now >= window.at_time and not window.started:
            steps.append(Step("start", window))
    return steps


def next_wakeup(windows: list[Window], now: datetime) -> datetime | None:
    """The next moment something changes: a notice begins, a window starts or ends."""
    moments = []
    for window in windows:
        if window.done:
            continue
        for moment in (window.at_time, window.end_time):
            if moment > now:
                moments.append(moment)
        notice_start = window.at_time.timestamp() - window.notice
        if notice_start > now.timestamp():
            moments.append(datetime.fromtimestamp(notice_start, now.tzinfo))
    return min(moments) if moments else None


def upcoming(windows: list[Window], now: datetime) -> list[Window]:
    """Windows to announce: within their notice period and not yet started."""
    return [
        w
        for w in windows
        if not w.done
        and not w.started
        and now < w.at_time
        and now.timestamp() >= w.at_time.timestamp() - w.notice
    ]


def mark(
    window: Window,
    *,
    started: bool | None = None,
    done: bool | None = None,
    wrote_flag: bool | None = None,
) -> Window:
    """A copy of ``window`` with its bookkeeping flags changed."""
    return replace(
        window,
        started=window.started if started is None else started,
        done=window.done if done is None else done,
        wrote_flag=window.wrote_flag if wrote_flag is None else wrote_flag,
    )
