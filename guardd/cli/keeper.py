"""The keeper: holds a job's run locks until no process of the job's group is left.

A guarded job is its whole process tree (SPEC), but a child that closes its inherited
descriptors (Python's ``subprocess`` does by default, so does Java) drops the locks:
once the job's command exits, nothing would hold them while that child runs on. So
when guard-run's command (its child, leading the job's process group: see
guardd.cli.supervise) exits and left processes in that group, guard-run forks a keeper
and returns: a small process that keeps the lock descriptors and nothing else, joins
the job's group (so that listings find the group through it, and a drain's signal to
the group passes it by: it ignores every signal that would end it but SIGKILL and the
faults a process causes itself), waits for every other process of
the group (a pidfd on each, looked for again whenever one ends), and exits. The
drain's exclusive flock therefore waits for the whole group, for any user and with no
daemon; job listings show the group's processes in the keeper's place.

Started only then, the keeper costs the jobs that leave nothing behind nothing.
Lean: os only at import.
"""

import errno
import os

from guardd.core.procfs import in_group, settled_members
from guardd.core.runlock import KEEPER_COMM, set_comm

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (guard-run's start)
if TYPE_CHECKING:
    from collections.abc import Sequence

# Signals a keeper ignores (a service stop signals every process of its cgroup): it
# leaves when the job's group has gone, and only SIGKILL ends it sooner.
# Every signal whose default ends or stops a process, but for the faults a process
# causes itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT); the
# real-time signals are added from _signal.SIGRTMIN..SIGRTMAX.
_IGNORED = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGTSTP", "SIGTTIN", "SIGTTOU",
            "SIGUSR1", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU",
            "SIGXFSZ", "SIGIO", "SIGPWR", "SIGSTKFLT")  # fmt: skip
# At most this many members are watched at once; any one ending means a fresh look.
MAX_WATCHED = 256


def start_keeper(lock_fds: "Sequence[int]", group: int) -> bool:
    """Fork a keeper that holds ``lock_fds`` while a process of ``group`` (the job's,
    whose command has exited; its living members keep the group number taken) other
    than itself lives. True once it is in place (named, in the group), so that no listing
    sees the job without it; False when it could not be started (the caller then holds
    the locks itself). Raises OSError when no pipe can be made."""
    ready_read, ready_write = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(ready_read)
        os.close(ready_write)
        return False
    if pid == 0:  # pragma: no cover -- seen from outside: the keeper's effects
        try:
            os.close(ready_read)
            set_comm(KEEPER_COMM)
            os.setpgid(0, group)
            os.write(ready_write, b"k")
            _keep(lock_fds, group)
        finally:
            os._exit(0)
    os.close(ready_write)
    try:
        ready = os.read(ready_read, 1) == b"k"  # EOF without it: the keeper failed
    except OSError:
        ready = False
    finally:
        os.close(ready_read)
    if not ready:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # pragma: no cover
            pass
    return ready


def _keep(lock_fds: "Sequence[int]", group: int) -> None:  # pragma: no cover
    """The keeper's life: quiet, detached from the job's stdio and directory, holding
    only the locks; returns (and its caller exits) once the job's group is empty."""
    import _signal

    numbers = [getattr(_signal, name) for name in _IGNORED if hasattr(_signal, name)]
    for signum in [*numbers, *range(_signal.SIGRTMIN, _signal.SIGRTMAX + 1)]:
        try:
            _signal.signal(signum, _signal.SIG_IGN)
        except (OSError, ValueError):
            pass
    # Our parent (guard-run) blocked these while it waited; ignored now, they may come.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    keep = set(lock_fds)
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
            _close(fd)  # the ready pipe among them: guard-run may go
    try:
        os.chdir("/")  # keep no file system busy
    except OSError:
        pass
    me = os.getpid()
    while True:
        members = settled_members({group}, exclude=me)
        if members is None:  # cannot tell (forks all the time, no descriptors): hold on
            _sleep(0.25)
            continue
        if not members:
            return
        try:
            _wait_for_one(sorted(members), group)
        except OSError:
            _sleep(1.0)


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
                if err.errno == errno.ESRCH:
                    return  # ended meanwhile: look again
                if fds:
                    break  # out of descriptors: wait on those we have
                _sleep(0.25)  # no pidfds (Linux < 5.3) or no descriptor at all: poll
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
