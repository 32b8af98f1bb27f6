"""core/atomic.py: replacing a file in one rename, whatever the umask, leaving no temp behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guardd.core.atomic import write_atomic


def test_creates_and_replaces_with_the_mode_asked(tmp_path: Path) -> None:
    """The file gets ``mode`` even under umask 077, and a second write replaces it whole."""
    target = tmp_path / "flag"
    old = os.umask(0o077)
    try:
        write_atomic(str(target), b"first", mode=0o644)
        assert target.read_bytes() == b"first"
        assert target.stat().st_mode & 0o777 == 0o644
        inode = target.stat().st_ino
        write_atomic(str(target), b"second", mode=0o600, durable=False)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.stat().st_ino != inode  # a new file renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag"]


def test_large_data_is_written_whole(tmp_path: Path) -> None:
    """Short writes are continued: 8 MiB arrive intact."""
    data = os.urandom(8 * 1024 * 1024)
    write_atomic(str(tmp_path / "big"), data, mode=0o600)
    assert (tmp_path / "big").read_bytes() == data


def test_failed_rename_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    """A rename that fails (the target is a non-empty directory) leaves no temp file."""
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomic(str(target), b"data", mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_symlinked_temp_name_is_never_followed(tmp_path: Path) -> None:
    """The temp file is created O_EXCL|O_NOFOLLOW with a random name: the target is reached
    only through the final rename, which replaces a symlink instead of writing through it."""
    outside = tmp_path / "outside"
    outside.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(outside)
    write_atomic(str(link), b"new", mode=0o644)
    assert outside.read_text() == "keep"
    assert not link.is_symlink() and link.read_bytes() == b"new"
