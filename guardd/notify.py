"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING. A no-op outside systemd."""

from __future__ import annotations

import logging
import os
import time

import sdnotify

log = logging.getLogger(__name__)


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
    """Sends notifications to $NOTIFY_SOCKET when systemd gave us one."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self._last_status = ""

    def send(self, message: str) -> None:
        """Send raw ``KEY=VALUE`` lines; failures are ignored, as systemd expects."""
        if self._notifier is not None:
            self._notifier.notify(message)

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
