"""Tell the daemon "these files may have changed": inotify on parent directories,
polling where inotify cannot see (network file systems, watch limits, missing dirs).

The watcher never reads flags itself; it only reports paths, so the daemon reads
them off the event loop and no request waits on the disk.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import inotify_simple
from inotify_simple import flags as inflags

log = logging.getLogger(__name__)

# Events that can change whether a file exists or what it holds.
_FILE_EVENTS = (
    inflags.CREATE  # touch, open(O_CREAT)
    | inflags.DELETE  # rm
    | inflags.MOVED_FROM  # mv away
    | inflags.MOVED_TO  # atomic rename into place (guardctl on)
    | inflags.CLOSE_WRITE  # content written
    | inflags.ATTRIB  # touch of an existing flag (mtime is its "since")
)
# Opens and closes of run locks: a job starting or ending (guard-run only reads them).
_RUN_LOCK_EVENTS = inflags.OPEN | inflags.CLOSE_NOWRITE | inflags.CLOSE_WRITE
_SELF_GONE = inflags.DELETE_SELF | inflags.MOVE_SELF | inflags.IGNORED | inflags.UNMOUNT
# On each directory above a watched one: the next path component created, removed,
# renamed or re-pointed (a deploy's ``mv -T`` of a ``current`` symlink, ``mv app
# app.old && mv app.new app``), or its permissions changed.
_CHAIN_EVENTS = (
    inflags.CREATE
    | inflags.DELETE
    | inflags.MOVED_FROM
    | inflags.MOVED_TO
    | inflags.ATTRIB
    | inflags.DELETE_SELF
    | inflags.MOVE_SELF
    | inflags.ONLYDIR
    | inflags.DONT_FOLLOW
)
# Symlinks followed while working out a chain, as the kernel's own limit (ELOOP).
MAX_SYMLINKS = 40

# File systems where changes made elsewhere never reach this kernel's inotify.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "ceph",
        "glusterfs",
        "9p",
        "afs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "virtiofs",
        "beegfs",
    }
)

# Why a directory is polled when it is missing: it is watched again once it is back.
_MISSING = ("it does not exist (yet)", "it was deleted or moved away")

RESCAN = "*"  # reported instead of paths when everything must be re-read
MOUNTINFO = "/proc/self/mountinfo"  # polls EPOLLPRI whenever a mount comes or goes
POLL_ENV = "GUARDD_POLL_ONLY"  # "1": never use inotify (troubleshooting, tests)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mountinfo. Pure."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        point = fields[4].encode().decode("unicode_escape")  # "\040" for spaces
        mounts.append((point, right.split()[0]))
    return mounts


def fs_type(path: str, mounts: list[tuple[str, str]]) -> str:
    """The type of the file system holding ``path`` (longest mount-point prefix)."""
    best, kind = "", ""
    for point, fstype in mounts:
        prefix = point.rstrip("/") + "/"
        if (path == point or path.startswith(prefix) or point == "/") and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def needs_polling(fstype: str) -> bool:
    """True where inotify cannot be trusted to see every change."""
    return fstype in NETWORK_FS or fstype.startswith("fuse.") or fstype == "fuse"


def path_chain(path: str) -> dict[str, set[str]]:
    """Every directory whose entries decide what the absolute ``path`` leads to, with
    the names in it that do: each component of the path, and of every symlink's
    target met on the way (resolved as the kernel does). A component that does not
    exist ends the chain there: its creation is what to wait for.
    """
    chain: dict[str, set[str]] = {}
    pending = [part for part in path.split("/") if part]
    current = "/"
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        chain.setdefault(current, set()).add(name)
        candidate = os.path.join(current, name)
        try:
            target = os.readlink(candidate)
        except OSError as err:
            if err.errno != errno.EINVAL:
                break  # missing (or unreadable): its appearance is the event
            current = candidate  # not a symlink: a directory, we go down into it
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            break
        if target.startswith("/"):
            current = "/"
        pending[:0] = [part for part in target.split("/") if part]
    return chain


def _read_mounts() -> list[tuple[str, str]]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as stream:
            return parse_mountinfo(stream.read())
    except OSError:
        return []


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


@dataclass
class _Dir:
    """One watched directory and the files in it we care about."""

    path: str
    files: set[str] = field(default_factory=set)  # base names
    run_locks: bool = False  # this is the runtime dir: report *.run opens and closes
    wd: int | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the watch is on
    polled: bool = False
    why_polled: str = ""
    signatures: dict[str, tuple[int, int, int, int] | None] = field(default_factory=dict)


class Watcher:
    """Report changed paths to ``on_change`` (a set of paths, or {RESCAN})."""

    def __init__(
        self,
        *,
        files: Iterable[str],
        run_dir: str,
        poll_interval: float,
        on_change: Callable[[set[str]], None],
    ) -> None:
        self.poll_interval = poll_interval
        self.on_change = on_change
        self.dirs: dict[str, _Dir] = {}
        for path in files:
            directory, name = os.path.split(os.path.abspath(path))
            self.dirs.setdefault(directory, _Dir(directory)).files.add(name)
        run = os.path.abspath(run_dir)
        self.dirs.setdefault(run, _Dir(run)).run_locks = True
        self.by_wd: dict[int, _Dir] = {}
        self.inotify: inotify_simple.INotify | None = None
        self.poll_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Mount changes: an inotify watch stays on the directory a new mount covers.
        self.mountinfo: int | None = None
        self.mount_poll: select.epoll | None = None
        # The directories above the watched ones (path_chain), on an inotify instance
        # of their own so that their masks never mix with a watched directory's.
        self.chain_inotify: inotify_simple.INotify | None = None
        self.chain_names: dict[str, set[str]] = {}  # directory -> names that matter
        self.chain_wds: dict[str, int] = {}  # directory -> its watch
        self.chain_by_wd: dict[int, set[str]] = {}  # watch -> directories (bind mounts)

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Add the watches (or note why a directory is polled) and hook into ``loop``."""
        self.loop = loop
        force_poll = os.environ.get(POLL_ENV) == "1"
        if not force_poll:
            try:
                self.inotify = inotify_simple.INotify(nonblocking=True)
            except OSError as err:
                log.warning(
                    "inotify unavailable (%s): polling every %ss", err.strerror, self.poll_interval
                )
        if self.inotify is not None:
            loop.add_reader(self.inotify.fileno(), self._on_readable)
            self._watch_mounts(loop)
            self._start_chain(loop)
        mounts = _read_mounts()
        for entry in self.dirs.values():
            if force_poll:
                self._poll(entry, f"{POLL_ENV}=1 is set")
                continue
            self._watch_or_poll(entry, mounts)
        if self.chain_inotify is not None:
            # Anything replaced while the watches went on is caught here.
            changed = self._recheck()
            if changed:
                self.on_change(changed)
        self._schedule_poll()

    def _watch_or_poll(self, entry: _Dir, mounts: list[tuple[str, str]]) -> None:
        kind = fs_type(os.path.realpath(entry.path), mounts)
        if needs_polling(kind):
            self._poll(entry, f"it is on {kind}, where inotify misses remote changes")
        else:
            self._add_watch(entry)

    def close(self) -> None:
        """Stop watching."""
        if self.poll_task is not None:
            self.poll_task.cancel()
            self.poll_task = None
        if self.mount_poll is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.mount_poll.fileno())
            self.mount_poll.close()
            self.mount_poll = None
        if self.mountinfo is not None:
            os.close(self.mountinfo)
            self.mountinfo = None
        if self.inotify is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.inotify.fileno())
            self.inotify.close()
            self.inotify = None
        if self.chain_inotify is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.chain_inotify.fileno())
            self.chain_inotify.close()
            self.chain_inotify = None

    @property
    def polled_dirs(self) -> list[str]:
        """Directories currently watched by polling (for tests and status)."""
        return sorted(d.path for d in self.dirs.values() if d.polled)

    # ------------------------------------------------------------------ inotify

    def _add_watch(self, entry: _Dir) -> bool:
        if self.inotify is None:
            self._poll(entry, "inotify is unavailable")
            return False
        mask = _FILE_EVENTS | inflags.DELETE_SELF | inflags.MOVE_SELF | inflags.ONLYDIR
        if entry.run_locks:
            mask |= _RUN_LOCK_EVENTS
        try:
            wd = self.inotify.add_watch(entry.path, mask)
        except FileNotFoundError:
            self._poll(entry, "it does not exist (yet)")
            return False
        except OSError as err:
            # ENOSPC here means the user's inotify watch limit is reached.
            self._poll(entry, f"inotify cannot watch it ({err.strerror})")
            return False
        entry.wd = wd
        self.by_wd[wd] = entry
        try:
            info = os.stat(entry.path)
            entry.identity = (info.st_dev, info.st_ino)
        except OSError:
            entry.identity = None  # gone again: its IN_IGNORED follows
        if entry.polled:
            log.info("watching %s with inotify again", entry.path)
        entry.polled = False
        return True

    def _poll(self, entry: _Dir, why: str) -> None:
        if not entry.polled or entry.why_polled != why:
            log.warning("polling %s every %ss: %s", entry.path, self.poll_interval, why)
        entry.polled = True
        entry.why_polled = why
        entry.signatures = {
            name: _signature(os.path.join(entry.path, name)) for name in entry.files
        }

    def _on_readable(self) -> None:
        assert self.inotify is not None
        try:
            events = self.inotify.read(timeout=0)
        except OSError as err:
            log.error("reading inotify events failed (%s): rescanning", err)
            self.on_change({RESCAN})
            return
        changed: set[str] = set()
        lost: list[_Dir] = []
        for event in events:
            if event.mask & inflags.Q_OVERFLOW:
                log.warning("inotify queue overflowed: re-reading every flag")
                changed.add(RESCAN)
                continue
            entry = self.by_wd.get(event.wd)
            if entry is None:
                continue
            if event.mask & _SELF_GONE:
                lost.append(entry)
                continue
            name = event.name
            if not name and event.mask & inflags.ATTRIB:
                # The directory's own mode or owner changed: what could not be read
                # (or was readable) may have changed with it.
                changed.update(os.path.join(entry.path, n) for n in entry.files)
            elif name in entry.files or (entry.run_locks and name.endswith(".run")):
                changed.add(os.path.join(entry.path, name))
        for entry in lost:
            self._lost(entry)
            changed.update(os.path.join(entry.path, name) for name in entry.files)
            if entry.run_locks:
                changed.add(RESCAN)
        if changed:
            self.on_change(changed)
        if lost:
            self._schedule_poll()

    def _drop_watch(self, entry: _Dir) -> None:
        """Forget the directory's inotify watch (the kernel may have dropped it already)."""
        if entry.wd is None:
            return
        self.by_wd.pop(entry.wd, None)
        if self.inotify is not None:
            try:
                self.inotify.rm_watch(entry.wd)
            except OSError:
                pass  # already gone: IN_IGNORED or IN_UNMOUNT came first
        entry.wd = None

    def _lost(self, entry: _Dir) -> None:
        """The directory was deleted or moved: poll until it is back."""
        self._drop_watch(entry)
        # Maybe it is already back (rm -r && mkdir): try at once.
        if os.path.isdir(entry.path) and self._add_watch(entry):
            return
        self._poll(entry, "it was deleted or moved away")

    # ------------------------------------------------------------------ the path above

    def _start_chain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the directories above the watched ones: a watch stays on a directory
        (inode), not on its path, so a directory replaced higher up (a re-pointed
        symlink, a renamed parent) would leave guardd watching the old one."""
        try:
            self.chain_inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as err:
            log.warning(
                "cannot follow the directories above the flags (%s): a replaced parent "
                "directory is only seen after a reload",
                err.strerror or err,
            )
            return
        loop.add_reader(self.chain_inotify.fileno(), self._on_chain_readable)

    def _watch_chain(self) -> None:
        """Put watches on every directory of every watched path, until what the paths
        lead to is the same after the watches as before them (a directory made in
        between would otherwise go unseen)."""
        if self.chain_inotify is None:
            return
        for _ in range(8):
            wanted = self._chain_wanted()
            for directory in [d for d in self.chain_wds if d not in wanted]:
                self._unwatch_chain(directory)
            for directory in wanted:
                self._watch_chain_dir(directory)
            self.chain_names = wanted
            if self._chain_wanted() == wanted:
                return

    def _chain_wanted(self) -> dict[str, set[str]]:
        wanted: dict[str, set[str]] = {}
        for entry in self.dirs.values():
            for directory, names in path_chain(entry.path).items():
                wanted.setdefault(directory, set()).update(names)
        return wanted

    def _watch_chain_dir(self, directory: str) -> None:
        assert self.chain_inotify is not None
        try:
            wd = self.chain_inotify.add_watch(directory, _CHAIN_EVENTS)
        except OSError:
            self._unwatch_chain(directory)  # gone or unreadable: its parent tells us
            return
        old = self.chain_wds.get(directory)
        if old is not None and old != wd:
            self._unwatch_chain(directory)
        self.chain_wds[directory] = wd
        self.chain_by_wd.setdefault(wd, set()).add(directory)

    def _unwatch_chain(self, directory: str) -> None:
        wd = self.chain_wds.pop(directory, None)
        if wd is None:
            return
        paths = self.chain_by_wd.get(wd, set())
        paths.discard(directory)
        if paths:
            return
        self.chain_by_wd.pop(wd, None)
        if self.chain_inotify is not None:
            try:
                self.chain_inotify.rm_watch(wd)
            except OSError:
                pass  # the kernel dropped it already (the directory is gone)

    def _on_chain_readable(self) -> None:
        assert self.chain_inotify is not None
        try:
            events = self.chain_inotify.read(timeout=0)
        except OSError as err:
            log.error("reading inotify events failed (%s): rescanning", err)
            events = []
            overflow = True
        else:
            overflow = False
        moved = False
        for event in events:
            if event.mask & inflags.Q_OVERFLOW:
                overflow = True
                continue
            directories = self.chain_by_wd.get(event.wd)
            if not directories:
                continue
            if event.name:
                moved |= any(event.name in self.chain_names.get(d, ()) for d in directories)
            else:
                moved |= bool(
                    event.mask & (inflags.DELETE_SELF | inflags.MOVE_SELF | inflags.ATTRIB)
                )
        if not (moved or overflow):
            return
        changed = self._recheck()
        if overflow:
            changed.add(RESCAN)
        if changed:
            self.on_change(changed)
        self._schedule_poll()

    def _recheck(self) -> set[str]:
        """A directory above (or at) a watched path changed: watch what each path
        leads to now. Returns the files to re-read (all of a directory that moved)."""
        self._watch_chain()
        changed: set[str] = set()
        for entry in self.dirs.values():
            files = {os.path.join(entry.path, name) for name in entry.files}
            if entry.polled:
                if (
                    entry.why_polled in _MISSING
                    and not self._forced()
                    and os.path.isdir(entry.path)
                    and self._add_watch(entry)
                ):
                    changed |= files
                    if entry.run_locks:
                        changed.add(RESCAN)
                continue
            try:
                info = os.stat(entry.path)
                identity: tuple[int, int] | None = (info.st_dev, info.st_ino)
            except OSError:
                identity = None
            if identity == entry.identity:
                continue
            self._drop_watch(entry)
            entry.identity = None
            if identity is None:
                self._poll(entry, "it was deleted or moved away")
            else:
                log.info("%s leads to another directory now: watching that one", entry.path)
                self._watch_or_poll(entry, _read_mounts())
            changed |= files
            if entry.run_locks:
                changed.add(RESCAN)
        return changed

    # ------------------------------------------------------------------ mounts

    def _watch_mounts(self, loop: asyncio.AbstractEventLoop) -> None:
        """Be told when a file system is mounted or unmounted (systemd does the same):
        /proc/self/mountinfo polls EPOLLPRI on every change. Its own poll always says
        "readable", so it sits in an epoll of its own that waits for EPOLLPRI only."""
        try:
            self.mountinfo = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
            self.mount_poll = select.epoll()
            self.mount_poll.register(self.mountinfo, select.EPOLLPRI)
        except OSError as err:
            log.warning(
                "cannot follow mounts (%s): a later mount over a flag directory "
                "is only seen after a restart",
                err.strerror or err,
            )
            return
        loop.add_reader(self.mount_poll.fileno(), self._on_mounts)

    def _on_mounts(self) -> None:
        """Something was mounted or unmounted: move watches to what the paths are now."""
        assert self.mount_poll is not None
        self.mount_poll.poll(0)  # consume the change (level-triggered)
        mounts = _read_mounts()
        changed: set[str] = set()
        for entry in self.dirs.values():
            if entry.polled and not entry.why_polled.startswith("it is on "):
                continue  # polled by path anyway (missing, forced, no inotify)
            try:
                info = os.stat(entry.path)
            except OSError:
                continue  # gone: its own events (or the poller) cover that
            kind = fs_type(os.path.realpath(entry.path), mounts)
            if (info.st_dev, info.st_ino) == entry.identity and not needs_polling(kind):
                continue
            if entry.polled and needs_polling(kind):
                continue  # still on a network file system
            if entry.wd is not None:
                self._drop_watch(entry)
                entry.identity = None
            log.info("%s is on another file system now: watching it again", entry.path)
            self._watch_or_poll(entry, mounts)
            changed.update(os.path.join(entry.path, name) for name in entry.files)
            if entry.run_locks:
                changed.add(RESCAN)
        if changed:
            self.on_change(changed)
        self._schedule_poll()

    # ------------------------------------------------------------------ polling

    def _schedule_poll(self) -> None:
        """Run the poll loop only while some directory needs it: no idle wake-ups."""
        if self.loop is None or self.poll_task is not None:
            return
        if any(entry.polled for entry in self.dirs.values()):
            self.poll_task = self.loop.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        try:
            while any(entry.polled for entry in self.dirs.values()):
                await asyncio.sleep(self.poll_interval)
                polled = [entry for entry in self.dirs.values() if entry.polled]
                changed, back = await asyncio.to_thread(self._poll_once, polled)
                for entry in back:
                    if self.inotify is not None and not self._forced() and self._add_watch(entry):
                        # Changes between the last poll and the new watch: re-read all.
                        changed.update(os.path.join(entry.path, n) for n in entry.files)
                        if entry.run_locks:
                            changed.add(RESCAN)
                if changed:
                    self.on_change(changed)
        finally:
            self.poll_task = None

    @staticmethod
    def _forced() -> bool:
        return os.environ.get(POLL_ENV) == "1"

    @staticmethod
    def _poll_once(entries: list[_Dir]) -> tuple[set[str], list[_Dir]]:
        """Stat every polled file (in a worker thread: NFS may be slow)."""
        changed: set[str] = set()
        back = []
        for entry in entries:
            for name in entry.files:
                path = os.path.join(entry.path, name)
                signature = _signature(path)
                if signature != entry.signatures.get(name):
                    entry.signatures[name] = signature
                    changed.add(path)
            if entry.run_locks:
                # No open/close events here: let the daemon recount jobs each tick.
                changed.add(os.path.join(entry.path, ".run"))
            if entry.why_polled in _MISSING and os.path.isdir(entry.path):
                back.append(entry)
        return changed, back
