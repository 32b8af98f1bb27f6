"""Find the live guarded jobs from the run locks: no registration, nothing to go stale.

/proc/locks names the process that *took* a lock. That process may have died while
a child that inherited the descriptor still holds it (a job that forked and exited),
and its pid may since have been reused. So each holder is verified through its file
descriptors, and an orphaned lock is traced to the live processes whose descriptors
carry it (their fdinfo ``lock:`` lines name the lock's original owner). One of those
may be guard-run's keeper (guardd.cli.keeper), which holds the locks while the job's
process group lives: it stands for the processes of its group.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from guardd.core.durations import format_timestamp
from guardd.core.paths import DEFAULT_SCOPE
from guardd.core.procfs import (
    START_TIME,
    group_members,
    read_proc_file,
    split_stat,
    stat_fields,
)
from guardd.core.runlock import (
    KEEPER_COMM,
    LOCK_FD_FLOOR,
    RUNNER_COMM,
    parse_proc_locks,
    read_proc_locks,
)


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


# Where guard-run puts its lock descriptors (it moves them up there so that a job's
# own ``exec 3>file`` cannot close them): a job's locks are usually found at these
# numbers without listing its descriptors at all.
LIKELY_LOCK_FDS = (LOCK_FD_FLOOR, LOCK_FD_FLOOR + 1)


class _OpenFiles:
    """The files one process has open, looked at lazily: guard-run's lock descriptors
    first, then (only when those miss) every descriptor, highest first.

    A listing asks each process once per run lock it holds (a thousand jobs hold two
    locks each), so this is the loop that has to be cheap.
    """

    __slots__ = ("hidden", "pending", "pid", "seen", "tried")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: set[tuple[int, int]] = set()
        self.tried: set[int] = set()
        self.pending: list[int] | None = None  # descriptors not looked at yet, once listed
        self.hidden = False  # its descriptors are not ours to look at (another user's)

    def _look(self, fd: int) -> tuple[int, int] | None:
        self.tried.add(fd)
        try:
            info = os.stat(f"/proc/{self.pid}/fd/{fd}")
        except PermissionError:
            self.hidden = True
            return None
        except OSError:
            return None  # no such descriptor, or the process is gone
        found = (info.st_dev, info.st_ino)
        self.seen.add(found)
        return found

    def has(self, target: tuple[int, int]) -> bool:
        """True when one of the process's descriptors is ``target`` (dev, inode)."""
        if target in self.seen:
            return True
        for fd in LIKELY_LOCK_FDS:
            if fd not in self.tried and self._look(fd) == target:
                return True
        if self.pending is None:
            try:
                names = os.listdir(f"/proc/{self.pid}/fd")
            except PermissionError:
                self.hidden = True
                names = []
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    raise  # out of descriptors: proves nothing either way
                names = []  # gone
            self.pending = sorted(int(n) for n in names if n.isdigit() and int(n) not in self.tried)
        while self.pending:
            if self._look(self.pending.pop()) == target:
                return True
        return False


def _inheritors(orphans: set[tuple[int, int]], paths: set[str]) -> dict[tuple[int, int], set[int]]:
    """Live processes holding an inherited descriptor of each orphaned lock.

    ``orphans`` are (owner pid, inode) of locks whose owner is gone; one pass over
    /proc serves them all, however many there are.
    """
    found: dict[tuple[int, int], set[int]] = {orphan: set() for orphan in orphans}
    inodes = {inode for _, inode in orphans}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):
                raise
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
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                continue
            lock_lines = "\n".join(
                line[len("lock:") :] for line in info.splitlines() if line.startswith("lock:")
            )
            for owner_inode in parse_proc_locks(lock_lines, inodes):
                if owner_inode in found:
                    found[owner_inode].add(pid)
    return found


def _alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[1] not in ("Z", "X", "x")


def _parent(pid: int) -> int:
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0
    return fields[2] if fields is not None else 0


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
    open_files: dict[int, _OpenFiles] = {}
    orphans: set[tuple[int, int]] = set()
    for pid, inode in parse_proc_locks(read_proc_locks(), set(by_inode)):
        scope, target = by_inode[inode]
        files = open_files.get(pid)
        if files is None:
            files = open_files[pid] = _OpenFiles(pid)
        if files.has(target) or (files.hidden and _alive(pid)):
            # Another user's process we may not look into: /proc/locks says it took
            # the lock, and it lives, so it is shown (an unlisted holder would leave
            # a hanging drain unexplained).
            holders[scope].add(pid)
        else:
            # The owner is gone (or its pid reused): whoever inherited the lock holds it.
            orphans.add((pid, inode))
    if orphans:
        paths = {os.path.realpath(path) for path in run_locks.values()}
        found = _inheritors(orphans, paths)
        kept = _kept_groups(found)
        for (_, inode), inheritors in found.items():
            scope = by_inode[inode][0]
            holders[scope].update(_topmost(inheritors, kept))
    return holders


