"""guard-run as the command's parent: the command runs as a child, in a process group
of its own (the job), and guard-run waits for it, forwarding signals, then exits with
its status (SPEC, guard-run).

Plain runs hand the run locks to a keeper (guardd.cli.keeper) when the command exits
and left processes behind in its group, and return at once; ``--interrupt`` stays
until the group is empty and stops it when maintenance begins.

Why a child rather than exec'ing in place: a child costs guard-run one fork, with the
exec in the child; a keeper started *before* an exec in place costs two (it must not be
the command's child), ~1.3 ms on every run, a tenth of the interpreter's start, even
for the many jobs that leave nothing behind. Lean: os and the C ``_signal`` at import
(``signal`` imports enum: ~3 ms).
"""

import _signal
import os
import time

from guardd.core.runlock import RUNNER_COMM, set_comm
from guardd.errors import EXIT_NOT_FOUND

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

# Signals forwarded to the command's process group (SPEC).
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# How often maintenance is looked for while the command runs (--interrupt): a few
# lstat calls.
POLL_INTERVAL = 0.25


def own_group() -> int | None:
    """Make guard-run the leader of a process group of its own where that is safe, and
    return it; None in the foreground group of a terminal.

    In a terminal's foreground group (a command run by hand, or by a script run by
    hand) guard-run execs the command in place: a group of its own would take the
    terminal and Ctrl-C away from it. Elsewhere guard-run is the command's parent and
    leads a group of its own (kept when it leads one already: a shell's job, a systemd
    service, ``setsid``), so that a signal to the group of the process holding a job's
    locks (a drain's ``--then term``) reaches guard-run, which forwards it to the job,
    and not its caller's other processes.
    """
    pid = os.getpid()
    group = os.getpgrp()
    for fd in (0, 1, 2):
        try:
            if os.tcgetpgrp(fd) == group:
                return None
        except OSError:
            continue  # not a terminal, or not ours
    if group == pid:
        return group
    try:
        os.setpgid(0, 0)
    except OSError:
        return group
    return pid


def supervise(
    command: "Sequence[str]",
    fds: list[int],
    *,
    maintenance_began: "Callable[[], str | None] | None" = None,
    grace: float = 30.0,
    say: "Callable[[str], None] | None" = None,
) -> int:
    """Run ``command`` as a child leading a new process group, forward signals sent to
    us to that group, and return its exit status (128+N when killed by signal N);
    raise OSError when it cannot be started.

    Without ``maintenance_began``: return when the command exits; a keeper holds the
    locks on while the rest of its group lives. With it (``--interrupt``): every
    POLL_INTERVAL ask it why the scope is on (None: it is not), and once it answers,
    stop the group: SIGTERM, then SIGKILL after ``grace``; return when the group is
    empty. The child inherits the lock descriptors too, so a guard-run killed with
    SIGKILL leaves the locks held by the job. Signals are taken synchronously
    (blocked, then sigtimedwait): no handler races, and SIGCHLD wakes us at once.
    """
    set_comm(RUNNER_COMM)  # also when started as `python3 guard-run`: listings know us
    forwarded = [
        number
        for number in (getattr(_signal, name) for name in FORWARDED_SIGNALS)
        # One the caller ignores (nohup) stays ignored, for us and for the command.
        if _signal.getsignal(number) != _signal.SIG_IGN
    ]
    # An ignored SIGCHLD (inherited from the caller) would reap the command for us.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    watched = {*forwarded, _signal.SIGCHLD}
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, watched)
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        pid = _spawn_in_own_group(
            command,
            mask=old_mask,
            defaults=(*forwarded, _signal.SIGPIPE, _signal.SIGXFSZ),
        )
    except OSError:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        raise

    kill_at: float | None = None  # set once maintenance made us send SIGTERM
    killed = False
    next_poll = time.monotonic() + POLL_INTERVAL
    status: int | None = None  # the command's, once it has exited
    while True:
        if maintenance_began is None and status is None:
            info = _signal.sigwaitinfo(watched)
        else:
            info = _signal.sigtimedwait(watched, max(next_poll - time.monotonic(), 0.0))
        if info is not None and info.si_signo != _signal.SIGCHLD:
            # Also when systemd signalled the whole cgroup: the command then gets it
            # twice (KillMode=mixed avoids that; see docs/guard-run.md).
            _signal_group(pid, info.si_signo)
            continue
        if status is None:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wait_status
        if status is not None and maintenance_began is None:
            # The job is the command's process group: children that closed their
            # inherited lock descriptors keep it alive (SPEC). A keeper holds the
            # locks for them, so that our caller is not held up.
            if _group_alive(pid):
                from guardd.cli.keeper import start_keeper

                start_keeper(fds, pid)
            break
        if status is not None and (kill_at is not None or not _group_alive(pid)):
            break
        now = time.monotonic()
        if maintenance_began is None or now < next_poll:
            continue
        next_poll = now + POLL_INTERVAL
        if kill_at is None:
            why = maintenance_began()
            if why is not None:
                if say is not None:
                    import shlex

                    say(f"{why}: sending SIGTERM to {shlex.join(command)}")
                _signal_group(pid, _signal.SIGTERM)
                kill_at = now + grace
        elif not killed and now >= kill_at:
            if say is not None:
                say(f"still running {grace:g}s after SIGTERM: sending SIGKILL")
            _signal_group(pid, _signal.SIGKILL)
            killed = True
    if kill_at is not None and not killed:
        _finish_group(pid, kill_at)
    return _exit_status(status)


def _spawn_in_own_group(
    command: "Sequence[str]", *, mask: "Iterable[int]", defaults: "Iterable[int]"
) -> int:
    """fork + exec ``command`` as leader of a new process group; exec errors raise here.

    Not posix_spawn: glibc's leaves its internal signals (32, 33) ignored in the
    program it starts. The exec status comes back through a close-on-exec pipe:
    EOF means the exec happened, else the child sends its errno and exits.
    """
    status_read, status_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child; what it does is seen from outside
        try:
            os.close(status_read)
            os.setpgid(0, 0)
            for signum in defaults:
                _signal.signal(signum, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            os.execvp(command[0], list(command))  # noqa: S606 -- running COMMAND is the job
        except OSError as err:
            os.write(status_write, str(err.errno).encode())
        finally:
            os._exit(EXIT_NOT_FOUND)
    os.close(status_write)
    try:
        # Both sides set the group, as shells do: whoever looks at the child (our
        # signals, a listing) finds it in its own group from now on.
        os.setpgid(pid, pid)
    except OSError:
        pass  # it has exec'd already (EACCES), having set it itself
    try:
        report = b""
        while chunk := os.read(status_read, 64):
            report += chunk
    finally:
        os.close(status_read)
    if not report:
        return pid
    os.waitpid(pid, 0)
    code = int(report)
    raise OSError(code, os.strerror(code))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone, or a member changed its user: nothing more to do


def _finish_group(pgid: int, kill_at: float) -> None:
    """After the command exits on our SIGTERM, give what is left of its group the same
    grace, then SIGKILL: leftovers would otherwise hold the locks and stall the drain."""
    while _group_alive(pgid):
        if time.monotonic() >= kill_at:
            _signal_group(pgid, _signal.SIGKILL)
            return
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs. Zombies do not count: they hold no
    locks, and orphans wait for init to reap them (not always promptly)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    from guardd.core.procfs import group_members

    try:
        return bool(group_members({pgid}))
    except OSError:
        return True  # out of descriptors: cannot tell, so not gone (SIGKILL comes at kill_at)


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
