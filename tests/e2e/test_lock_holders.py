"""Any local user can open a run lock (guard-run must, for every user's cron jobs), so
any user can hold one: guard-run's error and guardctl's drain view name the holder
(pid, user, command) so that an operator can act."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guardd.core.runlock import parse_proc_locks, read_proc_locks
from tests.helpers import require_tool, wait_until
from tests.run_helpers import Site, as_nobody, kill_session, open_to_nobody


def _hold(site: Site, mode: str) -> subprocess.Popen[str]:
    """nobody holds ``default.run`` (``-s`` shared, ``-x`` exclusive) with flock(1)."""
    flock = require_tool("flock")
    site.runtime_dir.mkdir(parents=True, exist_ok=True)
    site.run_lock("default").touch()
    site.run_lock("default").chmod(0o644)
    open_to_nobody(site.run_lock("default"))
    proc = subprocess.Popen(
        as_nobody([flock, mode, str(site.run_lock("default")), "sleep", "60"]),
        text=True,
        start_new_session=True,
    )
    inode = site.run_lock("default").stat().st_ino
    wait_until(lambda: parse_proc_locks(read_proc_locks(), {inode}), what="nobody to hold the lock")
    return proc


@pytest.mark.parametrize("scope", ["default", "shop"])
def test_guard_run_names_who_holds_a_run_lock_exclusively(tmp_short: Path, scope: str) -> None:
    """A run lock held exclusively by another user's process: after 10 s guard-run
    exits 75 with one line naming the lock, the holder's pid, user and command."""
    site = Site(tmp_short)
    holder = _hold(site, "-x")
    try:
        result = site.run("--scope", scope, "--", "true", timeout=60)
    finally:
        kill_session(holder)
    assert result.returncode == 75
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(site.run_lock("default")) in result.stderr
    assert f"pid {holder.pid} (user nobody: " in result.stderr
    assert "sleep 60" in result.stderr


def test_drain_view_names_the_user_holding_a_run_lock(tmp_short: Path) -> None:
    """``guardctl on --wait`` held up by another user's shared hold on default.run
    lists that process with its pid, user and command, and exits 3 at --timeout."""
    site = Site(tmp_short)
    holder = _hold(site, "-s")
    try:
        drain = site.ctl("on", "default", "--wait", "--timeout", "1")
    finally:
        kill_session(holder)
    assert drain.returncode == 3, drain.stdout + drain.stderr
    lines = [line for line in drain.stdout.splitlines() if str(holder.pid) in line]
    assert lines and all("nobody" in line and "sleep 60" in line for line in lines), drain.stdout
