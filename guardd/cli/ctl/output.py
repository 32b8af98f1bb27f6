"""guardctl's human output: status tables, schedule and job lists, the live drain view."""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from guardd.core.durations import format_duration
from guardd.core.jobs import Job
from guardd.core.schedule import Window


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def shown(text: str) -> str:
    """``text`` safe for a terminal: control and other invisible characters (ESC, CR,
    bidi overrides, ...) become escapes such as ``\\x1b``, so a job's command line
    cannot move the cursor, clear the screen or hide itself."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def process_user(pid: int) -> str:
    """The user a process runs as (its /proc entry's owner), ``uid N`` without a
    passwd entry, ``?`` when it is gone."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def command_line(cmd: Sequence[str]) -> str:
    """A job's argv for human output: joined by spaces, each argument made safe."""
    return " ".join(shown(arg) for arg in cmd)


def print_table(rows: list[list[str]], out: TextIO) -> None:
    """The one table printer: a header row and rows, columns padded, the last one free."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def state_cell(fields: dict[str, Any]) -> str:
    """The state, with the mode in force and why it holds: ``on (read-only)``,
    ``on (via default)``, ``draining (read-only, via default)``."""
    state = _cell(fields.get("state"))
    details = []
    if fields.get("mode"):
        details.append(str(fields["mode"]))
    if fields.get("via") and state != "off":
        details.append(f"via {fields['via']}")
    return f"{state} ({', '.join(details)})" if details else state


def until_cell(fields: dict[str, Any]) -> str:
    """The expected end, marked once it has passed and maintenance is still on."""
    until = _cell(fields.get("until"))
    return f"{until} OVERDUE" if fields.get("overdue") else until


def format_status(reply: dict[str, Any], scopes: Sequence[str], out: TextIO) -> None:
    """Human table of the status reply; internal notes below it."""
    rows = [["SCOPE", "STATE", "SINCE", "UNTIL", "JOBS", "BY", "REASON"]]
    notes = []
    for name in scopes:
        fields = reply["scopes"].get(name) or {}
        rows.append(
            [
                name,
                state_cell(fields),
                _cell(fields.get("since")),
                until_cell(fields),
                _cell(fields.get("jobs")),
                _cell(fields.get("by")),
                _cell(fields.get("reason")),
            ]
        )
        if fields.get("note"):
            notes.append(f"note ({name}): {fields['note']}")
    print_table(rows, out)
    for line in notes:
        out.write(line + "\n")
    for window in reply.get("upcoming") or []:
        out.write(
            f"upcoming: {window.get('scope')} from {window.get('at')} to "
            f"{window.get('until')}{_reason_suffix(window.get('reason'))} "
            f"[{window.get('id')}]\n"
        )
    if any((reply["scopes"].get(name) or {}).get("overdue") for name in scopes):
        out.write(
            "OVERDUE: the expected end has passed; maintenance does not end by itself "
            "(guardctl off SCOPE, or on SCOPE --for DUR to extend it)\n"
        )
    if reply.get("source") == "files":
        out.write("(guardd is not running: read from the flag files)\n")


def format_event(event: dict[str, Any]) -> str:
    """One watch event as a line: scope, state, jobs, then what the flag says."""
    parts = [_cell(event.get("scope")), state_cell(event), f"jobs={event.get('jobs')}"]
    if event.get("until"):
        parts.append(f"until={until_cell(event)}")
    if event.get("reason"):
        parts.append(f"reason={event['reason']!r}")
    if event.get("by"):
        parts.append(f"by={event['by']}")
    if event.get("note"):
        parts.append(f"note={event['note']!r}")
    return "  ".join(parts)


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
    print_table(rows, out)


def format_jobs(jobs: Sequence[Job], out: TextIO) -> None:
    """Human table of jobs."""
    if not jobs:
        out.write("no guarded jobs running\n")
        return
    rows = [["PID", "SCOPE", "USER", "STARTED", "COMMAND"]]
    rows += [
        [
            str(job.pid),
            job.scope,
            process_user(job.pid),
            _cell(job.started),
            command_line(job.cmd) or "?",
        ]
        for job in jobs
    ]
    print_table(rows, out)


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
        lines += [
            f"  {job.pid:>7}  {job.scope}  {process_user(job.pid)}  {command_line(job.cmd)[:100]}"
            for job in jobs
        ]
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
