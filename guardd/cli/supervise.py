"""guard-run as the command's parent: the command runs as a child, in a process group
of its own (the job), and guard-run waits for it, forwarding signals, then exits with
its status (SPEC, guard-run). guard-run itself stays in its caller's group, so that a
signal the caller sends to its group reaches guard-run and is forwarded once.

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


class CannotExecute(Exception):
    """The command could not be started (``error``: the exec's OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def supervise(
    command: "Sequence[str]",
    fds: list[int],
    *,
    maintenance_began: "Callable[[], str | None] | None" = None,
    grace: float = 30.0,
    say: "Callable[[str], None] | None" = None,
) -> int:
    """Run ``command`` as a child leading a new process group (the job), forward the
    signals sent to us to that group, and return its exit status (128+N when killed by
    signal N); raise CannotExecute when it cannot be started.

    With ``--interrupt`` the command's exit is learnt without reaping it (WNOWAIT):
    while its group lives, its pid stays our child and its group number stays taken, so
    a drain that signals the job (through our child) still reaches the group. A plain
    run reaps it at once (a living member keeps the group number taken) and, in the
    moment before a keeper is in place, a drain's signal reaches guard-run alone: TERM
    is forwarded on the way out, KILL would leave the rest without a keeper (a window
    of a millisecond or so, only for jobs that leave processes). Without
    ``maintenance_began``:
    once it has exited, a keeper holds the locks while the rest of its group lives and
    we return (if no keeper can be started, we hold them ourselves). With it
    (``--interrupt``): every POLL_INTERVAL ask it why the scope is on (None: it is
    not), and once it answers stop the group: SIGTERM, then SIGKILL after ``grace``;
    return when the group is empty. The child inherits the lock descriptors too, so
    a guard-run killed with SIGKILL leaves the locks held by the job. Signals are taken
    synchronously (blocked, then sigwaitinfo): no handler races.
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
    except OSError as err:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        raise CannotExecute(err) from None

    def tell(message: str) -> None:
        if say is not None:
            try:
                say(message)
            except (OSError, ValueError):
                pass  # no stderr: the work goes on regardless

    kill_at: float | None = None  # set once maintenance made us send SIGTERM
    killed = False
    kept = False  # a keeper was tried (plain runs): from then on we only wait
    next_poll = time.monotonic() + POLL_INTERVAL
    status: int | None = None  # the command's, once it has exited
    while True:
        if status is None and maintenance_began is None:
            info = _signal.sigwaitinfo(watched)
        else:
            info = _signal.sigtimedwait(watched, max(next_poll - time.monotonic(), 0.0))
        if info is not None and info.si_signo != _signal.SIGCHLD:
            # Also when systemd signalled the whole cgroup: the command then gets it
            # twice (KillMode=mixed avoids that; see docs/guard-run.md).
            _signal_group(pid, info.si_signo)
            continue
        if status is None:
            # --interrupt keeps the command unreaped while its group lives (see above);
            # a plain run reaps it at once: an empty group is then one kill(2) away
            # (ESRCH), where a zombie leader would need a look through all of /proc.
            status = _exit_status(pid, reap=maintenance_began is None)
        if status is not None:
            # The job is the command's process group: children that closed their
            # inherited lock descriptors keep it alive (SPEC).
            if not _group_alive(pid):
                break
            if maintenance_began is None and not kept:
                kept = True
                if _hand_over(fds, pid):
                    break  # the keeper holds the locks for what is left
                # No keeper (no fork, no descriptor): we hold them, looking every
                # POLL_INTERVAL, as --interrupt does.
        now = time.monotonic()
        if now < next_poll:
            continue
        next_poll = now + POLL_INTERVAL
        if maintenance_began is None:
            continue
        if kill_at is None:
            why = maintenance_began()
            if why is not None:
                tell(f"{why}: sending SIGTERM to {_shown(command)}")
                _signal_group(pid, _signal.SIGTERM)
                kill_at = now + grace
        elif not killed and now >= kill_at:
            tell(f"still running {grace:g}s after SIGTERM: sending SIGKILL")
            _signal_group(pid, _signal.SIGKILL)
            killed = True
        # After SIGKILL too, the loop waits for the group to be gone: a process in an
        # uninterruptible sleep dies only when it wakes, and holds the job till then.
    # A signal that came while the job was handed over goes to what is left of it.
    while (info := _signal.sigtimedwait(watched, 0)) is not None:
        if info.si_signo != _signal.SIGCHLD:
            _signal_group(pid, info.si_signo)
    if maintenance_began is not None:
        try:
            os.waitpid(pid, 0)  # reaped only now: see above
        except ChildProcessError:  # pragma: no cover -- reaped by someone else
            pass
    assert status is not None
    return status


def _hand_over(fds: "Sequence[int]", group: int) -> bool:
    """Start a keeper for ``group``; False when it cannot be started."""
    try:
        from guardd.cli.keeper import start_keeper

        return start_keeper(fds, group)
    except (ImportError, OSError):
        return False


def _shown(command: "Sequence[str]") -> str:
    import shlex

    return shlex.join(command)


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


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs, or when that cannot be known.
    Zombies do not count: they hold no locks, and orphans wait for init to reap them
    (not always promptly)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # members we may not signal (another user's now): /proc tells
    from guardd.core.procfs import settled_members

    members = settled_members({pgid})
    return members is None or bool(members)


def _exit_status(pid: int, *, reap: bool) -> int | None:
    """The exit status of child ``pid`` once it has exited (128+N when killed by signal
    N), reaping it or not; None while it runs."""
    flags = os.WEXITED | os.WNOHANG | (0 if reap else os.WNOWAIT)
    result = os.waitid(os.P_PID, pid, flags)
    if result is None or result.si_pid == 0:
        return None
    if result.si_code == os.CLD_EXITED:
        return int(result.si_status)
    return 128 + int(result.si_status)  # CLD_KILLED, CLD_DUMPED
