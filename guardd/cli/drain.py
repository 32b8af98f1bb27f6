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


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: ``remaining`` is empty when every job is gone."""

    remaining: tuple[Job, ...]
    signalled: tuple[int, ...] = ()

    @property
    def drained(self) -> bool:
        """True when no guarded job of the scope runs."""
        return not self.remaining


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
            target = signal_target(job.pid)
            group = os.getpgid(target)
            if group == own_group or group <= 1:
                os.kill(target, signum)
            else:
                os.killpg(group, signum)
            sent.append(job.pid)
        except ProcessLookupError:
            continue  # ended on its own meanwhile
        except PermissionError:
            continue  # not ours to signal; it stays in the remaining list
    return sent


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
        remaining = listing()
        if then == "wait":
            return DrainResult(remaining=tuple(remaining))
        signalled: list[int] = []
        if then == "term":
            on_signal("TERM", remaining)
            signalled += _signal_jobs(remaining, signal.SIGTERM)
            if _wait_exclusive(
                fd, deadline=time.monotonic() + grace, on_progress=on_progress, list_jobs=listing
            ):
                return DrainResult(remaining=(), signalled=tuple(signalled))
            remaining = listing()
        on_signal("KILL", remaining)
        signalled += _signal_jobs(remaining, signal.SIGKILL)
        if _wait_exclusive(
            fd, deadline=time.monotonic() + KILL_SETTLE, on_progress=on_progress, list_jobs=listing
        ):
            return DrainResult(remaining=(), signalled=tuple(signalled))
        return DrainResult(remaining=tuple(listing()), signalled=tuple(signalled))
    finally:
        os.close(fd)
