"""Find the live guarded jobs from the run locks: no registration, nothing to go stale.

/proc/locks names the process that *took* a lock. That process may have died while
a child that inherited the descriptor still holds it (a job that forked and exited),
and its pid may since have been reused. So each holder is verified through its file
descriptors, and an orphaned lock is traced to the live processes whose descriptors
carry it (their fdinfo ``lock:`` lines name the lock's original owner).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from guardd.durations import format_timestamp
from guardd.paths import DEFAULT_SCOPE
from guardd.runlock import parse_proc_locks, read_proc_locks


@dataclass(frozen=True)
class Job:
    """One running guarded job."""

    pid: int
    scope: str
    started: str | None
    cmd: tuple[str, ...]

    def to_json_obj(self) -> dict[str, object]:
        """The wire form used by the control socket and ``guardctl jobs --json``."""
        return {
            "pid": self.pid,
            "scope": self.scope,
            "started": self.started,
            "cmd": list(self.cmd),
        }


def _fd_targets(pid: int) -> set[tuple[int, int]]:
    """(dev, inode) of every file ``pid`` has open; empty if it is gone or hidden."""
    targets: set[tuple[int, int]] = set()
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return targets
    for name in names:
        try:
            info = os.stat(f"{base}/{name}")
        except OSError:
            continue
        targets.add((info.st_dev, info.st_ino))
    return targets


def _inheritors(owner: int, inode: int, paths: set[str]) -> set[int]:
    """Live processes holding an inherited descriptor of the lock ``owner`` took."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if target not in paths:
                continue
            try:
                with open(
                    f"/proc/{pid}/fdinfo/{name}", encoding="ascii", errors="replace"
                ) as stream:
                    info = stream.read()
            except OSError:
                continue
            lock_lines = "\n".join(
                line[len("lock:") :] for line in info.splitlines() if line.startswith("lock:")
            )
            if (owner, inode) in parse_proc_locks(lock_lines, {inode}):
                found.add(pid)
    return found


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            # The command name may hold spaces and parentheses: split after the last ')'.
            return int(stream.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def find_holders(run_locks: dict[str, str]) -> dict[str, set[int]]:
    """For each scope (scope -> run lock path), the live pids holding its run lock."""
    by_inode: dict[int, tuple[str, tuple[int, int]]] = {}
    for scope, path in run_locks.items():
        try:
            info = os.stat(path)
        except OSError:
            continue
        by_inode[info.st_ino] = (scope, (info.st_dev, info.st_ino))
    holders: dict[str, set[int]] = {scope: set() for scope in run_locks}
    if not by_inode:
        return holders
    paths = {os.path.realpath(path) for path in run_locks.values()}
    for pid, inode in parse_proc_locks(read_proc_locks(), set(by_inode)):
        scope, target = by_inode[inode]
        if target in _fd_targets(pid):
            holders[scope].add(pid)
            continue
        # The owner is gone (or its pid reused): whoever inherited the lock holds it.
        inheritors = _inheritors(pid, inode, paths)
        holders[scope].update(p for p in inheritors if _parent(p) not in inheritors)
    return holders


def count_jobs(run_locks: dict[str, str]) -> dict[str, int]:
    """Number of live jobs per scope (cheap: no per-process details)."""
    return {scope: len(pids) for scope, pids in find_holders(run_locks).items()}


def describe_jobs(holders: dict[str, set[int]]) -> list[Job]:
    """Turn holders into Job records, each labelled with its own scope.

    Every job also holds ``default``'s run lock; it is listed under its named scope,
    and under ``default`` only when that is the only one it holds.
    """
    import psutil

    scopes_of: dict[int, list[str]] = {}
    for scope, pids in holders.items():
        for pid in pids:
            scopes_of.setdefault(pid, []).append(scope)
    jobs: list[Job] = []
    for pid, scopes in scopes_of.items():
        named = sorted(s for s in scopes if s != DEFAULT_SCOPE) or [DEFAULT_SCOPE]
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                started = format_timestamp(process.create_time())
                cmd = tuple(process.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            started, cmd = None, ()
        jobs.extend(Job(pid=pid, scope=scope, started=started, cmd=cmd) for scope in named)
    jobs.sort(key=lambda job: (job.scope, job.started or "", job.pid))
    return jobs


def list_jobs(run_locks: dict[str, str], scope: str | None = None) -> list[Job]:
    """Live jobs of ``scope`` (all of them for None or ``default``)."""
    holders = find_holders(run_locks)
    jobs = describe_jobs(holders)
    if scope is None or scope == DEFAULT_SCOPE:
        return jobs
    return [job for job in jobs if job.scope == scope]
