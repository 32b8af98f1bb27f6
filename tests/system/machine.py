"""A clean Debian 12 root file system, booted with systemd-nspawn, for the system tests.

The root file system is built once by mmdebstrap and cached as a tar file keyed on
what goes into it; each test run unpacks its own copy, so the cache stays clean.
A container is only ever booted from such a copy: never ``-D /`` (a booted systemd
cleans /tmp and more on the file system it runs on).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# What a fresh Debian 12 server running guardd has, plus guardd's dependencies (the
# package itself is installed with dpkg inside the booted container, offline).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "cron",
    "python3",
    "python3-yaml",
    "python3-uvloop",
    "python3-prometheus-client",
    "procps",
    "util-linux",
    "adduser",
    "passwd",
)
CACHE_DIR = Path(os.environ.get("GUARDD_ROOTFS_CACHE", "/var/cache/guardd-tests"))
RECIPE_VERSION = 1  # bump when the way the tar is made changes


def rootfs_key() -> str:
    """Cache key: everything that decides the content of the root file system."""
    recipe = {
        "suite": SUITE,
        "mirror": MIRROR,
        "variant": VARIANT,
        "packages": sorted(PACKAGES),
        "recipe": RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_rootfs(mmdebstrap: str) -> Path:
    """The cached root file system tar, built first when this key has none (~40 s)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    if target.exists():
        return target
    partial = target.with_suffix(f".{os.getpid()}.partial.tar")
    try:
        subprocess.run(
            [
                mmdebstrap,
                "--quiet",
                f"--variant={VARIANT}",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
                MIRROR,
            ],
            check=True,
            timeout=900,
        )
        os.replace(partial, target)  # whole or absent: a killed build leaves no cache
    finally:
        partial.unlink(missing_ok=True)
    # Keep one root file system (about 250 MB): those of older package lists go.
    for old in CACHE_DIR.glob(f"rootfs-{SUITE}-*.tar"):
        if old != target and re.fullmatch(rf"rootfs-{SUITE}-[0-9a-f]{{16}}\.tar", old.name):
            old.unlink(missing_ok=True)
    return target


def unpack(tar: Path, into: Path) -> Path:
    """A private copy of the root file system for one test run."""
    root = into / "rootfs"
    root.mkdir()
    # tar itself: owners, modes, device nodes and capabilities as mmdebstrap made them.
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-xpf", str(tar), "-C", str(root)],
        check=True,
        timeout=300,
    )
    return root


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@contextlib.contextmanager
def one_container_at_a_time(*, timeout: float = 900.0) -> Iterator[None]:
    """Hold a machine-wide lock while a container runs.

    Booted with --register=no --keep-unit on a host without systemd, a container's
    systemd manages the cgroup tree it finds; two at once would manage the same one.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "boot.lock").open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another system test kept its container running") from None
                time.sleep(1)
        yield


def boot(nspawn: str, root: Path, results: Path, *, timeout: float) -> float:
    """Boot ``root`` until it powers itself off; returns the wall time in seconds.

    On timeout the container is asked to stop (SIGTERM to nspawn), then killed by pid:
    its init first (killing a PID namespace's init ends every process in it), then
    nspawn. Raises TimeoutError then, CalledProcessError on a non-zero exit.
    """
    assert root.resolve() != Path("/"), "never boot the host's own root"
    log = (results / f"nspawn-{time.time_ns()}.log").open("wb")
    started = time.monotonic()
    with log, one_container_at_a_time():
        process = subprocess.Popen(
            [
                nspawn,
                "--quiet",
                f"--directory={root}",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
                f"--bind={results}:/results",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for child in _children(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                process.kill()
                process.wait(timeout=15)
            raise TimeoutError(f"the container did not power off within {timeout:.0f} s") from None
    if status != 0:
        raise subprocess.CalledProcessError(status, "systemd-nspawn")
    return time.monotonic() - started


def remove_rootfs(root: Path) -> None:
    """Delete a copy once no container runs from it (nspawn's mounts died with it)."""
    assert root.resolve() != Path("/") and root.name == "rootfs"
    shutil.rmtree(root, ignore_errors=True)
