"""The maintenance schedule, carried out: due windows start and end here.

guardd's refresher calls ``run_schedule`` in a worker thread whenever a schedule
file changes or a window's next notice, start or end comes due; the windows it
returns are what the status reply and the page announce.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from guardd.config.model import Config
from guardd.core import lockfile
from guardd.core.flag import FlagInfo, read_flag, remove_flag, write_flag
from guardd.core.schedule import Window, due_steps, locked, mark, read_windows, write_windows

log = logging.getLogger("guardd")


def run_schedule(config: Config) -> tuple[dict[str, list[Window]], set[str]]:
    """Carry out due windows (worker thread); return every scope's windows, and the
    scopes whose windows had steps carried out.

    Under the schedule mutex, so that guardctl's edits and this never interleave.
    """
    now = datetime.now(UTC)
    result: dict[str, list[Window]] = {scope: [] for scope in config.scopes}
    acted: set[str] = set()
    if not os.path.isdir(config.lock_dir):
        return result, acted  # deleted: no schedule files, and no mutex to create there
    with locked(config.lock_dir, create_dir=False):
        for scope in config.scopes:
            skipped: list[object] = []  # bad windows: logged once, kept in the file
            windows = read_windows(config.lock_dir, scope, skipped=skipped)
            steps = due_steps(windows, now)
            for step in steps:
                done = carry_out(config, step.action, step.window)
                windows = [done if w.id == done.id else w for w in windows]
            if steps:
                write_windows(config.lock_dir, scope, windows, kept=skipped)
                acted.add(scope)
            result[scope] = windows
    return result, acted


def carry_out(config: Config, action: str, window: Window) -> Window:
    """One step of a window: ``start`` writes the flag (unless one is there), the end
    removes it if the window wrote it and ``auto_off`` is set; returns the window marked."""
    path = config.flag_path(window.scope)
    if action == "start":
        if read_flag(path) is not None:
            log.info(
                "window %s of %s starts; the flag is already there, left as is",
                window.id,
                window.scope,
            )
            return mark(window, started=True)
        info = FlagInfo(reason=window.reason, until=window.end, since=window.at, by=window.marker)
        if config.scopes[window.scope].lock_file is None:
            write_flag(path, info)
        elif lockfile.create(path, info) is not None:
            return mark(window, started=True)  # the application's, made meanwhile
        log.info(
            "window %s of %s started: maintenance on until %s",
            window.id,
            window.scope,
            window.end,
        )
        return mark(window, started=True, wrote_flag=True)
    if window.auto_off and window.wrote_flag:
        current = read_flag(path)
        if current is not None and current.by == window.marker:
            if config.scopes[window.scope].lock_file is None:
                remove_flag(path)
            else:
                lockfile.remove(path, force=False)  # ours: marked by_guardd
            log.info("window %s of %s ended: maintenance off (auto-off)", window.id, window.scope)
        else:
            log.info(
                "window %s of %s ended; the flag was changed or removed by an operator, left as is",
                window.id,
                window.scope,
            )
    elif not window.started:
        log.warning(
            "window %s of %s was missed entirely (guardd was not running); "
            "not entering maintenance after its end",
            window.id,
            window.scope,
        )
    else:
        log.info(
            "window %s of %s reached its end; maintenance stays on until an "
            "operator ends it (no auto-off)",
            window.id,
            window.scope,
        )
    return mark(window, done=True)
