"""Shared test helpers: run the real commands, talk to the real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
# Generous bounds: these only stop a broken test from hanging, they measure nothing.
START_TIMEOUT = 15.0
EVENT_TIMEOUT = 10.0


def command(name: str) -> str:
    """Path of an installed console script (guardd, guardctl, guard-run)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: run `pip install -e .[test]`"
    return found


def run_guardctl(
    config: Path | str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``guardctl ARGS`` on ``config`` (as GUARDD_CONFIG), output captured as text."""
    return subprocess.run(
        [command("guardctl"), *args],
        env={**os.environ, "GUARDD_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def require_tool(name: str) -> str:
    """Path of a system tool; skip locally, fail in CI (GUARDD_REQUIRE_TOOLS=1)."""
    import pytest

    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None
    )
    if found:
        return found
    if os.environ.get("GUARDD_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required here (GUARDD_REQUIRE_TOOLS=1) but not installed")
    pytest.skip(f"{name} not installed (.ci/run installs it)")
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on a loopback address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server the test started; SIGKILL it if it has not gone in 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def short_tmp() -> Path:
    """A short directory: AF_UNIX socket paths are limited to ~107 bytes."""
    return Path(tempfile.mkdtemp(prefix="gd-", dir="/tmp"))


def wait_until(
    predicate: Any,
    *,
    timeout: float = EVENT_TIMEOUT,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NotifySocket:
    """A NOTIFY_SOCKET the test owns: collects what guardd sends to 'systemd'."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def collect(self, timeout: float = 0.0) -> list[str]:
        """Read every datagram that has arrived (waiting up to ``timeout`` for one)."""
        self.sock.settimeout(timeout if timeout > 0 else 0.0001)
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                break
            self.messages.append(data.decode())
            self.sock.settimeout(0.0001)
        return self.messages

    def wait_for(self, needle: str, *, timeout: float = EVENT_TIMEOUT, after: int = 0) -> str:
        """The first message (from index ``after``) containing ``needle``."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[after:]:
                if needle in message:
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} from guardd; got {self.messages}")
            self.collect(timeout=min(left, 0.2))

    def close(self) -> None:
        self.sock.close()


class Guardd:
    """A real guardd subprocess on its own directories, config and sockets."""

    def __init__(
        self, root: Path, settings: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.lock_dir = root / "lock"
        self.runtime_dir = root / "run"
        self.config_path = root / "config.yaml"
        self.log_path = root / "guardd.log"
        self.socket_path = str(self.runtime_dir / "guardd.sock")
        self.settings: dict[str, Any] = {
            "lock_dir": str(self.lock_dir),
            "runtime_dir": str(self.runtime_dir),
            "node": "test-node",
            "http": {"listen": []},
        }
        self.settings.update(settings or {})
        self.extra_env = env or {}
        self.notify = NotifySocket(root)
        self.process: subprocess.Popen[bytes] | None = None
        self.write_config()

    def write_config(self, text: str | None = None) -> None:
        """Write the config file (the settings as YAML, or raw text)."""
        self.config_path.write_text(text if text is not None else yaml.safe_dump(self.settings))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("WATCHDOG_USEC", None)
        env.pop("JOURNAL_STREAM", None)
        env["NOTIFY_SOCKET"] = self.notify.path
        env["GUARDD_CONFIG"] = str(self.config_path)
        env.update(self.extra_env)
        return env

    def flag(self, scope: str = "default") -> Path:
        return self.lock_dir / f"{scope}.lock"

    def start(self, *, wait_ready: bool = True) -> Guardd:
        seen = len(self.notify.collect())
        # stderr goes to a file, not a pipe: a pipe nobody reads would fill up and
        # block guardd's logging in a long test.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [command("guardd"), "--config", str(self.config_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if wait_ready:
            try:
                self.notify.wait_for("READY=1", timeout=START_TIMEOUT, after=seen)
            except AssertionError:
                self.process.kill()
                self.process.wait(timeout=5)
                raise AssertionError(f"guardd never became ready: {self.log()}") from None
        return self

    def log(self) -> str:
        """Everything guardd wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM, wait, return (exit code, stderr)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode, self.log()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.notify.close()

    # ------------------------------------------------------------------ control socket

    def connect(self) -> ControlClient:
        return ControlClient(self.socket_path)

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.connect() as client:
            return client.request(obj)


class ControlClient:
    """A line-oriented client of the control socket."""

    def __init__(self, path: str, timeout: float = EVENT_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "guardd closed the connection"
        result: dict[str, Any] = json.loads(line)
        return result

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send_raw(json.dumps(obj).encode() + b"\n")
        return self.read_line()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


@contextlib.contextmanager
def running_guardd(settings: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[Guardd]:
    """A started guardd that is stopped and cleaned up afterwards."""
    root = short_tmp()
    daemon = Guardd(root, settings, **kwargs)
    try:
        yield daemon.start()
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)
