"""An application's ``lock_file`` (SPEC "A `lock_file` belongs to its application").

guardctl creates it only when absent and removes it only when it wrote it; and,
since it often runs as root in a directory the application's user owns, it never
follows a symlink in any component of the path: each directory is opened with
O_NOFOLLOW relative to the one above, and the file is created, renamed and unlinked
relative to the last one. A symlinked ``current`` or ``storage`` must be configured
by its real path.
"""

from __future__ import annotations

import errno
import json
import os

from guardd.core.atomic import write_all
from guardd.core.flag import FlagInfo, parse_flag_content

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o644
NEW_DIR_MODE = 0o755


class SymlinkInPath(OSError):
    """A component of a lock_file's path is a symlink (or not a directory)."""

    def __init__(self, path: str, component: str) -> None:
        super().__init__(errno.ELOOP, f"{component} is a symlink or not a directory")
        self.path = path
        self.component = component

    def message(self) -> str:
        """One line for the operator, with the real path to configure instead."""
        return (
            f"not following the symlink {self.component} in lock_file {self.path}; "
            f"configure the lock_file by its real path ({os.path.realpath(self.path)})"
        )


def open_parent(path: str, *, create: bool) -> int:
    """A descriptor of ``path``'s directory, reached without following any symlink.

    Missing directories are created (0755) when ``create`` is set, else
    FileNotFoundError. Raises SymlinkInPath for a symlink on the way.
    """
    absolute = os.path.normpath(os.path.abspath(path))
    parts = [part for part in os.path.dirname(absolute).split("/") if part]
    fd = os.open("/", DIR_FLAGS)
    walked = ""
    try:
        for part in parts:
            walked += "/" + part
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, NEW_DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    os.chmod(part, NEW_DIR_MODE, dir_fd=fd, follow_symlinks=False)
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise SymlinkInPath(path, walked) from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_at(dir_fd: int, name: str) -> FlagInfo | None:
    """The flag ``name`` in ``dir_fd``, not following a symlink; None when absent.

    A symlink or an unreadable file is present with unknown content (not ours).
    """
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return FlagInfo(reason=None, until=None, since=None, by=None)
    try:
        mtime = os.fstat(fd).st_mtime
        try:
            data = os.read(fd, 64 * 1024)
        except OSError:
            data = b""
    finally:
        os.close(fd)
    return parse_flag_content(data, mtime=mtime)


def create(path: str, info: FlagInfo) -> FlagInfo | None:
    """Create the lock_file with ``info`` (marked ``by_guardd``) unless it exists.

    Returns None when created, else what the existing one says (left untouched).
    Written as a temp file (fsync) then linked into place, which fails rather than
    replace a file the application created meanwhile; fsync of the directory after.
    """
    dir_fd = open_parent(path, create=True)
    try:
        name = os.path.basename(path)
        existing = read_at(dir_fd, name)
        if existing is not None:
            return existing
        obj = {**info.to_json_obj(), "by_guardd": True}
        payload = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
        temp = f".{name}.{os.urandom(6).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, FILE_MODE, dir_fd=dir_fd)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                return read_at(dir_fd, name) or FlagInfo(
                    reason=None, until=None, since=None, by=None
                )
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here (some FUSE and vfat mounts): a rename, which
                # could only replace a file created in the last microseconds.
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        os.fsync(dir_fd)
        return None
    finally:
        os.close(dir_fd)


def remove(path: str, *, force: bool) -> tuple[bool, FlagInfo | None]:
    """Remove the lock_file if guardctl wrote it (or ``force``); never through a symlink.

    Returns (removed, what it said): (False, None) when absent, (False, info) when
    it is the application's and ``force`` is not set.
    """
    try:
        dir_fd = open_parent(path, create=False)
    except FileNotFoundError:
        return False, None
    try:
        name = os.path.basename(path)
        existing = read_at(dir_fd, name)
        if existing is None:
            return False, None
        if not existing.by_guardd and not force:
            return False, existing
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False, None
        try:
            os.fsync(dir_fd)
        except OSError:
            pass  # the unlink happened; durability of the removal is best effort
        return True, existing
    finally:
        os.close(dir_fd)
