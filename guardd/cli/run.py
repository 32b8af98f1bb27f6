"""guard-run: run a command only while its scope is in service, holding the run locks.

The protocol (SPEC, "The drain guarantee"): take the shared run locks, *then* read
the flags; the command inherits the locks and holds them for its whole life. This
module sits in front of every cron job, so the decision is made with os, fcntl and
the lean guardd.core (paths, switch, runlock) and cli.runcache helpers; everything else (signal
handling, durations, the journal/syslog trace, JSON) is imported only on the paths that
need it.
"""

import os
import sys
import time

from guardd.cli.runcache import load_run_view
from guardd.core.paths import (
    DEFAULT_SCOPE,
    RUNTIME_DIR_MODE,
    SCOPE_ENV,
    SCOPE_PATTERN,
    RunView,
    is_scope_name,
    make_dir,
    run_lock_path,
)
from guardd.core.runlock import LOCK_FD_FLOOR, lock_shared, open_run_lock
from guardd.core.switch import Hit, first_on, switch_files
from guardd.errors import (
    EXIT_FAILURE,
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    GuardError,
    UsageError,
    run_cli,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

    from guardd.core.choices import WhenOn

PROG = "guard-run"
# core.choices.WHEN_ON, written out: importing typing would cost guard-run its start.
WHEN_ON: "tuple[WhenOn, ...]" = ("skip", "wait", "fail")
DEFAULT_GRACE = 30.0
# How often the flags are looked at while waiting (--when-on wait): a few lstat calls.
POLL_INTERVAL = 0.25
# A drain holds a run lock exclusively only for an instant; longer means something
# is wrong, and a stuck holder must not hang every cron job for ever.
LOCK_TIMEOUT = 10.0
MAX_REASON_CHARS = 200

USAGE = f"""\
usage: {PROG} [--scope S] [--when-on skip|wait|fail] [--wait-timeout DUR]
                 [--skip-code N] [--interrupt [--grace DUR]] [--config PATH] [-v]
                 -- COMMAND [ARG...]
       {PROG} --check [--scope S] [--config PATH] [-v]

Run COMMAND only while SCOPE is in service, holding its run locks (shared) for the
command's whole life, so that `guardctl on --wait` can drain it.

  --scope S          scope to guard (default: $GUARD_SCOPE, else "default")
  --when-on MODE     in maintenance: skip (exit --skip-code, silently), wait (until
                     off, without holding the locks) or fail (exit 75)
  --wait-timeout DUR with --when-on wait: give up after DUR and act as fail
  --skip-code N      exit status when skipped (default: run.skip_code, else 0)
  --interrupt        stay as parent; when maintenance comes on, SIGTERM the
                     command's process group, SIGKILL after --grace (default 30s)
  --check            run nothing: exit 0 in service, 1 in maintenance
  --config PATH      config file (default: $GUARDD_CONFIG, else /etc/guardd/config.yaml)
  -v, --verbose      name on stderr the flags and run locks checked, what was
                     decided and why
  -h, --help         this help

examples:
  guard-run --scope shop -- /usr/local/bin/backup --full     (in a crontab line)
  guard-run --scope shop --when-on wait --wait-timeout 1h -- ./import.sh
  guard-run --scope shop --interrupt --grace 1m -- ./worker
  ExecCondition=/usr/bin/guard-run --check --scope shop      (systemd unit)

A skip is logged as one line: to the journal under systemd (fields GUARD_SCOPE,
GUARD_FLAG, ...: journalctl SYSLOG_IDENTIFIER=guard-run), else to syslog, else on
stderr when neither exists.

exit status:
  0        COMMAND's own 0, or skipped (--skip-code, default 0), or --check: in service
  1        --check: in maintenance
  2        usage or config error; COMMAND was not run
  75       in maintenance with --when-on fail (or still on after --wait-timeout)
  126/127  COMMAND not executable / not found
  128+N    COMMAND killed by signal N
  other    COMMAND's own exit status
"""


class RunOptions:
    """A parsed guard-run command line."""

    __slots__ = (
        "check",
        "command",
        "config_path",
        "grace",
        "interrupt",
        "scope",
        "show_help",
        "skip_code",
        "verbose",
        "wait_timeout",
        "when_on",
    )

    def __init__(
        self,
        *,
        command: list[str],
        scope: str = DEFAULT_SCOPE,
        when_on: "WhenOn" = "skip",
        wait_timeout: float | None = None,
        skip_code: int | None = None,
        interrupt: bool = False,
        grace: float = DEFAULT_GRACE,
        check: bool = False,
        config_path: str | None = None,
        verbose: bool = False,
        show_help: bool = False,
    ) -> None:
        self.command = command
        self.scope = scope
        self.when_on: WhenOn = when_on
        self.wait_timeout = wait_timeout
        self.skip_code = skip_code
        self.interrupt = interrupt
        self.grace = grace
        self.check = check
        self.config_path = config_path
        self.verbose = verbose
        self.show_help = show_help


# --------------------------------------------------------------------------- parsing

_VALUE_OPTIONS = ("--scope", "--when-on", "--wait-timeout", "--skip-code", "--grace", "--config")
_FLAG_OPTIONS = ("--interrupt", "--check", "-v", "--verbose", "-h", "--help")
_RUN_ONLY = ("--when-on", "--wait-timeout", "--skip-code", "--grace", "--interrupt")


def parse_args(argv: "Sequence[str]", environ: "Mapping[str, str]") -> RunOptions:
    """Parse guard-run's command line. Pure; raises UsageError with one clear line.

    Options end at ``--`` or at the first argument that is not an option, so that
    ``guard-run backup --full`` passes ``--full`` to ``backup``.
    """
    values: dict[str, str] = {}
    flags: set[str] = set()
    command: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            command = list(argv[index + 1 :])
            break
        if not arg.startswith("-") or arg == "-":
            command = list(argv[index:])
            break
        name, equals, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _VALUE_OPTIONS:
            if equals:
                value = inline
            elif index + 1 < len(argv):
                index += 1
                value = argv[index]
            else:
                raise UsageError(f"{name} needs a value")
            if name in values:
                raise UsageError(f"{name} given twice")
            values[name] = value
        elif name in _FLAG_OPTIONS and not equals:
            flags.add("--verbose" if name == "-v" else "--help" if name == "-h" else name)
        else:
            raise UsageError(f"unknown option {arg!r} (see {PROG} --help)")
        index += 1

    if "--help" in flags:
        return RunOptions(command=[], show_help=True)
    options = RunOptions(
        command=command,
        scope=_scope(values.get("--scope"), environ.get(SCOPE_ENV)),
        check="--check" in flags,
        interrupt="--interrupt" in flags,
        verbose="--verbose" in flags,
        config_path=values.get("--config"),
    )
    if options.config_path == "":
        raise UsageError("--config needs a path")
    if options.check:
        given = [name for name in _RUN_ONLY if name in values or name in flags]
        if given:
            raise UsageError(f"--check runs nothing: {given[0]} does not apply")
        if command:
            raise UsageError("--check runs nothing: remove the command")
        return options
    if not command:
        raise UsageError(f"no command given (usage: {PROG} [OPTIONS] -- COMMAND [ARG...])")

    when_on = values.get("--when-on", "skip")
    for mode in WHEN_ON:
        if when_on == mode:
            options.when_on = mode
            break
    else:
        raise UsageError(f"--when-on: expected one of skip, wait, fail, got {when_on!r}")
    if "--wait-timeout" in values:
        if options.when_on != "wait":
            raise UsageError("--wait-timeout only applies to --when-on wait")
        options.wait_timeout = _duration("--wait-timeout", values["--wait-timeout"])
    if "--grace" in values:
        if not options.interrupt:
            raise UsageError("--grace only applies to --interrupt")
        options.grace = _duration("--grace", values["--grace"])
    if "--skip-code" in values:
        text = values["--skip-code"]
        if not (text.isascii() and text.isdigit() and int(text) <= 255):
            raise UsageError(f"--skip-code: expected a whole number from 0 to 255, got {text!r}")
        options.skip_code = int(text)
    return options


def _scope(from_option: str | None, from_env: str | None) -> str:
    if from_option is not None:
        scope, source = from_option, "--scope"
    elif from_env:
        scope, source = from_env, SCOPE_ENV
    else:
        return DEFAULT_SCOPE
    if not is_scope_name(scope):
        raise UsageError(f"{source}: {scope!r} is not a scope name (expected {SCOPE_PATTERN})")
    return scope


def _duration(option: str, text: str) -> float:
    from guardd.core.durations import parse_duration  # only when given: re and datetime

    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None


# --------------------------------------------------------------------------- flags


def scope_flags(view: RunView, scope: str) -> tuple[str, ...]:
    """Every file whose existence puts ``scope`` in maintenance (switch.switch_files:
    its own, then ``default``'s). A scope that is not configured is a usage error
    naming the known scopes.
    """
    if scope not in view.scope_flags:
        known = ", ".join(sorted(view.scope_flags))
        raise UsageError(f"unknown scope {scope!r} (configured scopes: {known})")
    return switch_files(view, scope)


# Flags already reported as unknowable: said once per run, not on every poll.
_doubts_shown: set[str] = set()


def present_flag(paths: "Sequence[str]") -> Hit | None:
    """The first of ``paths`` that puts the scope on (switch.first_on), None if none.

    A flag whose existence cannot be known (EACCES on its directory, EIO) counts as
    present, as for guardd and guardctl: the job is skipped, failed or kept waiting
    as in maintenance, and one line on stderr says why (even without -v: something
    is broken that an operator must see).
    """
    hit = first_on(paths)
    if hit is not None and hit.doubt is not None and hit.path not in _doubts_shown:
        _doubts_shown.add(hit.path)
        _say(f"cannot tell whether flag {hit.path} exists ({hit.doubt}): counting it as on")
    return hit


def flag_reason(path: str) -> str | None:
    """The reason a flag file gives (JSON ``reason`` or its first line), cleaned.

    A small twin of guardd.core.flag's reading, which would cost guard-run dataclasses
    and datetime; only used to say why a job was skipped. Never raises.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 64 * 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace").strip()
    reason: object = None
    if text.startswith("{"):
        import json

        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            reason = parsed.get("reason")
            text = ""
    if reason is None and text and "\x00" not in text.split("\n", 1)[0]:
        reason = text.split("\n", 1)[0]
    if not isinstance(reason, str):
        return None
    from guardd.core.text import clean_text  # only when a job is skipped

    return clean_text(reason, limit=MAX_REASON_CHARS)


def _why(scope: str, flag: Hit) -> str:
    if flag.doubt is not None:
        return f"scope {scope} counts as in maintenance (flag {flag.path}: {flag.doubt})"
    reason = flag_reason(flag.path)
    detail = f"{reason}; flag {flag.path}" if reason else f"flag {flag.path}"
    return f"scope {scope} is in maintenance ({detail})"


# --------------------------------------------------------------------------- run locks


def run_lock_paths(view: RunView, scope: str) -> tuple[str, ...]:
    """``default.run`` (every job holds it) and the scope's own run lock."""
    paths = [run_lock_path(view.runtime_dir, DEFAULT_SCOPE)]
    if scope != DEFAULT_SCOPE:
        paths.append(run_lock_path(view.runtime_dir, scope))
    return tuple(paths)


def _open_lock(path: str) -> int:
    try:
        try:
            fd = open_run_lock(path, create=True)
        except FileNotFoundError:
            # 0755 whatever the umask: every user's jobs open the run locks.
            make_dir(os.path.dirname(path), RUNTIME_DIR_MODE)
            fd = open_run_lock(path, create=True)
    except OSError as err:
        raise GuardError(
            f"cannot open run lock {path}: {err.strerror} (not running)", exit_code=EXIT_USAGE
        ) from None
    import fcntl

    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LOCK_FD_FLOOR)
    except OSError:
        return fd  # a low RLIMIT_NOFILE: keep the descriptor where it is
    os.close(fd)
    return high


