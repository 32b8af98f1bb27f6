"""Atomic file replacement: temp file in the same directory, (fsync,) rename.

Lean on purpose (``os`` only): guard-run's config cache uses it too. The temp name
starts with a dot and ends in ``.tmp``, so a stray one (a writer killed mid-way)
is never mistaken for a flag, a schedule or a cache.
"""

import os


def write_atomic(path: str, data: bytes, *, mode: int, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see the old or the new file.

    ``mode`` is applied whatever the umask. ``durable`` fsyncs the file before the
    rename and the directory after it, so a power cut cannot leave an empty file.
    Raises OSError after removing the temp file.
    """
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
