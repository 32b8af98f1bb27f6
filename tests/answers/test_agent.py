"""The HAProxy agent-check port: one line ending in \\n, then close; on real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from guardd.answers.agent import encode_line
from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import write_flag


@dataclass
class Agent:
    """A running guardd with its agent-check port."""

    guardd: Guardd
    port: int
    host: str = "127.0.0.1"

    def read(self, send: bytes = b"") -> bytes:
        """Connect, optionally send an agent-send string, read until the server closes."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            if send:
                sock.sendall(send)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    def wait_for(self, line: bytes) -> None:
        wait_until(lambda: self.read() == line, what=f"agent line {line!r}")


@pytest.fixture
def start_agent(make_guardd: Callable[..., Guardd]) -> Callable[..., Agent]:
    """Start a guardd with only the agent-check port, on a free loopback port."""

    def factory(agent: dict[str, Any] | None = None, **settings: Any) -> Agent:
        port = free_port()
        agent_settings = {"listen": [f"127.0.0.1:{port}"], **(agent or {})}
        daemon = make_guardd({"agent": agent_settings, **settings}).start()
        return Agent(daemon, port)

    return factory


def test_in_service_line(start_agent: Callable[..., Agent]) -> None:
    """Scope off: exactly `up ready 100%\\n`, then the server closes."""
    assert start_agent().read() == b"up ready 100%\n"


def test_maint_with_reason(start_agent: Callable[..., Agent]) -> None:
    """withdraw (default) + on: `maint #<reason>\\n`."""
    agent = start_agent()
    write_flag(agent.guardd.flag(), {"reason": "kernel upgrade"})
    agent.wait_for(b"maint #kernel upgrade\n")


def test_maint_without_reason(start_agent: Callable[..., Agent]) -> None:
    """A bare `touch` flag: `maint\\n` with no empty ` #`."""
    agent = start_agent()
    agent.guardd.flag().parent.mkdir(parents=True, exist_ok=True)
    agent.guardd.flag().touch()
    agent.wait_for(b"maint\n")


@pytest.mark.parametrize("withdraw_as", ["drain", "down", "maint"])
def test_withdraw_as(start_agent: Callable[..., Agent], withdraw_as: str) -> None:
    """agent.withdraw_as chooses the word HAProxy gets during maintenance."""
    agent = start_agent({"withdraw_as": withdraw_as})
    write_flag(agent.guardd.flag(), {"reason": "r"})
    agent.wait_for(f"{withdraw_as} #r\n".encode())


def test_stay_policy_keeps_server_ready(start_agent: Callable[..., Agent]) -> None:
    """http.policy stay: the agent keeps answering `up ready 100%` in maintenance."""
    agent = start_agent(http={"policy": "stay", "listen": []})
    write_flag(agent.guardd.flag(), {"reason": "everyone is down"})
    wait_until(
        lambda: agent.guardd.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="state on",
    )
    assert agent.read() == b"up ready 100%\n"


def test_back_in_service_after_flag_removal(start_agent: Callable[..., Agent]) -> None:
    """Removing the flag brings back `up ready 100%` (which also clears HAProxy's MAINT)."""
    agent = start_agent()
    write_flag(agent.guardd.flag(), {"reason": "r"})
    agent.wait_for(b"maint #r\n")
    agent.guardd.flag().unlink()
    agent.wait_for(b"up ready 100%\n")


def test_hostile_reason_stays_on_one_line(start_agent: Callable[..., Agent]) -> None:
    """Control characters in a reason never split the line: one \\n, at the end, no CR."""
    agent = start_agent()
    write_flag(agent.guardd.flag(), {"reason": "a\r\nup ready\x00 100%\n\tb" + "x" * 500})
    wait_until(lambda: agent.read() != b"up ready 100%\n", what="maintenance line")
    line = agent.read()
    assert line.startswith(b"maint #a up ready 100% b")
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert b"\r" not in line
    assert b"\x00" not in line
    assert len(line) < 300


def test_agent_send_string_is_ignored(start_agent: Callable[..., Agent]) -> None:
    """An `agent-send` string from HAProxy does not change or break the reply."""
    assert start_agent().read(send=b"backend/server\n") == b"up ready 100%\n"


def test_agent_scope(start_agent: Callable[..., Agent]) -> None:
    """agent.scope answers for its own scope, independently of http.scope."""
    agent = start_agent({"scope": "shop"}, scopes={"shop": {}, "blog": {}})
    write_flag(agent.guardd.flag("blog"), {"reason": "blog"})
    wait_until(
        lambda: agent.guardd.request({"op": "status"})["scopes"]["blog"]["state"] == "on",
        what="blog on",
    )
    assert agent.read() == b"up ready 100%\n"
    write_flag(agent.guardd.flag("shop"), {"reason": "shop"})
    agent.wait_for(b"maint #shop\n")


def test_draining_counts_as_maintenance(start_agent: Callable[..., Agent]) -> None:
    """While jobs still drain, HAProxy already gets the maintenance word."""
    agent = start_agent()
    lock = agent.guardd.runtime_dir / "default.run"
    code = (
        "import fcntl, os, signal, sys\n"
        "signal.alarm(60)\n"
        f"fd = os.open({str(lock)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as job:
        assert job.stdout is not None
        assert job.stdin is not None
        assert job.stdout.readline() == "locked\n"
        write_flag(agent.guardd.flag(), {"reason": "deploy"})
        wait_until(
            lambda: (
                agent.guardd.request({"op": "status"})["scopes"]["default"]["state"] == "draining"
            ),
            what="draining",
        )
        assert agent.read() == b"maint #deploy\n"
        job.stdin.close()
        job.wait(timeout=10)


def test_many_quick_connections(start_agent: Callable[..., Agent]) -> None:
    """A burst of checks (several load balancers) each gets the full line."""
    agent = start_agent()
    socks = [socket.create_connection(("127.0.0.1", agent.port), timeout=10) for _ in range(50)]
    try:
        for sock in socks:
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            assert received == b"up ready 100%\n"
    finally:
        for sock in socks:
            sock.close()


def test_agent_on_ipv6(make_guardd: Callable[..., Guardd]) -> None:
    """The agent port binds IPv6 addresses too (skipped without IPv6 loopback)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port("::1")
    daemon = make_guardd({"agent": {"listen": [f"[::1]:{port}"]}}).start()
    assert Agent(daemon, port, host="::1").read() == b"up ready 100%\n"


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        ("up ready 100%\n", b"up ready 100%\n"),
        ("maint #a\rb", b"maint #a b\n"),
        ("maint #a\nb\n", b"maint #a b\n"),
        ("drain #\x00x", b"drain # x\n"),
        ("down #caf\u00e9", "down #caf\u00e9\n".encode()),
    ],
)
def test_encode_line_guarantees_one_line(line: str, wire: bytes) -> None:
    """encode_line: whatever it is given, exactly one line end, at the end, no CR or NUL."""
    assert encode_line(line) == wire
