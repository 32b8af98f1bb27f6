"""daemon/notify.py: sd_notify messages on a real datagram socket, and never blocking."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from guardd.daemon.notify import MAX_PENDING, Notifier, watchdog_interval
from tests.helpers import short_tmp


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers a test makes, their sockets closed afterwards (guardd keeps its own open)."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        if notifier.sock is not None:
            notifier.sock.close()


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A NOTIFY_SOCKET that a test reads (as systemd would)."""
    directory = short_tmp()
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    os.unlink(path)
    directory.rmdir()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return messages


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET (or with a relative one) the notifier is off and sends nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    off = Notifier()
    assert not off.enabled
    off.ready("x")  # a no-op, not an error


def test_ready_status_and_stopping_reach_systemd(
    systemd: socket.socket, notifiers: list[Notifier]
) -> None:
    """READY carries the status; an unchanged STATUS is not sent again; STOPPING ends."""
    notifier = Notifier()
    notifiers.append(notifier)
    assert notifier.enabled
    notifier.ready("1 scope, all off")
    notifier.status("1 scope, all off")  # unchanged: not sent
    notifier.status("default: on")
    notifier.watchdog()
    notifier.stopping()
    assert received(systemd) == [
        "READY=1\nSTATUS=1 scope, all off",
        "STATUS=default: on",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_reloading_carries_the_monotonic_time(
    systemd: socket.socket, notifiers: list[Notifier]
) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC (systemd's Type=notify-reload needs it)."""
    notifier = Notifier()
    notifiers.append(notifier)
    notifier.reloading()
    notifier.reloaded()
    first, second = received(systemd)
    lines = first.split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert second.startswith("READY=1\n")


def test_abstract_socket_address(
    monkeypatch: pytest.MonkeyPatch, notifiers: list[Notifier]
) -> None:
    """A NOTIFY_SOCKET starting with '@' is the abstract namespace."""
    name = f"guardd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier()
        notifiers.append(notifier)
        notifier.watchdog()
        sock.settimeout(2)
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_a_socket_nobody_reads_never_blocks_and_keeps_the_newest_status(
    systemd: socket.socket, notifiers: list[Notifier]
) -> None:
    """When systemd does not read, sends queue (bounded, one STATUS) and flush later."""

    async def scenario() -> tuple[list[str], list[str]]:
        notifier = Notifier()
        notifiers.append(notifier)
        sent = 0
        while not notifier.pending:  # fill the receiver's queue until a send would block
            notifier.send(f"X-FILL={sent}")
            sent += 1
            assert sent < 100_000
        for number in range(3 * MAX_PENDING):
            notifier.status(f"status {number}")
            notifier.watchdog()
        queued = list(notifier.pending)
        for _ in received(systemd):
            pass  # systemd reads again
        for _ in range(200):
            if not notifier.pending:
                break
            await asyncio.sleep(0.01)
        return queued, notifier.pending

    queued, left = asyncio.run(scenario())
    assert len(queued) <= MAX_PENDING
    statuses = [m for m in queued if m.startswith("STATUS=")]
    assert statuses == [f"STATUS=status {3 * MAX_PENDING - 1}"]
    assert queued.count("WATCHDOG=1") == 1
    assert left == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "self"}, 2.0),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """Half of WATCHDOG_USEC, only when asked and when WATCHDOG_PID (if set) is ours."""
    env = {k: str(os.getpid()) if v == "self" else v for k, v in env.items()}
    assert watchdog_interval(env) == expected
