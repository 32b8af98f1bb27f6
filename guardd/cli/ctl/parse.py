"""guardctl's command line: the parser, its help texts and exit codes, and the
value-joining that lets ``--for -5m`` reach its option. Declarations only: what each
command does is in guardd.cli.ctl.main (dispatched by the subcommand's name)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from guardd import __version__
from guardd.core.choices import THEN
from guardd.core.durations import parse_duration
from guardd.core.paths import DEFAULT_SCOPE
from guardd.errors import UsageError

EXIT_CODES = """\
exit status:
  0    ok
  1    other failure (permission denied, a lock_file guardctl did not write, ...)
  2    usage or config error (unknown scope, bad option, bad duration or time)
  3    drain timed out (on --wait --timeout): maintenance stays on
  4    guardd (watch) or, with --fleet, etcd not reachable
  130  interrupted (Ctrl-C); a flag already written stays: maintenance stays on
"""

HELP = f"""\
examples:
  guardctl status                          every scope's state
  guardctl on shop --reason "Database upgrade" --for 30m --wait
                                           take shop down, wait for its jobs
  guardctl on --note "ticket OPS-42"       the whole host (scope default)
  guardctl off shop                        back in service
  guardctl jobs                            guarded jobs running now
  guardctl watch                           follow changes live

{EXIT_CODES}"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line through UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as err:
        if text.strip().startswith("-"):
            raise argparse.ArgumentTypeError(
                f"{text!r} is negative: give a length of time such as 30s, 10m, 2h"
            ) from None
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


# Options that take a value: "--for -5m" must reach the option as its value (argparse
# would take "-5m" for an option and say "expected one argument").
_VALUE_OPTIONS = frozenset(
    {"--for", "--until", "--timeout", "--grace", "--reason", "--note", "--at", "--notice"}
)


