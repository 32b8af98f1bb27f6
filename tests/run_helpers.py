"""Helpers for guard-run's tests: a config on temporary directories, and guard-run,
guardctl and drains run as the real processes an operator would start."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardd.core.jobs import find_holders
from tests.helpers import Guardd, command

GUARD_RUN = command("guard-run")
NOBODY = pwd.getpwnam("nobody")


class Site:
    """A guardd config (scopes ``default`` and ``shop``) on its own directories.

    Usable with no daemon, or wrapped around a started Guardd's config.
    """

    def __init__(
        self, root: Path, *, settings: dict[str, Any] | None = None, config_path: Path | None = None
    ) -> None:
        self.root = root
        self.lock_dir = root / "lock"
        self.runtime_dir = root / "run"
        self.cache_home = root / "cache"
        self.config_path = config_path or root / "config.yaml"
        if config_path is None:
            self.settings: dict[str, Any] = {
                "lock_dir": str(self.lock_dir),
                "runtime_dir": str(self.runtime_dir),
                "node": "run-node",
                "scopes": {"shop": None},
                "http": {"listen": []},
            }
            self.settings.update(settings or {})
            self.config_path.write_text(yaml.safe_dump(self.settings))

    @classmethod
    def of_guardd(cls, daemon: Guardd) -> Site:
        """The Site of a (started) guardd: same config file, same directories."""
        return cls(daemon.root, config_path=daemon.config_path)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("GUARD_SCOPE", "GUARDD_CONFIG")}
        env["GUARDD_CONFIG"] = str(self.config_path)
        env["XDG_CACHE_HOME"] = str(self.cache_home)
        env.update(extra)
        return env

    # ------------------------------------------------------------------ files

    def flag(self, scope: str = "default") -> Path:
        return self.lock_dir / f"{scope}.lock"

    def turn_on(self, scope: str = "default", content: str = "") -> None:
        """Maintenance on the way an operator's ``touch`` does it."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.flag(scope).write_text(content)

    def turn_off(self, scope: str = "default") -> None:
        self.flag(scope).unlink(missing_ok=True)

    def run_lock(self, scope: str = "default") -> Path:
        return self.runtime_dir / f"{scope}.run"

    def holders(self, scope: str = "default") -> set[int]:
        """Live pids holding the scope's run lock (from /proc/locks)."""
        return find_holders({scope: str(self.run_lock(scope))})[scope]

    # ------------------------------------------------------------------ processes

    def run(
        self, *args: str, timeout: float = 30, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """guard-run ARGS, to completion."""
        return subprocess.run(
            [GUARD_RUN, *args],
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def popen(
        self, *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """guard-run ARGS, started in its own session so a test can kill what it left."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen([GUARD_RUN, *args], env=env or self.env(), text=True, **kwargs)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """guardctl ARGS against this config."""
        return subprocess.run(
            [command("guardctl"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# The two ways guard-run and guardctl meet a config: alone, and with guardd running on it.
SITE_VARIANTS = ["no-daemon", "guardd-running"]


def site_variant(variant: str, tmp_short: Path, make_guardd: Any) -> Site:
    """Scopes default and shop, with no daemon or with guardd started on the config."""
    if variant == "no-daemon":
        return Site(tmp_short)
    return Site.of_guardd(make_guardd({"scopes": {"shop": None}}).start())


def flock_drain(site: Site, scope: str = "default", *, timeout: float = 10.0) -> bool:
    """The drain half of the protocol, by hand: write the flag, *then* take the run lock
    exclusively (released at once). True once no job holds it."""
    site.turn_on(scope)
    site.runtime_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(site.run_lock(scope), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
    finally:
        os.close(fd)


def exclusive_now(path: Path) -> bool:
    """One non-blocking try at an exclusive lock: True when nobody holds ``path`` (also
    when it does not exist: then nobody can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def as_nobody(cmd: list[str]) -> list[str]:
    """``cmd`` run as the unprivileged user nobody (skips unless we are root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    return [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", *cmd]


def open_to_nobody(*paths: Path) -> None:
    """Let nobody traverse and read ``paths`` and their parents (a test's tmp tree)."""
    for path in paths:
        for part in [path, *path.parents]:
            if str(part) in ("/", "/tmp"):
                break
            mode = part.stat().st_mode & 0o7777
            part.chmod(mode | 0o055 if part.is_dir() else mode | 0o044)


def session_members(session: int) -> list[int]:
    """Pids of the live processes in ``session`` (every process group in it)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry))
    return members


def kill_session(proc: subprocess.Popen[str]) -> None:
    """Kill everything a test started in its own session (also the process groups
    guard-run --interrupt made in it), and reap guard-run."""
    deadline = time.monotonic() + 10
    # Again until none is left: a member may fork while we kill the others.
    while (members := session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in members:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    proc.communicate()
