"""The one /proc/<pid>/stat reader, for guard-run (its process group) and the job listing.

No imports beyond os: guard-run loads it only when it has a group to wait for.
"""

from __future__ import annotations

import os

# Indexes into ``stat_fields``: the fields after the command name, from the state.
STATE, PPID, PGRP, START_TIME = 0, 1, 2, 19


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


def stat_fields(stat: bytes) -> list[bytes]:
    """The fields of a /proc/<pid>/stat line after the command name (``STATE`` first).

    The command name may hold spaces and parentheses: split after the last ')'.
    Empty when the line has no ')' (never, from the kernel).
    """
    _, sep, rest = stat.rpartition(b")")
    return rest.split() if sep else []


def read_stat(pid: int | str) -> list[bytes] | None:
    """``stat_fields`` of a process; None when it is gone or cannot be read."""
    try:
        return stat_fields(read_proc_file(f"/proc/{pid}/stat"))
    except OSError:
        return None
