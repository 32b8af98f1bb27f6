"""Draining: wait until no guarded job of a scope runs, optionally signalling stragglers.

The flag is already written when this runs; taking the run lock exclusively proves
no job holds it, and any job that starts later reads the flag and does not run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from guardd.core.choices import Then
from guardd.core.jobs import Job, describe_jobs, find_holders, signal_target
from guardd.core.paths import DEFAULT_SCOPE
from guardd.core.runlock import open_run_lock, try_exclusive, unlock

# How often the exclusive lock is tried: one non-blocking flock call, so the end of
# the last job is noticed within this much.
POLL_INTERVAL = 0.01
# How often the jobs still running are listed for the progress display: a few times
# a second, but listing reads /proc (tens of ms for a thousand jobs), so never more
# than LISTING_SHARE of the time.
LISTING_INTERVAL = 0.25
LISTING_SHARE = 0.2
# After SIGKILL, processes vanish within milliseconds; this only bounds a hang
# (a process stuck in uninterruptible sleep on a dead NFS server, say).
KILL_SETTLE = 5.0
# At the end of waiting: how many times the holders are listed while the lock is held
# and no listing names one.
RELIST_TRIES = 5


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: ``remaining`` is empty when every job is gone."""

    remaining: tuple[Job, ...]
    signalled: tuple[int, ...] = ()
    # The run lock was still held at the end, whether or not a listing found who
    # holds it (one look at /proc can miss a process that forks and exits meanwhile).
    held: bool = False

    @property
    def drained(self) -> bool:
        """True when no guarded job of the scope runs: the exclusive lock was had."""
        return not self.remaining and not self.held


def scope_jobs(run_locks: dict[str, str], scope: str) -> list[Job]:
    """The live jobs holding ``scope``'s run lock (all of them for ``default``)."""
    holders = find_holders(run_locks)
    pids = holders.get(scope, set())
    # Only the scope's own holders are described (each with every scope it holds, so
    # that it gets its usual label); the other scopes' jobs cost nothing.
    jobs = describe_jobs({name: held & pids for name, held in holders.items()})
    if scope != DEFAULT_SCOPE:
        jobs = [job for job in jobs if job.scope == scope]
    return jobs


def _wait_exclusive(
    fd: int,
    *,
    deadline: float | None,
    on_progress: Callable[[list[Job]], None],
    list_jobs: Callable[[], list[Job]],
) -> bool:
    """Poll for the exclusive lock until ``deadline``; report the jobs as they change."""
    last: tuple[int, ...] | None = None
    next_listing = 0.0
    while True:
        if try_exclusive(fd):
            unlock(fd)
            return True
        now = time.monotonic()
        if now >= next_listing:
            jobs = list_jobs()
            key = tuple(job.pid for job in jobs)
            if key != last:
                on_progress(jobs)
                last = key
            listed = time.monotonic()
            next_listing = listed + max(LISTING_INTERVAL, (listed - now) / LISTING_SHARE)
            if deadline is None or listed < deadline:
                continue  # the listing took a while: try the lock again at once
        if deadline is not None and now >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _signal_jobs(jobs: list[Job], signum: int) -> list[int]:
    """Signal each job's process group (just the process if it shares ours); for a
    guard-run with its command as its child, the command's group (see signal_target)."""
    own_group = os.getpgrp()
    sent = []
    for job in jobs:
        try:
            target, whole_group = signal_target(job.pid)
            group = os.getpgid(target)
            if not whole_group or group == own_group or group <= 1:
                os.kill(target, signum)
            else:
                os.killpg(group, signum)
            sent.append(job.pid)
        except ProcessLookupError:
            continue  # ended on its own meanwhile
        except PermissionError:
            continue  # not ours to signal; it stays in the remaining list
    return sent


def _still_running(fd: int, listing: Callable[[], list[Job]]) -> tuple[Job, ...] | None:
    """The jobs still holding the lock once waiting has run out; None when the lock can
    be had after all. The lock decides: an empty listing while it is held (a job that
    forks and exits can slip through one look at /proc) is looked at again a few times,
    and stays "held" (no job named) rather than "drained"."""
    for _ in range(RELIST_TRIES):
        if try_exclusive(fd):
            unlock(fd)
            return None
        jobs = listing()
        if jobs:
            return tuple(jobs)
        time.sleep(0.02)
    return ()


def drain(
    *,
    run_lock: str,
    run_locks: dict[str, str],
    scope: str,
    timeout: float | None,
    then: Then,
    grace: float,
    on_progress: Callable[[list[Job]], None],
    on_signal: Callable[[str, list[Job]], None],
) -> DrainResult:
    """Wait until no job holds ``run_lock``; at ``timeout``, act as ``then`` says."""
    fd = open_run_lock(run_lock, create=True)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout

        def listing() -> list[Job]:
            return scope_jobs(run_locks, scope)

        if _wait_exclusive(fd, deadline=deadline, on_progress=on_progress, list_jobs=listing):
            return DrainResult(remaining=())
        remaining = _still_running(fd, listing)
        if remaining is None:
            return DrainResult(remaining=())
        if then == "wait":
            return DrainResult(remaining=remaining, held=True)
        signalled: list[int] = []
        if then == "term":
            on_signal("TERM", list(remaining))
            signalled += _signal_jobs(list(remaining), signal.SIGTERM)
            if _wait_exclusive(
                fd, deadline=time.monotonic() + grace, on_progress=on_progress, list_jobs=listing
            ):
                return DrainResult(remaining=(), signalled=tuple(signalled))
            remaining = _still_running(fd, listing)
            if remaining is None:
                return DrainResult(remaining=(), signalled=tuple(signalled))
        on_signal("KILL", list(remaining))
        signalled += _signal_jobs(list(remaining), signal.SIGKILL)
        if _wait_exclusive(
            fd, deadline=time.monotonic() + KILL_SETTLE, on_progress=on_progress, list_jobs=listing
        ):
            return DrainResult(remaining=(), signalled=tuple(signalled))
        remaining = _still_running(fd, listing)
        if remaining is None:
            return DrainResult(remaining=(), signalled=tuple(signalled))
        return DrainResult(remaining=remaining, signalled=tuple(signalled), held=True)
    finally:
        os.close(fd)
