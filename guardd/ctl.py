"""guardctl: the operator's tool. Thin CLI over keyword-only core functions.

Everything but ``watch`` works without guardd: the flag files and run locks are the
source of truth, the daemon only publishes them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

from guardd import __version__
from guardd.client import ControlClient
from guardd.config import Config, load_config
from guardd.drain import THEN_CHOICES, Then, drain
from guardd.durations import format_duration, format_time, parse_duration, parse_time
from guardd.errors import (
    EXIT_DRAIN_TIMEOUT,
    EXIT_OK,
    GuardError,
    Unreachable,
    UsageError,
    run_cli,
)
from guardd.flag import make_flag, read_flag, remove_flag, write_flag
from guardd.jobs import Job, count_jobs, list_jobs
from guardd.paths import DEFAULT_SCOPE, run_lock_path
from guardd.protocol import status_reply
from guardd.runlock import ensure_run_locks
from guardd.schedule import (
    Window,
    locked,
    new_id,
    overlaps,
    read_windows,
    upcoming,
    write_windows,
)
from guardd.state import ScopeStatus, all_statuses

# A daemon that does not answer this fast is treated as absent for `status`.
STATUS_TIMEOUT = 2.0


# --------------------------------------------------------------------------- core


def run_locks(config: Config) -> dict[str, str]:
    """scope -> run lock path, for every configured scope."""
    return {scope: run_lock_path(config.runtime_dir, scope) for scope in config.scopes}


def local_status(config: Config) -> dict[str, ScopeStatus]:
    """Every scope's status from the files themselves (no daemon needed)."""
    flags = {scope: read_flag(config.flag_path(scope)) for scope in config.scopes}
    return all_statuses(flags, count_jobs(run_locks(config)))


def get_status(config: Config, *, err: TextIO) -> dict[str, Any]:
    """The status reply from guardd, or built from the files when it is not running."""
    if os.path.exists(config.control.socket):
        try:
            with ControlClient(config.control.socket, timeout=STATUS_TIMEOUT) as client:
                reply = client.request({"op": "status"})
            if reply.get("ok") is True and isinstance(reply.get("scopes"), dict):
                reply["source"] = "guardd"
                return reply
        except Unreachable as problem:
            err.write(f"guardctl: {problem.message}; reading the flag files instead\n")
    reply = status_reply(node=config.node, version=__version__, statuses=local_status(config))
    reply["upcoming"] = [w.upcoming_obj() for w in upcoming(all_windows(config), datetime.now(UTC))]
    reply["source"] = "files"
    return reply


def all_windows(config: Config) -> list[Window]:
    """Every scope's scheduled windows, read from the schedule files."""
    return [w for scope in sorted(config.scopes) for w in read_windows(config.lock_dir, scope)]


def add_window(
    *,
    config: Config,
    scope: str,
    at: datetime,
    duration: float,
    reason: str | None,
    notice: float,
    auto_off: bool,
    now: datetime,
) -> Window:
    """Store a new window for ``scope``; usage errors for a past start or an overlap."""
    if at <= now:
        raise UsageError(f"--at {at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} is in the past")
    if duration <= 0:
        raise UsageError("--for must be longer than 0s")
    window = Window(
        id=new_id(),
        scope=scope,
        at=format_time(at),
        end=format_time(at + timedelta(seconds=duration)),
        reason=reason,
        notice=notice,
        auto_off=auto_off,
    )
    try:
        with locked(config.lock_dir):
            windows = read_windows(config.lock_dir, scope)
            clash = overlaps(window, windows)
            if clash is not None:
                raise UsageError(
                    f"overlaps window {clash.id} of {scope} ({clash.at} to {clash.end})"
                )
            write_windows(config.lock_dir, scope, [*windows, window])
    except OSError as err:
        raise GuardError(
            f"cannot write the schedule in {config.lock_dir}: {err.strerror}"
        ) from None
    return window


def remove_window(*, config: Config, window_id: str) -> Window:
    """Remove a window by id from whichever scope has it (a started one leaves the flag)."""
    try:
        with locked(config.lock_dir):
            for scope in config.scopes:
                windows = read_windows(config.lock_dir, scope)
                kept = [w for w in windows if w.id != window_id]
                if len(kept) != len(windows):
                    write_windows(config.lock_dir, scope, kept)
                    return next(w for w in windows if w.id == window_id)
    except OSError as err:
        raise GuardError(
            f"cannot change the schedule in {config.lock_dir}: {err.strerror}"
        ) from None
    raise UsageError(f"no scheduled window {window_id!r} (see guardctl schedule --list)")


