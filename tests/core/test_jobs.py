"""Job discovery from the run locks: only live processes that really hold a lock, found
with no registration, also when the process that took the lock is gone."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from guardd.core.jobs import count_jobs, describe_jobs, find_holders, list_jobs, signal_target
from tests.helpers import wait_until
from tests.run_helpers import NOBODY, Site, kill_session, open_to_nobody


@pytest.fixture
def site(tmp_short: Path) -> Site:
    """A config with scopes default and shop, no daemon."""
    return Site(tmp_short)


def _locks(site: Site) -> dict[str, str]:
    return {scope: str(site.run_lock(scope)) for scope in ("default", "shop")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_no_jobs_and_missing_locks(site: Site) -> None:
    """No holder, or no lock file at all: every scope maps to an empty set."""
    assert find_holders(_locks(site)) == {"default": set(), "shop": set()}
    site.runtime_dir.mkdir()
    site.run_lock("default").touch()
    assert count_jobs(_locks(site)) == {"default": 0, "shop": 0}


def test_guard_run_job_listed_under_its_scope(site: Site) -> None:
    """A guard-run job is found by its pid, listed once under its own scope with its
    command line and start time."""
    proc = site.popen("--scope", "shop", "--", "sleep", "30")
    try:
        # The command is guard-run's child, listed under guard-run's pid (which
        # forwards signals to it) with its own command line, once it has exec'd.
        children = wait_until(
            lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split(),
            what="the command",
        )
        wait_until(lambda: Path(f"/proc/{children[0]}/comm").read_text() == "sleep\n", what="exec")
        holders = wait_until(
            lambda: (h := find_holders(_locks(site)))["shop"] and h, what="the job's locks"
        )
        assert holders == {"default": {proc.pid}, "shop": {proc.pid}}
        (job,) = describe_jobs(holders)
        assert (job.pid, job.scope, job.cmd) == (proc.pid, "shop", ("sleep", "30"))
        assert job.started is not None and job.started.endswith("Z")
        assert [j.pid for j in list_jobs(_locks(site), "shop")] == [proc.pid]
        assert [j.pid for j in list_jobs(_locks(site), "default")] == [proc.pid]
    finally:
        kill_session(proc)
    assert find_holders(_locks(site)) == {"default": set(), "shop": set()}


def test_job_that_forked_and_exited_is_found_as_its_child(site: Site) -> None:
    """A job whose first process exited leaves its lock with the child; the child is
    listed and the dead pid is not."""
    result = site.run(
        "--scope", "shop", "--", "sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"
    )
    child = int(result.stdout)
    try:
        holders = find_holders(_locks(site))
        assert holders == {"default": {child}, "shop": {child}}
        assert [j.pid for j in list_jobs(_locks(site), "shop")] == [child]
    finally:
        os.kill(child, signal.SIGKILL)
    wait_until(lambda: not find_holders(_locks(site))["shop"], what="lock freed")


def test_job_killed_mid_run_leaves_no_holder(site: Site) -> None:
    """A job whose process group is killed with SIGKILL mid-run (what a drain's --then
    kill does, through signal_target) holds nothing once it is gone; guard-run, listed
    for it, reports 128+9."""
    proc = site.popen("--scope", "shop", "--", "sleep", "30")
    wait_until(lambda: find_holders(_locks(site))["shop"] == {proc.pid}, what="job running")
    target, whole_group = wait_until(
        lambda: (found := signal_target(proc.pid))[0] != proc.pid and found,
        what="the command to be started",
    )
    assert whole_group
    os.killpg(os.getpgid(target), signal.SIGKILL)
    assert proc.wait(timeout=10) == 137
    proc.communicate()
    wait_until(
        lambda: find_holders(_locks(site)) == {"default": set(), "shop": set()},
        what="no holder once the job is gone",
    )


def test_supervisor_sigkilled_leaves_lock_with_live_job_only(site: Site) -> None:
    """guard-run --interrupt killed with SIGKILL: the job it started still holds the
    locks (it inherited them), and is the only holder listed; none once it ends."""
    # No pipes: the orphaned job would keep them open, and reading them would wait for it.
    proc = site.popen(
        "--interrupt",
        "--scope",
        "shop",
        "--",
        "sleep",
        "30",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holders = wait_until(lambda: find_holders(_locks(site))["shop"], what="supervisor holds")
    assert holders == {proc.pid}
    child = int(
        wait_until(
            lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split(),
            what="child started",
        )[0]
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert _pid_alive(child)
        assert find_holders(_locks(site)) == {"default": {child}, "shop": {child}}
        assert [(j.pid, j.cmd) for j in list_jobs(_locks(site))] == [(child, ("sleep", "30"))]
    finally:
        os.kill(child, signal.SIGKILL)
    wait_until(
        lambda: find_holders(_locks(site)) == {"default": set(), "shop": set()},
        what="no holder after the job died",
    )


def test_another_users_holder_is_listed_when_its_descriptors_are_hidden(site: Site) -> None:
    """An unprivileged lister cannot look into another user's descriptors: the holder
    /proc/locks names is still listed (a hanging drain must not look empty)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to look as another user")
    proc = site.popen("--scope", "shop", "--", "sleep", "30")
    try:
        wait_until(lambda: find_holders(_locks(site))["shop"], what="the job")
        open_to_nobody(site.run_lock("shop"), site.run_lock("default"))
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover -- the child; its answer is checked below
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(NOBODY.pw_gid)
                os.setuid(NOBODY.pw_uid)
                found = find_holders(_locks(site))
                os.write(write_end, repr(sorted(found["shop"])).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            answer = stream.read().decode()
        os.waitpid(child, 0)
        assert answer == repr([proc.pid])
    finally:
        kill_session(proc)
