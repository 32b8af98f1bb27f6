"""guardctl's operations as keyword-only functions over the flag files and run locks.

Everything but ``watch`` works without guardd: the flag files and run locks are the
source of truth, the daemon only publishes them."""

from __future__ import annotations

import errno
import getpass
import os
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from guardd import __version__
from guardd.cli.client import ControlClient
from guardd.config.model import Config
from guardd.core import lockfile
from guardd.core.durations import format_time
from guardd.core.flag import (
    FlagInfo,
    make_flag,
    read_flag,
    read_scope,
    remove_flag,
    renew_flag,
    write_flag,
)
from guardd.core.jobs import count_jobs
from guardd.core.paths import LOCK_DIR_MODE, group_id, make_dir, run_lock_path
from guardd.core.runlock import ensure_run_locks
from guardd.core.schedule import (
    Window,
    locked,
    new_id,
    overlaps,
    read_windows,
    upcoming,
    write_windows,
)
from guardd.core.state import ScopeStatus, all_statuses
from guardd.errors import (
    GuardError,
    Unreachable,
    UsageError,
)
from guardd.protocol import status_reply

# A daemon that does not answer this fast is treated as absent for `status`.
STATUS_TIMEOUT = 2.0


# --------------------------------------------------------------------------- core


def run_locks(config: Config) -> dict[str, str]:
    """scope -> run lock path, for every configured scope."""
    return {scope: run_lock_path(config.runtime_dir, scope) for scope in config.scopes}


def local_status(config: Config, *, err: TextIO | None = None) -> dict[str, ScopeStatus]:
    """Every scope's status from the files themselves (no daemon needed), by the one
    rule (switch): own flag or lock_file, fleet mirror in fleet mode, default's. A flag
    whose existence cannot be known counts as on, and is named on ``err``."""
    view = config.run_view()
    warned: set[str] = set()

    def read(path: str) -> FlagInfo | None:
        info = read_flag(path)
        if info is not None and info.doubt is not None and path not in warned:
            warned.add(path)
            (err or sys.stderr).write(
                f"guardctl: cannot tell whether flag {path} exists ({info.doubt}): "
                "counting it as on\n"
            )
        return info

    flags = {scope: read_scope(view, scope, read) for scope in config.scopes}
    return all_statuses(flags, count_jobs(run_locks(config)), config.known_modes(), now=time.time())


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
    statuses = local_status(config, err=err)
    reply = status_reply(node=config.node, version=__version__, statuses=statuses)
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
    try:
        end = at + timedelta(seconds=duration)
        end.astimezone(UTC)  # shown in UTC it must stay within year 9999 too
    except OverflowError:
        raise UsageError("--for: the window would end after the year 9999") from None
    window = Window(
        id=new_id(),
        scope=scope,
        at=format_time(at),
        end=format_time(end),
        reason=reason,
        notice=notice,
        auto_off=auto_off,
    )
    try:
        with locked(config.lock_dir):
            skipped: list[object] = []
            windows = read_windows(config.lock_dir, scope, skipped=skipped)
            clash = overlaps(window, windows)
            if clash is not None:
                raise UsageError(
                    f"overlaps window {clash.id} of {scope} ({clash.at} to {clash.end})"
                )
            write_windows(config.lock_dir, scope, [*windows, window], kept=skipped)
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
                skipped: list[object] = []
                windows = read_windows(config.lock_dir, scope, skipped=skipped)
                kept = [w for w in windows if w.id != window_id]
                if len(kept) != len(windows):
                    write_windows(config.lock_dir, scope, kept, kept=skipped)
                    return next(w for w in windows if w.id == window_id)
    except OSError as err:
        raise GuardError(
            f"cannot change the schedule in {config.lock_dir}: {err.strerror}"
        ) from None
    raise UsageError(f"no scheduled window {window_id!r} (see guardctl schedule --list)")


def actor() -> str:
    """Who is asking: the user behind sudo when there is one, at this host."""
    return f"{_user_name()}@{socket.gethostname()}"