def _actor() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def turn_on(
    *,
    config: Config,
    scope: str,
    reason: str | None,
    until: datetime | None,
    now: datetime,
) -> str:
    """Write the scope's flag atomically; returns its path. Keeps ``since`` if already on."""
    path = config.flag_path(scope)
    existing = read_flag(path)
    info = make_flag(reason=reason, until=until, by=_actor(), now=now)
    if existing is not None:
        info = type(info)(reason=info.reason, until=info.until, since=existing.since, by=info.by)
    try:
        ensure_run_locks(config.runtime_dir, config.scopes)
    except OSError as err:
        raise GuardError(
            f"cannot create the run locks in {config.runtime_dir}: {err.strerror}"
        ) from None
    try:
        write_flag(path, info)
    except OSError as err:
        raise GuardError(f"cannot write {path}: {err.strerror}") from None
    return path


def turn_off(*, config: Config, scope: str) -> bool:
    """Remove the scope's flag; True if it was there."""
    path = config.flag_path(scope)
    try:
        return remove_flag(path)
    except OSError as err:
        raise GuardError(f"cannot remove {path}: {err.strerror}") from None


# --------------------------------------------------------------------------- output


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
                _cell(fields.get("state")),
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


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    if args.fleet:
        from guardd import fleetctl

        data = fleetctl.fleet_status(config=config)
        if args.json:
            out.write(json.dumps(data, indent=2) + "\n")
        else:
            fleetctl.format_fleet(data, out)
        return EXIT_OK
    scopes = [config.require_scope(name) for name in args.scopes] or sorted(config.scopes)
    reply = get_status(config, err=sys.stderr)
    if args.scopes:
        reply["upcoming"] = [w for w in reply.get("upcoming") or [] if w.get("scope") in scopes]
    if args.json:
        reply["scopes"] = {name: reply["scopes"].get(name) for name in scopes}
        out.write(json.dumps(reply, indent=2) + "\n")
    else:
        format_status(reply, scopes, out)
    return EXIT_OK


