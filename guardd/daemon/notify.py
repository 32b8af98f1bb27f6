"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING. A no-op outside systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

# Notifications kept while systemd does not read its socket; beyond this the oldest
# go (a newer STATUS= replaces an older one anyway).
MAX_PENDING = 16


def watchdog_interval(environ: dict[str, str] | os._Environ[str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    WATCHDOG_PID, when set, must be ours: the variable may be inherited from a parent.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Sends notifications to $NOTIFY_SOCKET when systemd gave us one.

    Never blocks the event loop: a datagram socket whose reader is busy (PID 1 in a
    storm of units, a queue of only ``net.unix.max_dgram_qlen`` messages) would
    block a plain send, and with it every HTTP answer. The socket is non-blocking;
    what does not fit waits in a short queue, flushed once the socket is writable.
    """

    def __init__(self) -> None:
        self.sock = _connect(os.environ.get("NOTIFY_SOCKET", ""))
        self.enabled = self.sock is not None
        self.pending: list[str] = []
        self._waiting_on: asyncio.AbstractEventLoop | None = None  # flush armed there
        self._last_status = ""

    def send(self, message: str) -> None:
        """Send raw ``KEY=VALUE`` lines; failures are ignored, as systemd expects."""
        if self.sock is None:
            return
        if not self.pending and self._try(message):
            return
        self._queue(message)

    def _try(self, message: str) -> bool:
        """Send now; False only when it must wait for room (it is not lost then)."""
        assert self.sock is not None
        try:
            self.sock.send(message.encode())
        except BlockingIOError:
            return False
        except OSError as err:
            log.debug("sd_notify %r failed: %s", message, err)  # systemd gone: ignored
        return True

    def _queue(self, message: str) -> None:
        if _plain_status(message):
            self.pending = [m for m in self.pending if not _plain_status(m)]
        elif message in self.pending and message == "WATCHDOG=1":
            return
        self.pending.append(message)
        del self.pending[:-MAX_PENDING]
        if self._waiting_on is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop left to flush from (shutdown): dropped
            assert self.sock is not None
            loop.add_writer(self.sock.fileno(), self._flush)
            self._waiting_on = loop
            log.warning("systemd is not reading its notify socket; queueing notifications")

    def _flush(self) -> None:
        while self.pending and self._try(self.pending[0]):
            del self.pending[0]
        if not self.pending and self._waiting_on is not None and self.sock is not None:
            self._waiting_on.remove_writer(self.sock.fileno())
            self._waiting_on = None
            log.info("systemd reads its notify socket again")

    def ready(self, status: str) -> None:
        """Listeners bound and state read."""
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """One-line summary; sent only when it changed."""
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """Start of a SIGHUP reload: RELOADING=1 with the monotonic time systemd wants."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self) -> None:
        """End of a reload, whether the new config was taken or not."""
        self.send(f"READY=1\nSTATUS={self._last_status}")

    def watchdog(self) -> None:
        """Tell systemd the loop is alive."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1")


def _plain_status(message: str) -> bool:
    """A STATUS= line alone: only the newest one is worth sending."""
    return message.startswith("STATUS=") and "\n" not in message


def _connect(address: str) -> socket.socket | None:
    """A non-blocking datagram socket connected to $NOTIFY_SOCKET, or None."""
    if not address or address[0] not in "/@":
        return None
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except OSError as err:
        sock.close()
        log.debug("cannot reach NOTIFY_SOCKET %s: %s", address, err)
        return None
    return sock
