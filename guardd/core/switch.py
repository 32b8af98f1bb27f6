"""THE rule (SPEC "One rule"): which files put a scope in maintenance, and the probe.

A scope is on while any of its files exists: its flag (``<lock_dir>/<scope>.lock``
or its own ``lock_file``), its fleet mirror (``<lock_dir>/<scope>.fleet.lock``, only
when ``fleet.endpoints`` is set), and the same files of ``default``. A file whose
existence cannot be known (unreadable directory, I/O error) counts as present:
fail closed. guardd, guardctl and guard-run all decide here, and nowhere else.

Lean on purpose (os only): guard-run imports it in front of every cron job.
"""

import os

from guardd.core.paths import DEFAULT_SCOPE, fleet_flag_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (guard-run's start)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import TypeVar

    from guardd.core.paths import RunView

    T = TypeVar("T")


class Hit:
    """A file that puts a scope on: it exists, or whether it does cannot be known.

    ``doubt`` is None when the file is there, else why its existence is unknown (the
    system's error text, "Permission denied"); it counts as present either way.
    """

    __slots__ = ("doubt", "path")

    def __init__(self, path: str, doubt: str | None = None) -> None:
        self.path = path
        self.doubt = doubt

    def __repr__(self) -> str:
        return f"Hit({self.path!r}, doubt={self.doubt!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hit) and (self.path, self.doubt) == (other.path, other.doubt)

    def __hash__(self) -> int:
        return hash((self.path, self.doubt))


def mirror_file(view: "RunView", scope: str) -> str | None:
    """Where guardd mirrors ``scope``'s fleet flag; None unless fleet mode is
    configured (a mirror left over from an earlier fleet setup does not count)."""
    return fleet_flag_path(view.lock_dir, scope) if view.fleet_mirrors else None


def own_files(view: "RunView", scope: str) -> tuple[str, ...]:
    """The files of ``scope`` itself: its flag (or ``lock_file``), then its fleet
    mirror in fleet mode. Raises KeyError for a scope that is not configured."""
    flag = view.scope_flags[scope]
    mirror = mirror_file(view, scope)
    return (flag,) if mirror is None else (flag, mirror)


def switch_files(view: "RunView", scope: str) -> tuple[str, ...]:
    """Every file whose presence puts ``scope`` on: its own first, then ``default``'s
    (the order in which status shows a reason: the scope's own flag wins)."""
    files = own_files(view, scope)
    if scope != DEFAULT_SCOPE:
        files += own_files(view, DEFAULT_SCOPE)
    return files


def probe(path: str) -> Hit | None:
    """None when the file does not exist; a Hit when it does or when that cannot be
    known. Never raises.

    lstat, not stat: a dangling symlink is present (``ln -s`` of a flag that is not
    there yet still means on). Only existence counts: no time stamp, size or content
    is looked at, so none of them (an mtime outside years 1-9999, garbage) can hide
    a flag.
    """
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # ENOTDIR: a component is a plain file, so no flag can be below it
    except OSError as err:  # EACCES on a directory, EIO, ELOOP, ENAMETOOLONG, ...
        return Hit(path, err.strerror or str(err))
    except ValueError:  # an embedded NUL: the validated config cannot produce one
        return Hit(path, "invalid path")
    return Hit(path)


def first_on(paths: "Iterable[str]") -> Hit | None:
    """The first of ``paths`` that puts its scope on, None when none does."""
    for path in paths:
        hit = probe(path)
        if hit is not None:
            return hit
    return None


def scope_on(view: "RunView", scope: str) -> Hit | None:
    """Whether ``scope`` is on: the first of its switch files that is, else None."""
    return first_on(switch_files(view, scope))


def in_force(own: "Mapping[str, T | None]", scope: str) -> "tuple[tuple[str, T], ...]":
    """What puts ``scope`` on, given what each scope's own files say (None: nothing):
    (scope it belongs to, what it says) for its own, then for ``default``'s; empty
    when off. guardd and guardctl, which read flag content, combine scopes through
    this, as guard-run does through switch_files; the first is shown, each one's mode
    applies, and one of ``default``'s first means the scope is on "via default"."""
    found = []
    for name in (scope,) if scope == DEFAULT_SCOPE else (scope, DEFAULT_SCOPE):
        flag = own.get(name)
        if flag is not None:
            found.append((name, flag))
    return tuple(found)
