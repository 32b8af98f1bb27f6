"""guard-run --interrupt: the command runs as guard-run's child, in a process group of
its own, and is stopped when maintenance comes on (SPEC, guard-run).

Imported only with --interrupt: signal (and its enum) would cost every other run its
start-up.
"""

import os
import shlex
import time

from guardd.errors import EXIT_NOT_FOUND

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

# Signals forwarded to the command's process group (SPEC).
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# How often maintenance is looked for while the command runs: a few lstat calls.
POLL_INTERVAL = 0.25


def supervise(
    command: "Sequence[str]",
    fds: list[int],
    *,
    maintenance_began: "Callable[[], str | None]",
    grace: float,
    say: "Callable[[str], None] | None" = None,
) -> int:
    """``--interrupt``: run ``command`` in its own process group; every POLL_INTERVAL
    ask ``maintenance_began`` (why the scope is on, or None), and once it answers, stop
    the group: SIGTERM, then SIGKILL after ``grace``. Returns the command's exit status
    (128+N when killed by signal N); raises OSError when it cannot be started.

    The child inherits the lock descriptors too, so a guard-run killed with SIGKILL
    leaves the locks held by the job alone. Signals are taken synchronously
    (blocked, then sigtimedwait): no handler races, and SIGCHLD wakes us at once.
    """
    import signal

    forwarded = [
        number
        for number in (getattr(signal, name) for name in FORWARDED_SIGNALS)
        # One the caller ignores (nohup) stays ignored, for us and for the command.
        if signal.getsignal(number) != signal.SIG_IGN
    ]
    watched = {*forwarded, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        pid = _spawn_in_own_group(
            command,
            mask=old_mask,
            defaults=(*forwarded, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
        )
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise

    kill_at: float | None = None  # set once maintenance made us send SIGTERM
    killed = False
    next_poll = time.monotonic() + POLL_INTERVAL
    status: int | None = None  # the command's, once it has exited
    while True:
        info = signal.sigtimedwait(watched, max(next_poll - time.monotonic(), 0.0))
        if info is not None and info.si_signo != signal.SIGCHLD:
            # Also when systemd signalled the whole cgroup: the command then gets it
            # twice (KillMode=mixed avoids that; see docs/guard-run.md).
            _signal_group(pid, info.si_signo)
            continue
        if status is None:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wait_status
        # The job is the command's process group: children that closed their
        # inherited lock descriptors keep it (and our locks) alive (SPEC).
        if status is not None and (kill_at is not None or not _group_alive(pid)):
            break
        now = time.monotonic()
        if now < next_poll:
            continue
        next_poll = now + POLL_INTERVAL
        if kill_at is None:
            why = maintenance_began()
            if why is not None:
                if say is not None:
                    say(f"{why}: sending SIGTERM to {shlex.join(command)}")
                _signal_group(pid, signal.SIGTERM)
                kill_at = now + grace
        elif not killed and now >= kill_at:
            if say is not None:
                say(f"still running {grace:g}s after SIGTERM: sending SIGKILL")
            _signal_group(pid, signal.SIGKILL)
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
    import signal

    status_read, status_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child; what it does is seen from outside
        try:
            os.close(status_read)
            os.setpgid(0, 0)
            for signum in defaults:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
    import signal

    while _group_alive(pgid):
        if time.monotonic() >= kill_at:
            _signal_group(pgid, signal.SIGKILL)
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
