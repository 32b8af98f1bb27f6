"""The keeper: holds a job's run locks until no process of the job's group is left.

A guarded job is its whole process tree (SPEC), but a child that closes its inherited
descriptors (Python's ``subprocess`` does by default, so does Java) drops the locks:
once the job's first process exits, nothing would hold them while the child runs on.
So guard-run makes the job's process group its own and forks a keeper before it execs
the command: a small process that keeps the lock descriptors and nothing else, waits
for the command to exit (a pidfd: no polling), then for every other process of the
job's group (a pidfd on each, looked for again whenever one ends), and exits. The
drain's exclusive flock therefore waits for the whole group, for any user and with no
daemon; job listings show the group's processes in the keeper's place.

It is started through a middle process that exits at once, so the command does not
inherit an unexpected child (a program that waits for all its children must not wait
for the keeper, which waits for it). It leaves the job's group, so that signals to the
group (a terminal's, a drain's ``--then term``) pass it by and one kill(2) tells when
the group is empty. Lean: os only at import (guard-run's start-up).
"""

import errno
import os

from guardd.core.procfs import KEEPER_COMM, group_members, in_group

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (guard-run's start)
if TYPE_CHECKING:
    from collections.abc import Sequence

# Signals a keeper ignores (a service stop signals every process of its cgroup): it
# leaves when the job's group has gone, and only SIGKILL ends it sooner.
_IGNORED = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGTSTP", "SIGTTIN", "SIGTTOU",
            "SIGUSR1", "SIGUSR2", "SIGPIPE")  # fmt: skip
# At most this many members are watched at once; any one ending means a fresh look.
MAX_WATCHED = 256
# After the command exits: how long to wait for its caller to reap it before reading
# /proc to find out whether the rest of the group has gone (~60 ms in all).
REAP_PAUSES = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)


def job_group() -> int | None:
    """Make this process the leader of its own process group where that is safe, and
    return the job's group; None when the job cannot have a group of its own.

    Already a leader (a shell's job, a systemd service, ``setsid``): that group. In
    the foreground group of a terminal (a script run by hand): None, because moving
    would take the terminal and Ctrl-C away from the job. Else (cron, a program's
    subprocess): a new group, so that the job's processes can be told from its caller's.
    """
    pid = os.getpid()
    group = os.getpgrp()
    if group == pid:
        return group
    for fd in (0, 1, 2):
        try:
            if os.tcgetpgrp(fd) == group:
                return None
        except OSError:
            continue  # not a terminal, or not ours
    try:
        os.setpgid(0, 0)
    except OSError:
        return None
    return pid


def start_keeper(lock_fds: "Sequence[int]", group: int) -> None:
    """Fork a keeper (through a middle process) that holds ``lock_fds`` while a process
    of ``group`` other than itself lives. Called just before the command is exec'd;
    if a fork fails, the job runs without one (as before: its own descriptors only)."""
    job = os.getpid()
    try:
        watch = os.pidfd_open(job)
    except (AttributeError, OSError):
        watch = -1  # no pidfds (Linux < 5.3): the keeper polls
    try:
        middle = os.fork()
    except OSError:
        middle = -1
    if middle == 0:  # pragma: no cover -- seen from outside: the keeper's effects
        try:
            _name_self()  # before the fork: the keeper is never seen unnamed
            if os.fork() == 0:
                _keep(lock_fds, watch, job, group)
        finally:
            os._exit(0)
    if watch >= 0:
        os.close(watch)
    if middle > 0:
        try:
            os.waitpid(middle, 0)  # it exits at once; the command must not inherit it
        except ChildProcessError:  # pragma: no cover -- reaped by a SIGCHLD handler
            pass


def _keep(lock_fds: "Sequence[int]", watch: int, job: int, group: int) -> None:  # pragma: no cover
    """The keeper's life: quiet, detached from the job's stdio and directory, holding
    only the locks; returns (and its caller exits) once the job's group is empty."""
    import _signal

    for name in _IGNORED:
        _signal.signal(getattr(_signal, name), _signal.SIG_IGN)
    keep = {*lock_fds, watch}
    try:
        null = os.open("/dev/null", os.O_RDWR)
    except OSError:
        null = -1
    for fd in (0, 1, 2):
        # A keeper holding cron's output pipe would keep cron waiting for the job.
        if null >= 0:
            os.dup2(null, fd)
        else:
            _close(fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            _close(fd)
    try:
        os.chdir("/")  # keep no file system busy
    except OSError:
        pass
    me = os.getpid()
    try:
        # Out of the job's group: one kill(2) then tells when it is empty.
        os.setpgid(0, 0)
    except OSError:
        pass
    if watch >= 0:
        _wait_readable([watch])
        os.close(watch)
    else:
        while in_group(job, group):
            _sleep(0.25)
    # The command is a zombie until its caller reaps it (at once, as a rule).
    for pause in REAP_PAUSES:
        if _group_gone(group):
            return
        _sleep(pause)
    while not _group_gone(group):
        try:
            members = group_members({group}, exclude=me)
        except OSError:  # out of descriptors: cannot tell, so keep holding
            _sleep(1.0)
            continue
        if not members:
            return
        try:
            _wait_for_one(sorted(members), group)
        except OSError:
            _sleep(1.0)


def _group_gone(group: int) -> bool:
    """True when process group ``group`` has no process left, not even a zombie."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: someone else's process is in it
    return False


def _name_self() -> None:  # pragma: no cover
    """Call this process KEEPER_COMM (/proc/<pid>/comm, which a fork inherits)."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, KEEPER_COMM.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _wait_for_one(members: list[int], group: int) -> None:  # pragma: no cover
    """Block until one of ``members`` ends; return at once when one is gone already
    (the caller looks again). New processes of the group are forked by members, so a
    fresh look after each end finds them before the group can be empty."""
    fds = []
    try:
        for pid in members[:MAX_WATCHED]:
            try:
                fds.append(os.pidfd_open(pid))
            except OSError as err:
                if err.errno == errno.ENOSYS:
                    _sleep(0.25)  # no pidfds (Linux < 5.3): poll
                return
            if not in_group(pid, group):
                return  # ended (its pid maybe reused) between the listing and the pidfd
        _wait_readable(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _wait_readable(fds: list[int]) -> None:  # pragma: no cover
    """Block until one of the pidfds ``fds`` is readable (its process has exited)."""
    import select

    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll()


def _sleep(seconds: float) -> None:  # pragma: no cover
    import time

    time.sleep(seconds)


def _close(fd: int) -> None:  # pragma: no cover
    try:
        os.close(fd)
    except OSError:
        pass
