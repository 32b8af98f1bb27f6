"""The flock protocol's primitives: opening run locks, shared and exclusive locks,
and reading the kernel's lock table."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from guardd.core.runlock import (
    ensure_run_locks,
    lock_shared,
    open_run_lock,
    parse_proc_locks,
    read_proc_locks,
    try_exclusive,
    unlock,
)


def test_open_creates_0644_whatever_the_umask(tmp_path: Path) -> None:
    """A created run lock is 0644 even under umask 077, so every user's job can open it."""
    old = os.umask(0o077)
    try:
        fd = open_run_lock(str(tmp_path / "x.run"), create=True)
    finally:
        os.umask(old)
    try:
        assert os.fstat(fd).st_mode & 0o777 == 0o644
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_open_without_create_raises_when_missing(tmp_path: Path) -> None:
    """create=False never makes the file: FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        open_run_lock(str(tmp_path / "x.run"), create=False)
    assert not (tmp_path / "x.run").exists()


def test_open_refuses_symlink(tmp_path: Path) -> None:
    """A run lock that is a symlink is refused (O_NOFOLLOW)."""
    (tmp_path / "real").touch()
    (tmp_path / "x.run").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as caught:
        open_run_lock(str(tmp_path / "x.run"), create=True)
    assert caught.value.errno == errno.ELOOP


def test_ensure_run_locks_creates_dir_and_files(tmp_path: Path) -> None:
    """ensure_run_locks makes the runtime dir and one 0644 lock per scope."""
    runtime = tmp_path / "run" / "guardd"
    ensure_run_locks(str(runtime), ["default", "shop"])
    assert sorted(p.name for p in runtime.iterdir()) == ["default.run", "shop.run"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in runtime.iterdir())


def test_shared_locks_coexist_and_block_exclusive(tmp_path: Path) -> None:
    """Two shared holders coexist; exclusive fails while any holds, succeeds after."""
    path = str(tmp_path / "x.run")
    first, second, drainer = (open_run_lock(path, create=True) for _ in range(3))
    try:
        assert lock_shared(first, timeout=1)
        assert lock_shared(second, timeout=1)
        assert not try_exclusive(drainer)
        os.close(first)
        assert not try_exclusive(drainer)
        unlock(second)
        assert try_exclusive(drainer)
    finally:
        for fd in (second, drainer):
            os.close(fd)


def test_lock_shared_times_out_while_exclusive_is_held(tmp_path: Path) -> None:
    """lock_shared gives up (False) after its timeout while an exclusive lock stays."""
    path = str(tmp_path / "x.run")
    holder = open_run_lock(path, create=True)
    waiter = open_run_lock(path, create=True)
    try:
        assert try_exclusive(holder)
        started = time.monotonic()
        assert not lock_shared(waiter, timeout=0.2)
        assert time.monotonic() - started >= 0.2
    finally:
        os.close(holder)
    try:
        assert lock_shared(waiter, timeout=1)
    finally:
        os.close(waiter)


def test_lock_shared_gets_the_lock_when_a_drain_lets_go(tmp_path: Path) -> None:
    """A drain's brief exclusive hold only delays lock_shared, it does not fail it."""
    path = tmp_path / "x.run"
    path.touch()
    drain = subprocess.Popen(["flock", "-x", str(path), "sleep", "0.3"])
    try:
        fd = open_run_lock(str(path), create=False)
        try:
            time.sleep(0.1)
            assert lock_shared(fd, timeout=10)
        finally:
            os.close(fd)
    finally:
        drain.wait()


def test_proc_locks_lists_our_flock(tmp_path: Path) -> None:
    """read_proc_locks + parse_proc_locks find the shared flock we hold, by inode."""
    path = str(tmp_path / "x.run")
    fd = open_run_lock(path, create=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        inode = os.fstat(fd).st_ino
        assert (os.getpid(), inode) in parse_proc_locks(read_proc_locks(), {inode})
    finally:
        os.close(fd)
    assert parse_proc_locks(read_proc_locks(), {inode}) == []


def test_parse_proc_locks_pure() -> None:
    """Granted FLOCKs on the wanted inodes only: no POSIX locks, waiters or junk."""
    text = "\n".join(
        [
            "1: FLOCK  ADVISORY  READ 3313 fe:00:2146399 0 EOF",
            "1: -> FLOCK  ADVISORY  WRITE 4000 fe:00:2146399 0 EOF",
            "2: POSIX  ADVISORY  WRITE 512 00:1a:2146399 0 EOF",
            "3: FLOCK  ADVISORY  WRITE 77 00:2b:555 0 EOF",
            "4: FLOCK  ADVISORY  READ 78 fe:00:999 0 EOF",
            "5: FLOCK  ADVISORY  READ notapid fe:00:555 0 EOF",
            "6: FLOCK",
            "",
        ]
    )
    assert parse_proc_locks(text, {2146399, 555}) == [(3313, 2146399), (77, 555)]
    assert parse_proc_locks(text, set()) == []