def cmd_on(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    scope = config.require_scope(args.scope)
    if not args.wait and (
        args.timeout is not None or args.then is not None or args.grace is not None
    ):
        raise UsageError("--timeout, --then and --grace only go with --wait")
    now = datetime.now(UTC)
    until = _until(args, now)
    if args.fleet:
        return _fleet_on(config, args, scope=scope, until=until, now=now, out=out)
    path = turn_on(config=config, scope=scope, reason=args.reason, until=until, now=now)
    what = f"{scope}: maintenance on ({path})"
    if until is not None:
        what += f", expected until {until.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    out.write(what + "\n")
    out.flush()
    if not args.wait:
        return EXIT_OK
    view = DrainView(out, scope)
    result = drain(
        run_lock=run_lock_path(config.runtime_dir, scope),
        run_locks=run_locks(config),
        scope=scope,
        timeout=args.timeout,
        then=args.then or "wait",
        grace=args.grace if args.grace is not None else 30.0,
        on_progress=view.progress,
        on_signal=view.signalled,
    )
    if result.drained:
        out.write(f"{scope}: drained, no guarded job running\n")
        return EXIT_OK
    out.write(f"{scope}: drain timed out; maintenance stays on; still running:\n")
    format_jobs(result.remaining, out)
    return EXIT_DRAIN_TIMEOUT


def _fleet_on(
    config: Config,
    args: argparse.Namespace,
    *,
    scope: str,
    until: datetime | None,
    now: datetime,
    out: TextIO,
) -> int:
    from guardd import fleetctl

    if args.then is not None or args.grace is not None:
        raise UsageError(
            "--then and --grace do not go with --fleet (other hosts' jobs are out of reach)"
        )
    info = make_flag(reason=args.reason, until=until, by=_actor(), now=now)
    revision = fleetctl.fleet_on(config=config, scope=scope, info=info)
    out.write(f"{scope}: fleet maintenance on (etcd revision {revision})\n")
    out.flush()
    if not args.wait:
        return EXIT_OK

    def progress(pending: list[str]) -> None:
        if pending:
            out.write(f"draining {scope} on {len(pending)} node(s): {', '.join(pending)}\n")
            out.flush()

    pending = fleetctl.fleet_wait(
        config=config, scope=scope, revision=revision, timeout=args.timeout, on_progress=progress
    )
    if not pending:
        out.write(f"{scope}: every live node reports it drained\n")
        return EXIT_OK
    out.write(
        f"{scope}: fleet drain timed out; maintenance stays on; still draining: "
        f"{', '.join(pending)}\n"
    )
    return EXIT_DRAIN_TIMEOUT


def _until(args: argparse.Namespace, now: datetime) -> datetime | None:
    if args.until is not None and args.for_ is not None:
        raise UsageError("give --until or --for, not both")
    if args.for_ is not None:
        return now + timedelta(seconds=args.for_)
    if args.until is None:
        return None
    try:
        until = parse_time(args.until)
    except ValueError as err:
        raise UsageError(f"--until: {err}") from None
    if until <= now:
        raise UsageError(f"--until {args.until} is in the past")
    return until


def cmd_off(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    scope = config.require_scope(args.scope)
    if args.fleet:
        from guardd import fleetctl

        removed = fleetctl.fleet_off(config=config, scope=scope)
        out.write(f"{scope}: fleet maintenance {'off' if removed else 'was not on'}\n")
        return EXIT_OK
    if turn_off(config=config, scope=scope):
        out.write(f"{scope}: maintenance off\n")
    else:
        out.write(f"{scope}: was not in maintenance\n")
    if scope != DEFAULT_SCOPE and read_flag(config.flag_path(DEFAULT_SCOPE)) is not None:
        out.write(
            f"note: 'default' is still on, so {scope} stays in maintenance (guardctl off default)\n"
        )
    # Imported here: guardd.fleetd pulls in asyncio and the etcd client's modules
    # (~30 ms), which no other command of guardctl needs.
    from guardd.fleetd import mirror_exists

    if mirror_exists(config, scope):
        out.write(
            f"note: the fleet flag of {scope} is still on and was left alone "
            f"(guardctl off {scope} --fleet)\n"
        )
    return EXIT_OK


def cmd_jobs(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    scope = config.require_scope(args.scope) if args.scope else None
    jobs = list_jobs(run_locks(config), scope)
    if args.json:
        out.write(json.dumps({"jobs": [job.to_json_obj() for job in jobs]}, indent=2) + "\n")
    else:
        format_jobs(jobs, out)
    return EXIT_OK


def cmd_schedule(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    now = datetime.now(UTC)
    if args.list:
        if args.at is not None or args.for_ is not None:
            raise UsageError("--list takes no --at or --for")
        windows = all_windows(config)
        if args.scope:
            scope = config.require_scope(args.scope)
            windows = [w for w in windows if w.scope == scope]
        if args.json:
            out.write(json.dumps({"windows": [_window_json(w) for w in windows]}, indent=2) + "\n")
        else:
            format_windows(windows, now, out)
        return EXIT_OK
    scope = config.require_scope(args.scope or DEFAULT_SCOPE)
    if args.at is None or args.for_ is None:
        raise UsageError("schedule needs --at TIME and --for DUR (or --list)")
    try:
        at = parse_time(args.at)
    except ValueError as err:
        raise UsageError(f"--at: {err}") from None
    window = add_window(
        config=config,
        scope=scope,
        at=at,
        duration=args.for_,
        reason=args.reason,
        notice=args.notice if args.notice is not None else 24 * 3600.0,
        auto_off=args.auto_off,
        now=now,
    )
    out.write(
        f"scheduled {window.id}: {scope} from {window.at} to {window.end}, announced "
        f"{format_duration(window.notice)} before"
        f"{', ends by itself' if window.auto_off else ''}\n"
    )
    return EXIT_OK


def _window_json(window: Window) -> dict[str, object]:
    return {
        "id": window.id,
        "scope": window.scope,
        "at": window.at,
        "until": window.end,
        "reason": window.reason,
        "notice": window.notice,
        "auto_off": window.auto_off,
        "started": window.started,
        "done": window.done,
    }


def cmd_unschedule(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    window = remove_window(config=config, window_id=args.id)
    note = (
        "; maintenance it started stays on (guardctl off)"
        if window.started and not window.done
        else ""
    )
    out.write(f"unscheduled {window.id} ({window.scope} from {window.at}){note}\n")
    return EXIT_OK


def cmd_watch(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    with ControlClient(config.control.socket, timeout=STATUS_TIMEOUT) as client:
        first = client.request({"op": "watch"})
        if first.get("ok") is not True:
            raise Unreachable(f"guardd refused to stream: {first.get('error')}")
        _emit_watch(first, args.json, out, initial=True)
        for event in client.stream():
            _emit_watch(event, args.json, out, initial=False)
    raise AssertionError("unreachable: the stream only ends with Unreachable")


def _emit_watch(message: dict[str, Any], as_json: bool, out: TextIO, *, initial: bool) -> None:
    if as_json:
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
    elif initial:
        format_status(message, sorted(message.get("scopes", {})), out)
    else:
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        reason = f"  ({message.get('reason')})" if message.get("reason") else ""
        out.write(
            f"{stamp}  {message.get('scope')}  {message.get('state')}  "
            f"jobs={message.get('jobs')}{reason}\n"
        )
    out.flush()


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line through UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The guardctl command line."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="YAML config (default: $GUARDD_CONFIG, /etc/guardd/config.yaml)",
    )
    parser = _Parser(
        prog="guardctl",
        parents=[common],
        description="Put scopes in and out of maintenance; see state and jobs.",
    )
    parser.add_argument("--version", action="version", version=f"guardctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    status = sub.add_parser("status", parents=[common], help="every scope's state")
    status.add_argument("scopes", nargs="*", metavar="SCOPE")
    status.add_argument("--json", action="store_true")
    status.add_argument("--fleet", action="store_true", help="every node's states from etcd")
    status.set_defaults(func=cmd_status)

    on = sub.add_parser("on", parents=[common], help="put a scope in maintenance")
    on.add_argument("scope", nargs="?", default=DEFAULT_SCOPE, metavar="SCOPE")
    on.add_argument("--reason", metavar="TEXT")
    on.add_argument("--until", metavar="TIME", help="RFC 3339 time maintenance should end")
    on.add_argument(
        "--for", dest="for_", type=_duration, metavar="DUR", help="expected duration (sets until)"
    )
    on.add_argument("--wait", action="store_true", help="drain: wait until no job runs")
    on.add_argument(
        "--fleet",
        action="store_true",
        help="write the fleet flag in etcd (every node of the fleet)",
    )
    on.add_argument(
        "--timeout",
        type=_duration,
        metavar="DUR",
        help="with --wait: give up waiting after DUR (default: wait for ever)",
    )
    on.add_argument(
        "--then",
        choices=THEN_CHOICES,
        default=None,
        help="at --timeout: wait (exit 3), term (TERM then KILL), kill",
    )
    on.add_argument(
        "--grace",
        type=_duration,
        metavar="DUR",
        help="with --then term: time between TERM and KILL (default 30s)",
    )
    on.set_defaults(func=cmd_on)

    off = sub.add_parser("off", parents=[common], help="end a scope's maintenance")
    off.add_argument("scope", nargs="?", default=DEFAULT_SCOPE, metavar="SCOPE")
    off.add_argument("--fleet", action="store_true", help="remove the fleet flag in etcd")
    off.set_defaults(func=cmd_off)

    jobs = sub.add_parser("jobs", parents=[common], help="running guarded jobs")
    jobs.add_argument("scope", nargs="?", metavar="SCOPE")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    schedule = sub.add_parser(
        "schedule", parents=[common], help="plan a maintenance window (or --list them)"
    )
    schedule.add_argument("scope", nargs="?", metavar="SCOPE")
    schedule.add_argument("--at", metavar="TIME", help="RFC 3339 start time")
    schedule.add_argument(
        "--for", dest="for_", type=_duration, metavar="DUR", help="length of the window"
    )
    schedule.add_argument("--reason", metavar="TEXT")
    schedule.add_argument(
        "--notice", type=_duration, metavar="DUR", help="announce it this long before (default 24h)"
    )
    schedule.add_argument(
        "--auto-off", action="store_true", help="end maintenance at the end of the window"
    )
    schedule.add_argument("--list", action="store_true", help="list the windows")
    schedule.add_argument("--json", action="store_true", help="with --list: JSON")
    schedule.set_defaults(func=cmd_schedule)

    unschedule = sub.add_parser("unschedule", parents=[common], help="remove a window")
    unschedule.add_argument("id", metavar="ID")
    unschedule.set_defaults(func=cmd_unschedule)

    watch = sub.add_parser("watch", parents=[common], help="stream state changes from guardd")
    watch.add_argument("--json", action="store_true")
    watch.set_defaults(func=cmd_watch)
    return parser


def run(argv: Sequence[str] | None, out: TextIO) -> int:
    """Parse, load the config, dispatch. Errors propagate as GuardError."""
    args = build_parser().parse_args(argv)
    config = load_config(getattr(args, "config", None))
    code: int = args.func(config, args, out)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    return run_cli("guardctl", lambda: run(argv, sys.stdout))


__all__ = ["Then", "main"]

if __name__ == "__main__":
    sys.exit(main())
