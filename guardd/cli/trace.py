"""One audit line where the operator will look: the journal, syslog, or stderr.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) the line goes to the
journal over its native protocol, with structured fields (``GUARD_SCOPE``,
``GUARD_FLAG``...) that ``journalctl GUARD_SCOPE=shop`` can select; elsewhere to
syslog (``/dev/log``); where neither socket exists, to stderr, so that a skipped job
never vanishes without a trace. Imported only when there is something to say:
guard-run's in-service path never loads it.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
# Tests stand in for journald and syslogd with sockets of their own (no systemd
# runs here); nothing else should set these.
JOURNAL_SOCKET_ENV = "_GUARDD_JOURNAL_SOCKET"
SYSLOG_SOCKET_ENV = "_GUARDD_SYSLOG_SOCKET"

LOG_INFO = 6
LOG_NOTICE = 5
LOG_USER = 1


def under_systemd(environ: Mapping[str, str]) -> bool:
    """True when started by systemd (a service, or a timer's service)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """The journal's native protocol: ``KEY=value`` lines, or for a value with a
    newline ``KEY``, a 64-bit little-endian length, the value, and a newline."""
    parts = []
    for key, value in fields.items():
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def syslog_datagram(identifier: str, message: str, *, priority: int, now: float) -> bytes:
    """An RFC 3164 line as glibc's syslog() sends it: ``<PRI>Mmm dd hh:mm:ss ident[pid]: msg``."""
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
    pri = LOG_USER * 8 + priority
    return f"<{pri}>{stamp} {identifier}[{os.getpid()}]: {message}".encode(errors="replace")


def _send(path: str, data: bytes) -> bool:
    """One datagram to a Unix socket; False when there is none there or it fails.

    Non-blocking: a jammed journald or syslogd must not hang a cron job.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    except OSError:
        return False
    try:
        sock.connect(path)
        sock.send(data)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def record(
    identifier: str,
    message: str,
    fields: Mapping[str, str],
    *,
    priority: int = LOG_INFO,
    environ: Mapping[str, str] | None = None,
    stderr_fallback: bool = True,
) -> str:
    """Leave ``message`` where the operator will look; returns where it went
    ("journal", "syslog", "stderr", or "" when nowhere). Never raises."""
    env = os.environ if environ is None else environ
    if under_systemd(env):
        entry = {
            "MESSAGE": message,
            "PRIORITY": str(priority),
            "SYSLOG_IDENTIFIER": identifier,
            "SYSLOG_PID": str(os.getpid()),
            **{key: value for key, value in fields.items() if value},
        }
        if _send(env.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET, journal_datagram(entry)):
            return "journal"
    line = syslog_datagram(identifier, message, priority=priority, now=time.time())
    if _send(env.get(SYSLOG_SOCKET_ENV) or SYSLOG_SOCKET, line):
        return "syslog"
    if not stderr_fallback:
        return ""
    try:
        sys.stderr.write(f"{identifier}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass
    return "stderr"
