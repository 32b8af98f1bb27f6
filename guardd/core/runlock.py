"""The flock protocol: jobs hold run locks shared, a drain takes them exclusive.

guard-run takes the shared locks *then* reads the flags; ``guardctl on --wait``
writes the flag *then* takes the lock exclusively. Whoever is second sees the
other. Holders are found from /proc/locks, so jobs need no registration.

The lock-taking half is lean (os and fcntl only): guard-run runs it in front of
every cron job. The listing half lives in jobs.py.
"""

import errno
import fcntl
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (guard-run's start)
if TYPE_CHECKING:
    from collections.abc import Iterable

RUN_LOCK_MODE = 0o644
# What the processes guard-run leaves holding run locks call themselves
# (/proc/<pid>/comm, at most 15 bytes), so that job listings can tell them:
# a keeper (guardd.cli.keeper) stands for the processes of the job's group it waits
# for; guard-run running its command as a child stands for that command (the pid
# stays guard-run's: it forwards signals).
KEEPER_COMM = "guard-run-keep"
RUNNER_COMM = "guard-run"
# guard-run moves its lock descriptors this high so that a job's own ``exec 3>file``
# cannot close them by accident (which would silently drop the lock mid-job).
LOCK_FD_FLOOR = 200


def open_run_lock(path: str, *, create: bool) -> int:
    """Open a run lock read-only (any user's cron job can), creating it 0644 if asked.

    Raises OSError (FileNotFoundError when it is missing and ``create`` is False).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise
    fd = os.open(path, flags | os.O_CREAT, RUN_LOCK_MODE)
    try:
        os.fchmod(fd, RUN_LOCK_MODE)  # whatever the umask: others must open it too
    except PermissionError:
        pass  # created by someone else between our two opens; their mode stands
    return fd


def ensure_run_locks(runtime_dir: str, scopes: "Iterable[str]", *, gid: int = -1) -> None:
    """Create the run locks of the configured scopes (guardd and guardctl do this),
    and their directory 0755 (group ``gid`` when given) whatever the umask."""
    from guardd.core.paths import RUNTIME_DIR_MODE, make_dir, run_lock_path

    make_dir(runtime_dir, RUNTIME_DIR_MODE, gid=gid)
    for scope in scopes:
        os.close(open_run_lock(run_lock_path(runtime_dir, scope), create=True))


def lock_shared(fd: int, *, timeout: float) -> bool:
    """Take a shared lock, retrying while a drain holds it exclusively for a moment.

    Non-blocking tries instead of a blocking flock: anyone who can read the file can
    also flock it exclusively, and a stuck holder must not hang every cron job for
    ever. Returns False when ``timeout`` passes without the lock.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def try_exclusive(fd: int) -> bool:
    """One non-blocking try at the exclusive lock; True when no job holds it shared."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    """Release whatever lock ``fd`` holds."""
    fcntl.flock(fd, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- /proc/locks


def parse_proc_locks(text: str, inodes: set[int]) -> list[tuple[int, int]]:
    """(pid, inode) of every granted FLOCK on one of ``inodes``. Pure.

    Lines look like ``1: FLOCK  ADVISORY  READ 3313 fe:00:2146399 0 EOF``; blocked
    waiters carry ``->`` and hold nothing yet, so they are skipped. The device part
    is not compared: on overlay and some other file systems it differs from
    ``stat``'s, and the holder is verified through its file descriptors anyway.
    """
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
            inode = int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode in inodes:
            found.append((pid, inode))
    return found


def exclusive_holders(text: str, inode: int) -> list[int]:
    """Pids that took a granted exclusive FLOCK on ``inode`` (from /proc/locks). Pure."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            pid = int(fields[4])
            if int(fields[5].rsplit(":", 1)[1]) == inode:
                found.append(pid)
        except (ValueError, IndexError):
            continue
    return found


def describe_process(pid: int) -> str:
    """``pid 1234 (user alice: flock -x /run/guardd/default.run sleep 600)``, as far as
    /proc shows it: so that an operator can tell who holds a lock and act."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return f"pid {pid} (gone)"
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            raw = stream.read(4096)
    except OSError:
        raw = b""
    words = [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0") if arg]
    shown = " ".join("".join(c if c.isprintable() else "?" for c in w) for w in words)
    return f"pid {pid} (user {user}: {shown[:200] or '?'})"


def read_proc_locks() -> str:
    """The kernel's lock table ("" where /proc is not mounted). Raises OSError when no
    descriptor is to be had (EMFILE, ENFILE)."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE):
            raise  # out of descriptors: no job count is better than a count of 0
        return ""


def set_comm(name: str) -> None:
    """Name this process ``name`` in /proc/<pid>/comm (which a fork inherits); best
    effort."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, name.encode())
    except OSError:
        pass
    finally:
        os.close(fd)
