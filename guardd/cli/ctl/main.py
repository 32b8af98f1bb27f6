"""guardctl's command line: parse, call one operation, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

from guardd import __version__
from guardd.cli.client import ControlClient
from guardd.cli.ctl.ops import (
    STATUS_TIMEOUT,
    _actor,
    add_window,
    all_windows,
    check_mode,
    get_status,
    remove_window,
    run_locks,
    turn_off,
    turn_on,
)
from guardd.cli.ctl.output import DrainView, format_jobs, format_status, format_windows
from guardd.cli.drain import THEN_CHOICES, Then, drain
from guardd.config.load import load_config
from guardd.config.model import Config
from guardd.core.durations import format_duration, parse_duration, parse_time
from guardd.core.flag import make_flag
from guardd.core.jobs import list_jobs
from guardd.core.paths import DEFAULT_SCOPE, run_lock_path
from guardd.core.schedule import (
    Window,
)
from guardd.core.switch import first_on, mirror_file, own_files, probe
from guardd.errors import (
    EXIT_DRAIN_TIMEOUT,
    EXIT_OK,
    Unreachable,
    UsageError,
    run_cli,
)


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    if args.fleet:
        from guardd.cli.ctl import fleet as fleetctl

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
    path, existing = turn_on(
        config=config, scope=scope, reason=args.reason, until=until, now=now, mode=args.mode
    )
    if existing is not None:
        what = f"{scope}: already on ({path} exists and is the application's: left as it is"
        ignored = args.reason or until or args.mode is not None
        what += "; --reason/--until/--mode not applied)" if ignored else ")"
    else:
        what = f"{scope}: maintenance on ({path})"
        if args.mode is not None:
            what = f"{scope}: maintenance on, mode {args.mode} ({path})"
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
    from guardd.cli.ctl import fleet as fleetctl

    if args.then is not None or args.grace is not None:
        raise UsageError(
            "--then and --grace do not go with --fleet (other hosts' jobs are out of reach)"
        )
    if args.mode is not None:
        check_mode(config, scope, args.mode)
    info = make_flag(reason=args.reason, until=until, by=_actor(), now=now, mode=args.mode)
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
        from guardd.cli.ctl import fleet as fleetctl

        removed = fleetctl.fleet_off(config=config, scope=scope)
        out.write(f"{scope}: fleet maintenance {'off' if removed else 'was not on'}\n")
        return EXIT_OK
    if turn_off(config=config, scope=scope, force=args.force):
        out.write(f"{scope}: maintenance off\n")
    else:
        out.write(f"{scope}: was not in maintenance\n")
    view = config.run_view()
    if scope != DEFAULT_SCOPE and first_on(own_files(view, DEFAULT_SCOPE)) is not None:
        out.write(
            f"note: 'default' is still on, so {scope} stays in maintenance (guardctl off default)\n"
        )
    mirror = mirror_file(view, scope)
    if mirror is not None and probe(mirror) is not None:
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
    on.add_argument(
        "--mode",
        metavar="NAME",
        help="partial maintenance: only the requests the scope's mode NAME matches "
        "(built in: read-only); jobs still skip and --wait still drains",
    )
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
    off.add_argument(
        "--force",
        action="store_true",
        help="remove a scope's lock_file even though the application wrote it",
    )
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