class LockBusy(Exception):
    """A run lock stayed exclusively locked for longer than a drain ever holds it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def take_run_locks(paths: "Sequence[str]", *, timeout: float) -> list[int]:
    """Open (creating when possible) and lock every run lock shared, in order.

    Raises LockBusy when one stays exclusively locked for ``timeout`` and GuardError
    (exit 2) naming a run lock that cannot be opened; either way none is held then.
    """
    fds: list[int] = []
    busy = None
    try:
        for path in paths:
            fds.append(_open_lock(path))
            if not lock_shared(fds[-1], timeout=timeout):
                busy = path
                break
    except BaseException:
        release(fds)
        raise
    if busy is not None:
        release(fds)
        raise LockBusy(busy)
    return fds


def release(fds: list[int]) -> None:
    """Close the lock descriptors (which releases the locks) and forget them."""
    for fd in fds:
        os.close(fd)
    fds.clear()


# --------------------------------------------------------------------------- core


def check_scope(*, scope: str, config_path: str | None = None, verbose: bool = False) -> int:
    """``--check``: 0 when ``scope`` is in service, 1 in maintenance; runs nothing."""
    view = load_run_view(config_path)
    flags = scope_flags(view, scope)
    flag = present_flag(flags)
    if flag is None:
        if verbose:
            _say_checked(scope, flags)
        return EXIT_OK
    if verbose:
        _say(_why(scope, flag))
    return 1


def run_guarded(options: RunOptions) -> int:
    """Run ``options.command`` under the run locks if its scope is in service (SPEC
    guard-run).

    The command runs as guard-run's child (guardd.cli.supervise), except in a
    terminal's foreground, where it is exec'd in place (this does not return); either
    way it inherits the locks. Returns its exit status; raises GuardError for
    usage/config errors (2), ``fail`` (75) and exec failures (126/127).
    """
    command, scope, when_on = options.command, options.scope, options.when_on
    verbose, config_path = options.verbose, options.config_path
    wait_timeout, skip_code = options.wait_timeout, options.skip_code
    interrupt, grace = options.interrupt, options.grace
    view = load_run_view(config_path)
    flags = scope_flags(view, scope)
    lock_paths = run_lock_paths(view, scope)
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    announced = False
    while True:
        lock_timeout = LOCK_TIMEOUT
        if deadline is not None:
            lock_timeout = min(lock_timeout, max(deadline - time.monotonic(), 0.5))
        fds: list[int] = []
        busy: str | None = None
        # Deciding *not* to run needs no lock: a skip never shows up as a job.
        flag = present_flag(flags)
        if flag is None:
            try:
                fds = take_run_locks(lock_paths, timeout=lock_timeout)
            except LockBusy as err:
                busy = err.path
            try:
                flag = present_flag(flags)  # the check the protocol relies on
            except BaseException:
                release(fds)
                raise
            if flag is None and busy is None:
                break
            release(fds)  # never hold the locks while in maintenance
        if flag is None:
            # No flag, yet a run lock stays exclusively locked: not a drain as we
            # know it. Running would break the protocol; waiting for ever hangs cron.
            # Any user who can open the lock can do this: name who, so one can act.
            raise GuardError(
                f"run lock {busy} stayed exclusively locked for {lock_timeout:g}s"
                f"{_lock_holders(busy)}; not running {_shown(command)}",
                exit_code=EXIT_TEMPFAIL,
            )
        if when_on == "skip":
            code = view.skip_code if skip_code is None else skip_code
            _log_skip(command, scope, flag, verbose=verbose)
            return code
        if when_on == "fail":
            raise GuardError(
                f"{_why(scope, flag)}: not running {_shown(command)}", exit_code=EXIT_TEMPFAIL
            )
        if verbose and not announced:
            _say(f"{_why(scope, flag)}: waiting to run {_shown(command)}")
            announced = True
        if not wait_until_off(flags, deadline=deadline):
            raise GuardError(
                f"{_why(scope, flag)}: still on after --wait-timeout; "
                f"not running {_shown(command)}",
                exit_code=EXIT_TEMPFAIL,
            )
        # Off now: loop to take the locks again and re-check (SPEC: wait).
    if verbose:
        _say_checked(scope, flags, lock_paths)
    from guardd.cli.supervise import CannotExecute, supervise
    from guardd.core.procfs import in_terminal_foreground

    if not interrupt and in_terminal_foreground():
        # A terminal's foreground: the command keeps the terminal and Ctrl-C.
        exec_in_place(command, fds)
        raise AssertionError("exec_in_place returned")  # pragma: no cover

    maintenance_began = None
    if interrupt:

        def maintenance_began() -> str | None:
            flag = present_flag(flags)  # unknown counts as on here too (one rule)
            return None if flag is None else _why(scope, flag)

    try:
        return supervise(
            command,
            fds,
            maintenance_began=maintenance_began,
            grace=grace,
            say=_say if verbose else None,
        )
    except CannotExecute as err:
        raise _exec_error(command[0], err.error) from None


def _lock_holders(path: str | None) -> str:
    """`` by pid N (user U: COMMAND)`` for whoever holds ``path`` exclusively, or ""."""
    from guardd.core.runlock import describe_process, exclusive_holders, read_proc_locks

    try:
        inode = os.stat(path).st_ino if path else -1
    except OSError:
        return ""
    pids = exclusive_holders(read_proc_locks(), inode)
    return " by " + ", ".join(describe_process(pid) for pid in pids) if pids else ""


def wait_until_off(flags: "Sequence[str]", *, deadline: float | None) -> bool:
    """Poll until no flag is present; False when ``deadline`` (monotonic) passes first."""
    while present_flag(flags) is not None:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        pause = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - now)
        time.sleep(pause)
    return True


# --------------------------------------------------------------------------- running


def _exec_error(program: str, err: OSError) -> GuardError:
    if isinstance(err, FileNotFoundError | NotADirectoryError):
        return GuardError(f"{program}: command not found", exit_code=EXIT_NOT_FOUND)
    return GuardError(f"{program}: cannot execute: {err.strerror}", exit_code=EXIT_NOT_EXECUTABLE)


def exec_in_place(command: "Sequence[str]", fds: "Sequence[int]") -> None:
    """Become ``command``, keeping the lock descriptors open across exec: the command,
    and every child it forks, then holds the locks for its whole life. Used in a
    terminal's foreground only (guardd.core.procfs.in_terminal_foreground): there the
    job is what the terminal runs, and a child that closes its descriptors is not held
    for."""
    # The C module behind ``signal``: the latter imports enum (~3 ms at start-up),
    # for names this path does not need.
    import _signal

    for fd in fds:
        os.set_inheritable(fd, True)
    # Python ignores these at start-up; an exec'd program must get the defaults
    # (``guard-run -- yes | head`` must end on SIGPIPE).
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))  # noqa: S606 -- running COMMAND is the job
    except OSError as err:
        raise _exec_error(command[0], err) from None


# --------------------------------------------------------------------------- output


def _shown(command: "Sequence[str]") -> str:
    import shlex

    return shlex.join(command)


def _say(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def _log_skip(command: "Sequence[str]", scope: str, flag: Hit, *, verbose: bool) -> None:
    """One line where the operator looks: the journal under systemd (with GUARD_*
    fields), else syslog, else stderr (when neither socket exists); and stderr with -v.

    cron mails any output, so a skip is silent on stdout and stderr by default.
    """
    message = f"{_why(scope, flag)}: skipped {_shown(command)}"
    from guardd.cli.trace import record

    where = record(
        PROG,
        message,
        {
            "GUARD_SCOPE": scope,
            "GUARD_FLAG": flag.path,
            "GUARD_REASON": (flag_reason(flag.path) if flag.doubt is None else None) or "",
            "GUARD_COMMAND": _shown(command),
            "GUARD_ACTION": "skip",
        },
    )
    if verbose and where != "stderr":
        _say(message)


def _say_checked(scope: str, flags: "Sequence[str]", locks: "Sequence[str]" = ()) -> None:
    """-v: which flags (and run locks) decided that ``scope`` is in service."""
    held = f"; holding run locks {', '.join(locks)}" if locks else ""
    _say(f"scope {scope} is in service (no flag among {', '.join(flags)}){held}")


# --------------------------------------------------------------------------- CLI


def _cli(argv: "Sequence[str]") -> int:
    options = parse_args(argv, os.environ)
    if options.show_help:
        sys.stdout.write(USAGE)
        return EXIT_OK
    if options.check:
        return check_scope(
            scope=options.scope, config_path=options.config_path, verbose=options.verbose
        )
    return run_guarded(options)


def main(argv: "Sequence[str] | None" = None) -> int:
    """Entry point of the ``guard-run`` console script."""
    arguments = sys.argv[1:] if argv is None else argv
    return run_cli(PROG, lambda: _cli(arguments))


def finish(code: int) -> "NoReturn":
    """End the process with ``code`` once stdout and stderr are flushed, skipping the
    interpreter's teardown: it would cost a fifth of guard-run's start (~2 ms of module
    clean-up) and guard-run leaves nothing that needs it (no threads, no atexit, files
    written synchronously; the kernel closes the rest)."""
    if "coverage" in sys.modules:
        sys.exit(code)  # measured (tests/coverage): its data is written at exit
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as err:
            code = code or EXIT_FAILURE
            if stream is sys.stdout:
                try:
                    sys.stderr.write(f"{PROG}: cannot write its output: {err}\n")
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):
                    pass  # no stderr either: the exit status says it
    os._exit(code)
