"""A fake transport and a fake clock for in-process protocol tests (as uvicorn's tests do).

The protocol under test gets these instead of a socket and an event loop: what it
writes is collected, closing is recorded, and time moves only when a test says so,
so timeouts are tested exactly and without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import cast


class FakeTimer:
    """What ``loop.call_at`` returns: a deadline that can be cancelled."""

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The part of an event loop a protocol uses for timers; ``advance`` runs what is due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        return self.call_at(self.now + delay, callback)

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer due by then, in order."""
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback()
        self.now = end

    def pending(self) -> int:
        """Timers not yet run nor cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def as_loop(self) -> asyncio.AbstractEventLoop:
        """This clock, typed as the loop the protocols expect (they use only the above)."""
        return cast(asyncio.AbstractEventLoop, self)


class FakeTransport:
    """Collects writes; records half-closes, closes, aborts and flow control."""

    def __init__(self, protocol: asyncio.Protocol, peer: str = "127.0.0.1") -> None:
        self.protocol = protocol
        self.peer = peer
        self.chunks: list[bytes] = []
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size reports

    @property
    def written(self) -> bytes:
        return b"".join(self.chunks)

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = self.written
        self.chunks.clear()
        return data

    # asyncio.Transport, as far as the protocols use it
    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "write after close or EOF"
        self.chunks.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)


def connect(protocol: asyncio.Protocol, peer: str = "127.0.0.1") -> FakeTransport:
    """``connection_made`` with a fresh fake transport."""
    transport = FakeTransport(protocol, peer)
    protocol.connection_made(cast(asyncio.BaseTransport, transport))
    return transport
