"""guardctl's command line: parse, call one operation, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from guardd.cli.client import ControlClient
from guardd.cli.ctl.ops import (
    STATUS_TIMEOUT,
    actor,
    add_window,
    all_windows,
    audit,
    check_mode,
    get_status,
    guardd_absent_warning,
    remove_window,
    run_locks,
    turn_off,
    turn_on,
)
from guardd.cli.ctl.output import (
    DrainView,
    format_event,
    format_jobs,
    format_status,
    format_windows,
)
from guardd.cli.ctl.parse import build_parser, join_values
from guardd.cli.drain import drain
from guardd.config.load import load_config
from guardd.config.model import Config
from guardd.core.durations import format_duration, parse_time
from guardd.core.flag import make_flag, read_flag
from guardd.core.jobs import list_jobs
from guardd.core.paths import DEFAULT_SCOPE, run_lock_path
from guardd.core.schedule import (
    Window,
)
from guardd.core.switch import first_on, mirror_file, own_files, probe
from guardd.errors import (
    EXIT_DRAIN_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    run_cli,
)

# Ctrl-C: the shell's convention, 128 + SIGINT.
EXIT_INTERRUPTED = 130
# watch: pauses between attempts to reach a restarting guardd (seconds).
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0)


def cmd_forget(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from guardd.cli.ctl import fleet as fleetctl

    if fleetctl.fleet_forget(config=config, node=args.node):
        out.write(f"node {args.node}: forgotten (no longer waited for by on --fleet --wait)\n")
    else:
        out.write(f"node {args.node}: was not a member of the fleet\n")
    return EXIT_OK


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
        config=config,
        scope=scope,
        reason=args.reason,
        until=until,
        now=now,
        mode=args.mode,
        note=args.note,
    )
    flag = read_flag(path)
    by = actor()
    if existing is not None:
        what = f"{scope}: already on ({path} exists and is the application's: left as it is"
        ignored = args.reason or until or args.mode is not None or args.note
        what += "; --reason/--until/--mode/--note not applied)" if ignored else ")"
    else:
        what = f"{scope}: maintenance on ({path}) by {by}"
        if flag is not None and flag.mode is not None:
            what = f"{scope}: maintenance on, mode {flag.mode} ({path}) by {by}"
        if flag is not None and flag.until is not None:
            what += f", expected until {flag.until}"
    out.write(what + "\n")
    out.flush()
    audit(
        "on",
        scope=scope,
        by=by,
        note=flag.note if flag else args.note,
        reason=flag.reason if flag else args.reason,
    )
    _warn_if_unseen(config)
    if not args.wait:
        return EXIT_OK
    view = DrainView(out, scope)
    try:
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
    except KeyboardInterrupt:
        return _interrupted(scope)
    if result.drained:
        out.write(f"{scope}: drained, no guarded job running\n")
        return EXIT_OK
    out.write(f"{scope}: drain timed out; maintenance stays on; still running:\n")
    if result.remaining:
        format_jobs(result.remaining, out)
    else:
        out.write("  (the run lock is held by a process no listing caught: one that forks\n")
        out.write("   and exits all the time; guardctl jobs, or run the drain again)\n")
    return EXIT_DRAIN_TIMEOUT


def _interrupted(scope: str, *, fleet: bool = False) -> int:
    """Ctrl-C while waiting: stop waiting, never undo the flag, and say so."""
    off = f"guardctl off {scope}{' --fleet' if fleet else ''}"
    sys.stderr.write(
        f"\nguardctl: interrupted: stopped waiting; {scope} stays in maintenance "
        f"(end it with: {off})\n"
    )
    sys.stderr.flush()
    return EXIT_INTERRUPTED


def _warn_if_unseen(config: Config) -> None:
    """on/off: say so when no guardd will carry the change to the load balancers."""
    warning = guardd_absent_warning(config)
    if warning is not None:
        sys.stderr.write(f"guardctl: {warning}\n")
        sys.stderr.flush()


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
    info = make_flag(
        reason=args.reason, until=until, by=actor(), now=now, mode=args.mode, note=args.note
    )
    written = fleetctl.fleet_on(config=config, scope=scope, info=info)
    out.write(f"{scope}: fleet maintenance on (etcd revision {written.revision})\n")
    out.flush()
    if not args.wait:
        return EXIT_OK

    def progress(pending: list[str]) -> None:
        if pending:
            out.write(f"draining {scope} on {len(pending)} node(s): {', '.join(pending)}\n")
            out.flush()

    try:
        result = fleetctl.fleet_wait(
            config=config,
            scope=scope,
            written=written,
            timeout=args.timeout,
            on_progress=progress,
        )
    except KeyboardInterrupt:
        return _interrupted(scope, fleet=True)
    if not result.pending and not result.lost:
        out.write(f"{scope}: every live node reports it drained\n")
        return EXIT_OK
    parts = []
    if result.pending:
        parts.append(f"still draining: {', '.join(result.pending)}")
    if result.lost:
        parts.append(
            f"lost (lease expired without confirming; cut off from etcd, it may still "
            f"start jobs): {', '.join(result.lost)}"
        )
    what = "fleet drain timed out" if result.pending else "fleet drain not confirmed"
    out.write(f"{scope}: {what}; maintenance stays on; {'; '.join(parts)}\n")
    return EXIT_DRAIN_TIMEOUT


def _until(args: argparse.Namespace, now: datetime) -> datetime | None:
    if args.until is not None and args.for_ is not None:
        raise UsageError("give --until or --for, not both")
    if args.for_ is not None:
        if args.for_ <= 0:
            raise UsageError("--for must be longer than 0s (how long maintenance should last)")
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
    by = actor()
    if turn_off(config=config, scope=scope, force=args.force):
        note = f", note: {args.note}" if args.note else ""
        out.write(f"{scope}: maintenance off by {by}{note}\n")
        audit("off", scope=scope, by=by, note=args.note, reason=None)
    else:
        out.write(f"{scope}: was not in maintenance\n")
    _warn_if_unseen(config)
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
    """Stream guardd's changes; follow guardd across restarts.

    guardd not reachable at the start is exit 4 (nothing to watch, most likely a
    wrong config or a stopped service); once watching, a lost stream is said in one
    line and guardd is reached again, its full state shown anew.
    """
    client = _watch_connect(config)
    while True:
        try:
            with client:
                _emit_watch(_start_watch(client), args.json, out, initial=True)
                for event in client.stream():
                    _emit_watch(event, args.json, out, initial=False)
        except Unreachable as lost:
            _emit_note(
                {"event": "disconnected", "error": lost.message},
                f"guardd went away ({lost.message}); reconnecting",
                args.json,
                out,
            )
        client = _watch_reconnect(config)
        _emit_note({"event": "reconnected"}, "reconnected to guardd", args.json, out)


def _start_watch(client: ControlClient) -> dict[str, Any]:
    first = client.request({"op": "watch"})
    if first.get("ok") is not True:
        raise Unreachable(f"guardd refused to stream: {first.get('error')}")
    return first


def _watch_connect(config: Config) -> ControlClient:
    return ControlClient(config.control.socket, timeout=STATUS_TIMEOUT)


def _watch_reconnect(config: Config) -> ControlClient:
    """Try again, a little slower each time, until guardd answers (Ctrl-C ends it)."""
    attempt = 0
    while True:
        time.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
        attempt += 1
        try:
            return _watch_connect(config)
        except Unreachable:
            continue


def _emit_note(event: dict[str, Any], text: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(event, separators=(",", ":")) + "\n")
    else:
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        out.write(f"{stamp}  {text}\n")
    out.flush()


def _emit_watch(message: dict[str, Any], as_json: bool, out: TextIO, *, initial: bool) -> None:
    if as_json:
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
    elif initial:
        format_status(message, sorted(message.get("scopes", {})), out)
    else:
        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
        out.write(f"{stamp}  {format_event(message)}\n")
    out.flush()


# --------------------------------------------------------------------------- CLI

# What each subcommand runs (guardd.cli.ctl.parse declares them).
COMMANDS = {
    "status": cmd_status,
    "on": cmd_on,
    "off": cmd_off,
    "jobs": cmd_jobs,
    "schedule": cmd_schedule,
    "unschedule": cmd_unschedule,
    "forget": cmd_forget,
    "watch": cmd_watch,
}


def run(argv: Sequence[str] | None, out: TextIO) -> int:
    """Parse, load the config, dispatch. Errors propagate as GuardError."""
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    if not arguments:
        parser.print_help(out)
        return EXIT_USAGE
    args = parser.parse_args(join_values(arguments))
    config = load_config(getattr(args, "config", None))
    code: int = COMMANDS[args.command](config, args, out)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    # Warnings from shared code (a schedule window skipped) as one "guardctl:" line.
    logging.basicConfig(format="guardctl: %(message)s", level=logging.WARNING)
    return run_cli("guardctl", lambda: run(argv, sys.stdout))


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
