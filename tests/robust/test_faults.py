"""Faults around guardd: its notify socket, flag storms, its directories, crashes of
guardd and guardctl, a full disk. State ends correct, nothing is half-written,
guard-run is never affected."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Guardd, wait_until
from tests.robust.support import scope_fields

MakeGuardd = Callable[..., Guardd]


def test_notify_socket_nobody_reads_never_blocks_guardd(make_guardd: MakeGuardd) -> None:
    """A NOTIFY_SOCKET whose reader is stuck (PID 1 busy) never stalls guardd: it keeps
    answering through many state changes, and systemd gets the latest STATUS= once it
    reads again."""
    daemon = make_guardd().start()
    queue_length = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    flips = 2 * queue_length + 20  # every change sends a STATUS=: the queue overflows
    for flip in range(flips):
        if flip % 2 == 0:
            daemon.flag().touch()
        else:
            daemon.flag().unlink()
        want = "on" if flip % 2 == 0 else "off"
        started = time.monotonic()
        wait_until(lambda want=want: scope_fields(daemon)["state"] == want, what=want)
        assert time.monotonic() - started < 5.0, "guardd stalled on its notify socket"
    daemon.flag().touch()
    wait_until(lambda: scope_fields(daemon)["state"] == "on", what="final on")

    def last_status() -> str:
        statuses = [m for m in daemon.notify.collect(timeout=0.1) if m.startswith("STATUS=")]
        return statuses[-1] if statuses else ""

    # Reading again: what was queued arrives, the current summary last.
    wait_until(lambda: last_status() == "STATUS=maintenance: default on", what="last STATUS")
