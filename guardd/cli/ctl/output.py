"""guardctl's human output: status tables, schedule and job lists, the live drain view."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from guardd.core.durations import format_duration
from guardd.core.jobs import Job
from guardd.core.schedule import (
    Window,
)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def format_status(reply: dict[str, Any], scopes: Sequence[str], out: TextIO) -> None:
    """Human table of the status reply."""
    rows = [["SCOPE", "STATE", "SINCE", "UNTIL", "JOBS", "REASON"]]
    for name in scopes:
        fields = reply["scopes"].get(name, {})
        rows.append(
            [
                name,
                _state_cell(fields),
                _cell(fields.get("since")),
                _cell(fields.get("until")),
                _cell(fields.get("jobs")),
                _cell(fields.get("reason")),
            ]
        )
    _table(rows, out)
    for window in reply.get("upcoming") or []:
        out.write(
            f"upcoming: {window.get('scope')} from {window.get('at')} to "
            f"{window.get('until')}{_reason_suffix(window.get('reason'))} "
            f"[{window.get('id')}]\n"
        )
    if reply.get("source") == "files":
        out.write("(guardd is not running: read from the flag files)\n")


def _state_cell(fields: dict[str, Any]) -> str:
    """The state, with the mode in force: ``on (read-only)``."""
    state = _cell(fields.get("state"))
    mode = fields.get("mode")
    return f"{state} ({mode})" if mode else state


def _reason_suffix(reason: object) -> str:
    return f" ({reason})" if reason else ""


def format_windows(windows: Sequence[Window], now: datetime, out: TextIO) -> None:
    """Human table of scheduled windows."""
    if not windows:
        out.write("no scheduled windows\n")
        return
    rows = [["ID", "SCOPE", "AT", "UNTIL", "NOTICE", "AUTO-OFF", "STATUS", "REASON"]]
    for w in windows:
        if w.done:
            state = "done"
        elif w.started:
            state = "started"
        elif now.timestamp() >= w.at_time.timestamp() - w.notice:
            state = "announced"
        else:
            state = "scheduled"
        rows.append(
            [
                w.id,
                w.scope,
                w.at,
                w.end,
                format_duration(w.notice),
                "yes" if w.auto_off else "no",
                state,
                _cell(w.reason),
            ]
        )
    _table(rows, out)


def format_jobs(jobs: Sequence[Job], out: TextIO) -> None:
    """Human table of jobs."""
    if not jobs:
        out.write("no guarded jobs running\n")
        return
    rows = [["PID", "SCOPE", "STARTED", "COMMAND"]]
    rows += [
        [str(job.pid), job.scope, _cell(job.started), " ".join(job.cmd) or "?"] for job in jobs
    ]
    _table(rows, out)


class DrainView:
    """Shows the jobs still running while draining: rewritten in place on a terminal."""

    def __init__(self, out: TextIO, scope: str) -> None:
        self.out = out
        self.scope = scope
        self.live = out.isatty()
        self.lines_shown = 0

    def progress(self, jobs: list[Job]) -> None:
        """Called each time the set of running jobs changes."""
        if self.live and self.lines_shown:
            self.out.write(f"\x1b[{self.lines_shown}F\x1b[J")  # up N lines, clear below
        lines = [f"draining {self.scope}: {len(jobs)} job(s) still running"]
        lines += [f"  {job.pid:>7}  {job.scope}  {' '.join(job.cmd)[:100]}" for job in jobs]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.lines_shown = len(lines)

    def signalled(self, name: str, jobs: list[Job]) -> None:
        """Called before signalling the remaining jobs."""
        self.lines_shown = 0
        pids = ", ".join(str(job.pid) for job in jobs) or "none"
        self.out.write(f"timeout: sending SIG{name} to the process groups of {pids}\n")
        self.out.flush()


# --------------------------------------------------------------------------- commands
