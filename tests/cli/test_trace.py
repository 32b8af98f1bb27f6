"""The audit trace's wire formats (journal native protocol, syslog) and where a line
goes when a socket is missing; real datagram sockets stand in for journald/syslogd."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardd.cli.trace import (
    JOURNAL_SOCKET_ENV,
    SYSLOG_SOCKET_ENV,
    journal_datagram,
    record,
    syslog_datagram,
    under_systemd,
)


@pytest.fixture
def sink(tmp_short: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket (journald or syslogd's stand-in)."""
    path = str(tmp_short / "sink")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_journal_datagram_plain_and_multiline_values() -> None:
    """KEY=value lines; a value with a newline uses the binary form (length-prefixed)."""
    data = journal_datagram({"MESSAGE": "one\ntwo", "PRIORITY": "6"})
    value = b"one\ntwo"
    assert data == b"MESSAGE\n" + struct.pack("<Q", len(value)) + value + b"\nPRIORITY=6\n"


def test_syslog_datagram_shape() -> None:
    """<PRI>Mmm dd hh:mm:ss ident[pid]: message, facility user."""
    line = syslog_datagram("guard-run", "hello", priority=6, now=0).decode()
    assert line.startswith("<14>") and line.endswith("]: hello") and " guard-run[" in line


def test_under_systemd() -> None:
    """JOURNAL_STREAM or INVOCATION_ID mean systemd started us; nothing else does."""
    assert under_systemd({"JOURNAL_STREAM": "8:1"}) and under_systemd({"INVOCATION_ID": "x"})
    assert not under_systemd({}) and not under_systemd({"JOURNAL_STREAM": ""})


def test_record_prefers_journal_then_syslog(
    sink: tuple[str, socket.socket], tmp_short: Path
) -> None:
    """Under systemd the journal gets it (with the extra fields, empty ones left out);
    with the journal socket missing, syslog does."""
    path, sock = sink
    env = {"INVOCATION_ID": "x", JOURNAL_SOCKET_ENV: path, SYSLOG_SOCKET_ENV: path}
    assert (
        record("guardctl", "shop: on", {"GUARD_SCOPE": "shop", "GUARD_NOTE": ""}, environ=env)
        == "journal"
    )
    entry = sock.recv(65536)
    assert b"GUARD_SCOPE=shop\n" in entry and b"GUARD_NOTE" not in entry
    assert b"SYSLOG_IDENTIFIER=guardctl\n" in entry
    env[JOURNAL_SOCKET_ENV] = str(tmp_short / "none")
    assert record("guardctl", "shop: on", {}, environ=env) == "syslog"
    assert sock.recv(65536).endswith(b"]: shop: on")


def test_record_without_sockets(tmp_short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Neither socket: stderr, unless the caller wants no stderr (guardctl's audit)."""
    env = {JOURNAL_SOCKET_ENV: str(tmp_short / "a"), SYSLOG_SOCKET_ENV: str(tmp_short / "b")}
    assert record("guard-run", "skipped", {}, environ=env) == "stderr"
    assert capsys.readouterr().err == "guard-run: skipped\n"
    assert record("guardctl", "on", {}, environ=env, stderr_fallback=False) == ""
    assert capsys.readouterr().err == ""