def _user_name() -> str:
    """Who runs guardctl: ``SUDO_USER``, else the login name, else ``uid N`` (a uid
    with no passwd entry, as in a container or under ``setpriv``, must not stop ``on``)."""
    name = os.environ.get("SUDO_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError after
        return f"uid {os.getuid()}"


def turn_on(
    *,
    config: Config,
    scope: str,
    reason: str | None,
    until: datetime | None,
    now: datetime,
    mode: str | None = None,
    note: str | None = None,
) -> tuple[str, FlagInfo | None]:
    """Put ``scope`` on; returns the flag's path and, for an application's lock_file
    that was already there, what it says (left untouched: it is the application's).

    A flag of guardd's own is rewritten atomically. Over one that is already there:
    keeps ``since``, and ``reason``, ``until``, ``mode`` and ``note`` unless given
    again (``by`` is whoever asked last).
    """
    if mode is not None:
        check_mode(config, scope, mode)
    path = config.flag_path(scope)
    gid = group_id(config.control.group)
    try:
        ensure_run_locks(config.runtime_dir, config.scopes, gid=gid)
    except OSError as err:
        raise GuardError(
            f"cannot create the run locks in {config.runtime_dir}: {err.strerror}"
        ) from None
    info = make_flag(reason=reason, until=until, by=actor(), now=now, mode=mode, note=note)
    if config.scopes[scope].lock_file is not None:
        try:
            return path, lockfile.create(path, info)
        except lockfile.SymlinkInPath as err:
            raise GuardError(err.message()) from None
        except OSError as err:
            raise GuardError(f"cannot write {path}: {err.strerror}") from None
    info = renew_flag(read_flag(path), info)
    try:
        make_dir(config.lock_dir, LOCK_DIR_MODE, gid=gid)
        write_flag(path, info)
    except OSError as err:
        raise GuardError(f"cannot write {path}: {err.strerror}{_who_may(config, err)}") from None
    return path, None


def _who_may(config: Config, err: OSError) -> str:
    """On a permission error, who may switch maintenance (the group guardd's package
    gives the flag directory and the socket)."""
    if err.errno not in (errno.EACCES, errno.EPERM) or not config.control.group:
        return ""
    return f" (root and members of the group {config.control.group} may switch maintenance)"


def guardd_absent_warning(config: Config) -> str | None:
    """A warning for ``on``/``off`` when guardd is configured to answer load balancers
    (HTTP or agent listeners) but is not running: the flag changed, yet nothing will
    tell the load balancers. None when guardd answers, or has nothing to answer."""
    listeners = [
        key
        for key, addresses in (
            ("http.listen", config.http.listen),
            ("agent.listen", config.agent.listen),
        )
        if addresses
    ]
    if not listeners:
        return None
    try:
        with ControlClient(config.control.socket, timeout=STATUS_TIMEOUT) as client:
            if client.request({"op": "ping"}).get("ok") is True:
                return None
    except Unreachable:
        pass
    return (
        f"warning: guardd is not running (no answer on {config.control.socket}), "
        f"but {' and '.join(listeners)} {'is' if len(listeners) == 1 else 'are'} "
        "configured: load balancers will not see "
        "this change until guardd runs (systemctl start guardd)"
    )


def audit(action: str, *, scope: str, by: str, note: str | None, reason: str | None) -> None:
    """Record who switched what in the journal or syslog (never on stderr)."""
    from guardd.cli.trace import LOG_NOTICE, record

    message = f"{scope}: maintenance {action} by {by}"
    if reason:
        message += f" (reason: {reason})"
    if note:
        message += f" (note: {note})"
    record(
        "guardctl",
        message,
        {"GUARD_SCOPE": scope, "GUARD_ACTION": action, "GUARD_BY": by, "GUARD_NOTE": note or ""},
        priority=LOG_NOTICE,
        stderr_fallback=False,
    )


def check_mode(config: Config, scope: str, mode: str) -> None:
    """A usage error (exit 2) unless ``scope`` has a mode named ``mode``."""
    modes = config.scopes[scope].modes
    if mode not in modes:
        known = ", ".join(sorted(modes))
        raise UsageError(f"scope {scope} has no mode {mode!r} (its modes: {known})")


def turn_off(*, config: Config, scope: str, force: bool = False) -> bool:
    """End ``scope``'s maintenance; True if its flag was there.

    An application's lock_file is removed only when guardctl wrote it (``by_guardd``)
    or with ``force``; else exit 1 naming it. Never through a symlink.
    """
    path = config.flag_path(scope)
    if config.scopes[scope].lock_file is None:
        try:
            return remove_flag(path)
        except OSError as err:
            raise GuardError(
                f"cannot remove {path}: {err.strerror}{_who_may(config, err)}"
            ) from None
    try:
        removed, info = lockfile.remove(path, force=force)
    except lockfile.SymlinkInPath as err:
        raise GuardError(err.message()) from None
    except OSError as err:
        raise GuardError(f"cannot remove {path}: {err.strerror}") from None
    if not removed and info is not None:
        raise GuardError(
            f"{scope}: {path} was not written by guardctl, it is the application's; "
            "end the maintenance with the application's own command (for Laravel: "
            f"php artisan up), or remove it anyway with: guardctl off {scope} --force"
        )
    return removed


# --------------------------------------------------------------------------- output