def join_values(argv: Sequence[str]) -> list[str]:
    """``--for -5m`` becomes ``--for=-5m``, so that the value is checked as a value."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if (
            arg in _VALUE_OPTIONS
            and index + 1 < len(argv)
            and argv[index + 1].startswith("-")
            and argv[index + 1] != "--"
        ):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


def _sub(
    sub: argparse._SubParsersAction[_Parser],
    name: str,
    common: _Parser,
    *,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


_SCOPE_HELP = "scope name (default: default, the whole host: every scope counts as on)"


def build_parser() -> argparse.ArgumentParser:
    """The guardctl command line."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="YAML config (default: $GUARDD_CONFIG, else /etc/guardd/config.yaml)",
    )
    parser = _Parser(
        prog="guardctl",
        parents=[common],
        description=(
            "Put scopes in and out of maintenance; see their state, jobs and changes. "
            "Everything but watch works without guardd: the flag files are the truth."
        ),
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"guardctl {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    status = _sub(
        sub,
        "status",
        common,
        summary="every scope's state",
        description=(
            "Each scope's state (off, draining, on), since, until (OVERDUE once passed), "
            "jobs, who switched it (by), the public reason and the internal note; "
            "'on (via default)' for a scope on only because default is. Asks guardd, "
            "else reads the flag files itself."
        ),
        examples=("  guardctl status\n  guardctl status shop --json\n  guardctl status --fleet"),
    )
    status.add_argument("scopes", nargs="*", metavar="SCOPE", help="only these scopes")
    status.add_argument(
        "--json",
        action="store_true",
        help="the status reply as JSON (fields state, since, until, reason, jobs, "
        "overdue, via, by, note)",
    )
    status.add_argument("--fleet", action="store_true", help="every node's states from etcd")

    on = _sub(
        sub,
        "on",
        common,
        summary="put a scope in maintenance",
        description=(
            "Write the scope's flag (atomically). Without SCOPE: scope default, which "
            "puts the whole host in maintenance (every scope counts as on). On a scope "
            "already on: keeps since, and keeps until, reason, mode and note unless given "
            "again. Warns when guardd is configured for load balancers but not running."
        ),
        examples=(
            '  guardctl on shop --reason "Database upgrade" --for 30m\n'
            "  guardctl on shop --until 2026-12-01T23:00:00Z --wait --timeout 10m --then term\n"
            '  guardctl on shop --mode read-only --reason "Sign-up and checkout paused"\n'
            '  sudo guardctl on --note "kernel update, ask Ana"   # whole host\n'
            "  guardctl on shop --fleet --wait                    # every node"
        ),
    )
    on.add_argument("scope", nargs="?", default=DEFAULT_SCOPE, metavar="SCOPE", help=_SCOPE_HELP)
    on.add_argument(
        "--reason",
        metavar="TEXT",
        help="public text: shown on the maintenance page, JSON answers, HAProxy",
    )
    on.add_argument(
        "--note",
        metavar="TEXT",
        help="internal text for operators: status, watch and logs only, never public",
    )
    on.add_argument(
        "--mode",
        metavar="NAME",
        help="partial maintenance: only the requests the scope's mode NAME matches "
        "(built in: read-only); jobs still skip and --wait still drains",
    )
    on.add_argument("--until", metavar="TIME", help="expected end, RFC 3339 (2026-12-01T23:00:00Z)")
    on.add_argument(
        "--for",
        dest="for_",
        type=_duration,
        metavar="DUR",
        help="expected length (30s, 10m, 1h30m): sets until; maintenance does not end by itself",
    )
    on.add_argument(
        "--wait",
        action="store_true",
        help="drain: wait until no guarded job of the scope runs (exit 0)",
    )
    on.add_argument(
        "--fleet",
        action="store_true",
        help="write the fleet flag in etcd (every node of the fleet)",
    )
    on.add_argument(
        "--timeout",
        type=_duration,
        metavar="DUR",
        help="with --wait: stop waiting after DUR (default: wait for ever)",
    )
    on.add_argument(
        "--then",
        choices=THEN,
        default=None,
        help="at --timeout: wait (list the jobs, exit 3; default), term (TERM, then "
        "KILL after --grace), kill",
    )
    on.add_argument(
        "--grace",
        type=_duration,
        metavar="DUR",
        help="with --then term: time between TERM and KILL (default 30s)",
    )

    off = _sub(
        sub,
        "off",
        common,
        summary="end a scope's maintenance",
        description=(
            "Remove the scope's flag; idempotent. Without SCOPE: scope default (the "
            "whole host). A scope stays on while default (or its fleet flag) is on; "
            "guardctl says so."
        ),
        examples=(
            "  guardctl off shop\n"
            '  guardctl off --note "kernel updated, rebooted"\n'
            "  guardctl off shop --fleet"
        ),
    )
    off.add_argument("scope", nargs="?", default=DEFAULT_SCOPE, metavar="SCOPE", help=_SCOPE_HELP)
    off.add_argument(
        "--note", metavar="TEXT", help="internal text for the audit line (journal/syslog)"
    )
    off.add_argument("--fleet", action="store_true", help="remove the fleet flag in etcd")
    off.add_argument(
        "--force",
        action="store_true",
        help="remove a scope's lock_file even though the application wrote it",
    )

    jobs = _sub(
        sub,
        "jobs",
        common,
        summary="running guarded jobs",
        description="Guarded jobs running now (found from the run locks): pid, scope, "
        "start time, command line.",
        examples="  guardctl jobs\n  guardctl jobs shop --json",
    )
    jobs.add_argument("scope", nargs="?", metavar="SCOPE", help="only this scope's jobs")
    jobs.add_argument("--json", action="store_true", help='as JSON: {"jobs": [...]}')

    schedule = _sub(
        sub,
        "schedule",
        common,
        summary="plan a maintenance window (or --list them)",
        description="Plan a window: announced --notice before (page banner, status), "
        "maintenance on at --at; off at the end only with --auto-off.",
        examples=(
            '  guardctl schedule shop --at 2026-12-01T23:00:00Z --for 1h --reason "Upgrade"\n'
            "  guardctl schedule --list"
        ),
    )
    schedule.add_argument("scope", nargs="?", metavar="SCOPE", help=_SCOPE_HELP)
    schedule.add_argument("--at", metavar="TIME", help="start, RFC 3339")
    schedule.add_argument(
        "--for", dest="for_", type=_duration, metavar="DUR", help="length of the window"
    )
    schedule.add_argument("--reason", metavar="TEXT", help="public text, as for on")
    schedule.add_argument(
        "--notice", type=_duration, metavar="DUR", help="announce it this long before (default 24h)"
    )
    schedule.add_argument(
        "--auto-off", action="store_true", help="end maintenance at the end of the window"
    )
    schedule.add_argument("--list", action="store_true", help="list the windows")
    schedule.add_argument("--json", action="store_true", help="with --list: JSON")

    unschedule = _sub(
        sub,
        "unschedule",
        common,
        summary="remove a window",
        description="Remove a scheduled window; one already started leaves maintenance on.",
        examples="  guardctl unschedule 3f2a9c",
    )
    unschedule.add_argument("id", metavar="ID", help="the window's id (schedule --list)")

    forget = _sub(
        sub,
        "forget",
        common,
        summary="drop a decommissioned fleet node that never left",
        description=(
            "A fleet node that joined and never stopped cleanly stays a member: "
            "`on --fleet --wait` names it lost (exit 3). Once the host is gone for good, "
            "forget it. A live node is refused (exit 1)."
        ),
        examples="  guardctl forget web-9",
    )
    forget.add_argument("node", metavar="NODE", help="the node name (status --fleet)")

    watch = _sub(
        sub,
        "watch",
        common,
        summary="stream state changes from guardd",
        description=(
            "The state, then one line per change (state, reason, until, jobs, by, note, "
            "overdue). When guardd restarts, a line says so and watch reconnects; "
            "guardd not reachable at the start is exit 4."
        ),
        examples="  guardctl watch\n  guardctl watch --json | jq .",
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser
