"""Helpers of the robustness suite: daemons started through a wrapper (prlimit,
setpriv), one long-lived daemon per module, and what a test reads from /proc."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import START_TIMEOUT, Guardd, command, short_tmp, wait_until
from tests.httpclient import get

# What only a crashed or confused daemon writes to its log: a traceback, asyncio's
# report of a callback or protocol that raised, a task whose exception was lost.
CRASH_MARKERS = (
    "Traceback",
    "Fatal error",
    "Exception in callback",
    "exception was never retrieved",
    "Unhandled exception",
)


class WrappedGuardd(Guardd):
    """A Guardd started through a command prefix (``prlimit ...``, ``setpriv ...``)."""

    def __init__(
        self,
        root: Path,
        settings: dict[str, Any] | None = None,
        *,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(root, settings, env=env)
        self.prefix = list(prefix)

    def start(self, *, wait_ready: bool = True) -> WrappedGuardd:
        seen = len(self.notify.collect())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, command("guardd"), "--config", str(self.config_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if wait_ready:
            try:
                self.notify.wait_for("READY=1", timeout=START_TIMEOUT, after=seen)
            except AssertionError:
                self.close()
                raise AssertionError(f"guardd never became ready: {self.log()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@contextlib.contextmanager
def long_lived_guardd(
    settings: dict[str, Any] | None = None,
    *,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[WrappedGuardd]:
    """A started guardd for a whole test module; it must not crash meanwhile."""
    root = short_tmp()
    daemon = WrappedGuardd(root, settings, prefix=prefix, env=env)
    try:
        daemon.start()
        yield daemon
        assert daemon.process is not None
        assert daemon.process.poll() is None, f"guardd died: {daemon.log()}"
        assert_no_crash(daemon.log())
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)


def assert_no_crash(log: str) -> None:
    """The log shows no traceback and no callback or protocol that raised."""
    for marker in CRASH_MARKERS:
        assert marker not in log, f"{marker!r} in guardd's log:\n{log[-4000:]}"


def scope_fields(daemon: Guardd, scope: str = "default") -> dict[str, Any]:
    """The scope's five fields from the control socket's status reply."""
    fields: dict[str, Any] = daemon.request({"op": "status"})["scopes"][scope]
    return fields


def wait_state(daemon: Guardd, state: str, scope: str = "default", **extra: Any) -> None:
    """Wait until the status reply shows ``state`` (and any ``extra`` field values)."""

    def reached() -> bool:
        fields = scope_fields(daemon, scope)
        return fields["state"] == state and all(fields[k] == v for k, v in extra.items())

    wait_until(reached, what=f"{scope} {state} {extra or ''}".strip())


def http_state(port: int) -> str:
    """The state /maintenance.json reports."""
    state: str = get(port, "/maintenance.json").json()["state"]
    return state


def run_as_nobody(daemon: WrappedGuardd) -> None:
    """Make ``daemon`` start as the unprivileged user nobody, with its directories
    owned by nobody (root bypasses file permissions, an unprivileged daemon does not).
    Skips unless we are root and setpriv is installed."""
    import pytest

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run guardd as nobody")
    nobody = pwd.getpwnam("nobody")
    for part in [daemon.root, *daemon.root.parents]:
        if str(part) in ("/", "/tmp"):
            break
        part.chmod(part.stat().st_mode | 0o055)
    for directory in (daemon.lock_dir, daemon.runtime_dir):
        directory.mkdir(exist_ok=True)
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    Path(daemon.notify.path).chmod(0o666)
    daemon.prefix = [
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        *daemon.prefix,
    ]


# Taken while a test changes a kernel setting: test runs on the same machine at the
# same time (a developer's next to CI's) take turns, so that none saves another's
# temporary value as the one to restore.
KERNEL_SETTINGS_LOCK = "/tmp/.guardd-tests-kernel-settings.lock"


@contextlib.contextmanager
def kernel_setting(name: str, value: int) -> Iterator[None]:
    """Set /proc/sys/<name> (root only) for what starts inside the block; restored."""
    import pytest

    knob = Path("/proc/sys") / name
    if os.geteuid() != 0 or not os.access(knob, os.W_OK):
        pytest.skip(f"needs root to change {name}")
    with open(KERNEL_SETTINGS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = knob.read_text()
        knob.write_text(f"{value}\n")
        try:
            yield
        finally:
            knob.write_text(saved)


# --------------------------------------------------------------------------- /proc


def fd_targets(pid: int) -> list[str]:
    """What each open descriptor of ``pid`` points at (socket:[...], a path, ...)."""
    targets = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"{base}/{name}"))
    return sorted(targets)


def file_targets(pid: int) -> list[str]:
    """The open descriptors of ``pid`` that are files or directories (not sockets,
    pipes, or anonymous inodes such as epoll and inotify)."""
    return [t for t in fd_targets(pid) if t.startswith("/")]


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def json_line(data: bytes) -> Any:
    """One JSON document that was sent as exactly one line."""
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data[:200]
    return json.loads(data)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted on ``directory`` (root only), unmounted afterwards. Also
    where a file can carry an mtime past year 9999 (ext4 clamps them to 2446)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


# --------------------------------------------------------------------------- slow job counts


# Holds ``count`` POSIX locks on byte ranges of one file (each its own line in
# /proc/locks), so that every job count, which reads /proc/locks, takes tens of ms.
HOLD_LOCKS = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "for i in range(int(sys.argv[2])):\n"
    "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 2 * i)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextlib.contextmanager
def slow_job_counts(directory: Path, count: int = 2500) -> Iterator[None]:
    """Make /proc/locks long (and every job count slow) for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKS, str(directory / "many.locks"), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate(timeout=10)  # closes its stdin: it exits
