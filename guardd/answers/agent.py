"""The HAProxy agent-check responder: on each connection, one prebuilt line, then close.

HAProxy connects every ``agent-inter``, optionally sends an ``agent-send`` string,
and reads one line up to the first CR or LF; a reply without a line end is ignored.
"""

from __future__ import annotations

import asyncio
from typing import cast

from guardd.answers.policy import agent_line
from guardd.core.choices import Policy, WithdrawAs
from guardd.core.state import ScopeView

# HAProxy hangs up once it has the line; a checker that does not is cut after this.
LINGER_SECONDS = 5.0


def encode_line(line: str) -> bytes:
    """The wire form of an agent line: exactly one line end, whatever ``line`` holds.

    policy.agent_line already flattens reasons; this guards the invariant on which
    HAProxy's parsing depends, independently of how the line was built.
    """
    body = line.rstrip("\n").replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return body.encode("utf-8", errors="replace") + b"\n"


class AgentShared:
    """The current reply, shared by every connection and swapped whole on change."""

    def __init__(self) -> None:
        self.line = encode_line("up ready 100%")
        self.connections: set[AgentConnection] = set()

    def publish(self, view: ScopeView, policy: Policy, withdraw_as: WithdrawAs) -> None:
        """Rebuild the reply for a new state or config."""
        self.line = encode_line(
            agent_line(view.status, policy, withdraw_as, other_node_serves=view.other_node_serves)
        )

    def close_all(self) -> None:
        """Cut every open connection (shutdown)."""
        for connection in list(self.connections):
            connection.drop()


class AgentConnection(asyncio.Protocol):
    """Write the line at once, half-close, drain whatever HAProxy sent, close."""

    def __init__(self, shared: AgentShared, loop: asyncio.AbstractEventLoop) -> None:
        self.shared = shared
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = stream = cast(asyncio.Transport, transport)
        self.shared.connections.add(self)
        stream.write(self.shared.line)
        # Half-close rather than close: closing with an unread agent-send string in
        # the socket would reset the connection, possibly before HAProxy reads us.
        if stream.can_write_eof():
            stream.write_eof()
        self.timer = self.loop.call_later(LINGER_SECONDS, self.drop)

    def data_received(self, data: bytes) -> None:
        """``agent-send`` strings carry nothing guardd answers differently to."""

    def eof_received(self) -> bool:
        return False  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def drop(self) -> None:
        """Cut the connection now."""
        if self.transport is not None:
            self.transport.abort()
