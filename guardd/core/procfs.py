"""Reading processes from /proc with raw system calls (lean: guard-run's keeper uses it).

The one /proc/<pid>/stat parser. Shared by the keeper (which waits for a job's
process group), guard-run's end (which waits for what is left of a group) and job
discovery (which lists the processes a keeper waits for), so that all agree on who
is in a job.
"""

import errno
import os

# Index of the start time (clock ticks after boot) in ``split_stat``'s fields.
START_TIME = 19


def split_stat(data: bytes) -> list[bytes]:
    """The fields of a /proc/<pid>/stat line after the command name, state first.

    The command name may hold spaces and parentheses: split after the last ')'.
    """
    _, sep, rest = data.rpartition(b")")
    return rest.split() if sep else []


def read_proc_file(path: str) -> bytes:
    """A /proc file's content through raw system calls: half the cost of open() and a
    buffered reader, which counts with two files per job. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def stat_fields(pid: int) -> tuple[str, str, int, int] | None:
    """(command name, state, parent pid, process group) of ``pid`` from
    /proc/<pid>/stat; None when it is gone or unreadable. Out of descriptors
    (EMFILE, ENFILE) raises: that proves nothing either way."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE):
            raise
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    head = data.rpartition(b")")[0]
    fields = split_stat(data)
    try:
        return (
            head.partition(b"(")[2].decode("utf-8", "replace"),
            fields[0].decode("ascii", "replace"),
            int(fields[1]),
            int(fields[2]),
        )
    except (IndexError, ValueError):
        return None


def in_terminal_foreground() -> bool:
    """True when this process is in the foreground process group of its controlling
    terminal, whatever its stdin, stdout and stderr (tty_nr and tpgid of
    /proc/self/stat); False without a terminal or when that cannot be read."""
    try:
        fields = split_stat(read_proc_file("/proc/self/stat"))
        group, tty, foreground = int(fields[2]), int(fields[4]), int(fields[5])
    except (OSError, ValueError, IndexError):
        return False
    return tty != 0 and foreground == group


def is_live(state: str) -> bool:
    """A process in this /proc state can still run (zombies and the dead hold nothing)."""
    return state not in ("Z", "X", "x")


def group_members(groups: set[int], *, exclude: int = 0) -> dict[int, tuple[str, int, int]]:
    """Live processes whose process group is in ``groups``: pid -> (command name,
    parent pid, group). One pass over /proc; ``exclude`` is left out (the caller)."""
    found: dict[int, tuple[str, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        fields = stat_fields(int(name))
        if fields is not None and fields[3] in groups and is_live(fields[1]):
            found[int(name)] = (fields[0], fields[2], fields[3])
    return found


# How many times a scan of a group is repeated while processes keep being created
# during it, before the answer is "cannot tell" (callers then keep holding).
SETTLE_TRIES = 20


def last_pid() -> int:
    """The pid the kernel handed out last (/proc/loadavg): it changes with every process
    (or thread) created. -1 when it cannot be read."""
    try:
        return int(read_proc_file("/proc/loadavg").split()[-1])
    except (OSError, ValueError, IndexError):
        return -1


def settled_members(
    groups: set[int], *, exclude: int = 0
) -> dict[int, tuple[str, int, int]] | None:
    """``group_members``, trusted when empty only if no process was created during the
    scan; None when that cannot be had (processes created all the time, or out of
    descriptors): the group may not be empty.

    One scan is not a snapshot: a member that forks and exits while /proc is being read
    hides its child (listed before it was born, its parent read after it was gone), and
    a daemonising child does just that. A scan with no fork during it has no such gap.
    """
    for _ in range(SETTLE_TRIES):
        before = last_pid()
        try:
            members = group_members(groups, exclude=exclude)
        except OSError:
            return None
        if members:
            return members
        after = last_pid()
        if after == before != -1:
            return members
        if after == before == -1:
            # No counter to go by (never seen): two empty scans in a row instead.
            try:
                return group_members(groups, exclude=exclude) or {}
            except OSError:
                return None
    return None


def in_group(pid: int, group: int) -> bool:
    """True while ``pid`` lives in process group ``group``."""
    fields = stat_fields(pid)
    return fields is not None and fields[3] == group and is_live(fields[1])
