"""core/procfs.py: /proc/<pid>/stat read once, correctly, whatever the command name."""

from __future__ import annotations

import os
import subprocess
import sys

from guardd.core.procfs import PGRP, PPID, START_TIME, STATE, read_stat, stat_fields


def test_fields_after_a_hostile_command_name() -> None:
    """A name holding spaces and ')' does not shift the fields (split at the last ')')."""
    line = b"1234 (evil) R 1 2 (x) S 77 88 99 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 0 0\n"
    fields = stat_fields(line)
    assert fields[STATE] == b"S" and fields[PPID] == b"77" and fields[PGRP] == b"88"
    assert stat_fields(b"garbage without a parenthesis") == []


RENAMED = """
import sys
with open("/proc/self/comm", "w") as comm:
    comm.write("a) (b c")
print("renamed", flush=True)
sys.stdin.read()
"""


def test_a_real_process_with_spaces_and_parens_in_its_name() -> None:
    """For a live process renamed 'a) (b c': state, parent and group are read right."""
    child = subprocess.Popen(
        [sys.executable, "-c", RENAMED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"renamed\n"
        with open(f"/proc/{child.pid}/comm", "rb") as comm:
            assert comm.read() == b"a) (b c\n"
        fields = read_stat(child.pid)
        assert fields is not None
        assert int(fields[PPID]) == os.getpid()
        assert int(fields[PGRP]) == child.pid  # its own session and group
        assert fields[STATE] in (b"S", b"R")
        assert int(fields[START_TIME]) > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def test_a_gone_process_is_none() -> None:
    """A pid that does not exist reads as None, not an error."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    assert read_stat(child.pid) is None
