"""core/procfs.py: /proc/<pid>/stat read once, correctly, whatever the command name."""

from __future__ import annotations

import os
import subprocess
import sys

from guardd.core.procfs import START_TIME, group_members, in_group, split_stat, stat_fields


def test_fields_after_a_hostile_command_name() -> None:
    """A name holding spaces and ')' does not shift the fields (split at the last ')')."""
    line = b"1234 (evil) R 1 2 (x) S 77 88 99 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 4242 0 0\n"
    fields = split_stat(line)
    assert fields[:3] == [b"S", b"77", b"88"]
    assert fields[START_TIME] == b"4242"
    assert split_stat(b"garbage without a parenthesis") == []


RENAMED = """
import sys
with open("/proc/self/comm", "w") as comm:
    comm.write("a) (b c")
print("renamed", flush=True)
sys.stdin.read()
"""


def test_a_real_process_with_spaces_and_parens_in_its_name() -> None:
    """For a live process renamed 'a) (b c': name, state, parent and group are read right,
    and it is found as the one member of its own process group."""
    child = subprocess.Popen(
        [sys.executable, "-c", RENAMED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"renamed\n"
        fields = stat_fields(child.pid)
        assert fields is not None
        name, state, parent, group = fields
        assert name == "a) (b c"
        assert state in ("S", "R")
        assert parent == os.getpid()
        assert group == child.pid  # its own session and group
        assert in_group(child.pid, child.pid)
        assert list(group_members({child.pid})) == [child.pid]
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
    assert stat_fields(child.pid) is None
    assert not in_group(child.pid, child.pid)