def _kept_groups(found: dict[tuple[int, int], set[int]]) -> dict[int, dict[int, int]]:
    """For each keeper among the inheritors (guard-run's process holding a job's locks
    while the job's process group lives), the live processes of that group: pid ->
    parent. These are the job now, children that closed their descriptors included.

    A keeper joins the job's group (guardd.cli.keeper), so its own group is the one
    it stands for.
    """
    groups: dict[int, int] = {}
    for inheritors in found.values():
        for pid in inheritors:
            fields = stat_fields(pid)
            if fields is not None and fields[0] == KEEPER_COMM:
                groups[pid] = fields[3]
    if not groups:
        return {}
    members = group_members(set(groups.values()))
    return {
        keeper: {
            pid: parent
            for pid, (comm, parent, member_group) in members.items()
            if member_group == group and comm != KEEPER_COMM
        }
        for keeper, group in groups.items()
    }


def _topmost(inheritors: set[int], kept: dict[int, dict[int, int]]) -> set[int]:
    """The jobs among the processes holding an orphaned lock: keepers stand for their
    groups' processes, and a process whose parent is listed too is part of that job."""
    parents: dict[int, int] = {}
    for pid in inheritors:
        if pid in kept:
            parents.update(kept[pid])
        else:
            parents[pid] = _parent(pid)
    return {pid for pid, parent in parents.items() if parent not in parents}


def count_jobs(run_locks: dict[str, str]) -> dict[str, int]:
    """Number of live jobs per scope (cheap: no per-process details)."""
    return {scope: len(pids) for scope, pids in find_holders(run_locks).items()}


def _boot_time() -> float:
    """When the system booted (Unix seconds), from /proc/stat; 0.0 if unknown."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0


def _split_cmdline(data: bytes) -> tuple[str, ...]:
    """/proc/<pid>/cmdline as arguments (NUL-separated; a process that rewrote its
    title may use spaces instead), decoded like file names."""
    if not data:
        return ()
    sep = b"\0" if data.endswith(b"\0") else b" "
    if data.endswith(sep):
        data = data[:-1]
    args = data.split(sep)
    if sep == b"\0" and len(args) == 1 and b" " in data:
        args = data.split(b" ")
    return tuple(os.fsdecode(arg) for arg in args)


def _only_child(pid: int) -> int | None:
    """The one child of ``pid`` (a guard-run's command); None for none, several, or
    when it cannot be read."""
    try:
        children = read_proc_file(f"/proc/{pid}/task/{pid}/children").split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def _command_of_runner(pid: int) -> bytes:
    """The command line of the command guard-run ``pid`` runs as its child (b"" when
    there is none, or it cannot be read)."""
    child = _only_child(pid)
    if child is None:
        return b""
    try:
        return read_proc_file(f"/proc/{child}/cmdline")
    except OSError:
        return b""


def signal_target(pid: int) -> tuple[int, bool]:
    """Where a signal for the job listed as ``pid`` goes: (process, whole group?).

    A guard-run running its command as a child stands for that command: the command's
    process group is signalled (SIGKILL cannot be forwarded; any other signal then
    arrives once), following nested guard-runs. A guard-run with no command (a moment
    before it starts it) is signalled alone: its group is its caller's. Anything else:
    ``pid``'s group.
    """
    target = pid
    for _ in range(16):  # nested guard-runs; bounded
        fields = stat_fields(target)
        if fields is None or fields[0] != RUNNER_COMM:
            return target, True
        child = _only_child(target)
        if child is None:
            return target, False
        target = child
    return target, True


def _process_details(
    pid: int, boot_time: float, ticks: int
) -> tuple[str | None, tuple[str, ...]] | None:
    """(start time, command line) of a live process; None when it is gone or a zombie
    (neither holds a lock); (None, ()) when its details are hidden from us."""
    try:
        stat = read_proc_file(f"/proc/{pid}/stat")
        cmdline = read_proc_file(f"/proc/{pid}/cmdline")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None, ()
    fields = split_stat(stat)
    if fields[:1] == [b"Z"]:
        return None
    if stat.partition(b"(")[2].rpartition(b")")[0] == RUNNER_COMM.encode():
        cmdline = _command_of_runner(pid) or cmdline
    try:
        started = (
            format_timestamp(boot_time + int(fields[START_TIME]) / ticks) if boot_time else None
        )
    except (IndexError, ValueError):
        started = None
    return started, _split_cmdline(cmdline)


def describe_jobs(holders: dict[str, set[int]]) -> list[Job]:
    """Turn holders into Job records, each labelled with its own scope.

    Every job also holds ``default``'s run lock; it is listed under its named scope,
    and under ``default`` only when that is the only one it holds. Details come
    straight from /proc (two small reads per job).
    """
    scopes_of: dict[int, list[str]] = {}
    for scope, pids in holders.items():
        for pid in pids:
            scopes_of.setdefault(pid, []).append(scope)
    if not scopes_of:
        return []
    boot_time = _boot_time()
    ticks = os.sysconf("SC_CLK_TCK")
    jobs: list[Job] = []
    for pid, scopes in scopes_of.items():
        named = sorted(s for s in scopes if s != DEFAULT_SCOPE) or [DEFAULT_SCOPE]
        details = _process_details(pid, boot_time, ticks)
        if details is None:
            continue
        started, cmd = details
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
