"""The HAProxy agent-check responder: on each connection, one prebuilt line, then close.

HAProxy connects every ``agent-inter``, optionally sends an ``agent-send`` string,
and reads one line up to the first CR or LF; a reply without a line end is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import cast

from guardd.answers.policy import agent_line
from guardd.config.model import Config
from guardd.core.state import Snapshot

log = logging.getLogger(__name__)

# HAProxy hangs up once it has the line; a checker that does not is cut after this.
LINGER_SECONDS = 5.0


def encode_line(line: str) -> bytes:
    """The wire form of an agent line: exactly one line end, whatever ``line`` holds.

    policy.agent_line already flattens reasons; this guards the invariant on which
    HAProxy's parsing depends, independently of how the line was built.
    """
    body = line.rstrip("\n").replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return body.encode("utf-8", errors="replace") + b"\n"


# On an agent.named_listen port: how long HAProxy has to name the scope, and how
# long that line may be (a scope name is at most 64 characters).
NAME_TIMEOUT = 2.0
MAX_NAME_LINE = 256
UNKNOWN_SCOPE_LINE = encode_line("down #unknown scope")


class AgentShared:
    """The current replies, shared by every connection.

    One line per scope, made on first use and dropped when the scope's state
    changes: a flip of one scope rebuilds only its line.
    """

    def __init__(self, config: Config, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self.lines: dict[str, bytes] = {}
        self.line = self.line_for(config.agent.scope)
        self.connections: set[AgentConnection] = set()
        self.timeouts_logged = False

    def line_for(self, scope: str) -> bytes:
        """The reply for a configured scope, by its policy and ``withdraw_as``."""
        line = self.lines.get(scope)
        if line is None:
            config = self.config
            view = self.snapshot.view(scope)
            line = self.lines[scope] = encode_line(
                agent_line(
                    view.status,
                    config.scope_policy(scope),
                    config.scope_withdraw_as(scope),
                    other_node_serves=view.other_node_serves,
                )
            )
        return line

    def line_named(self, name: bytes) -> bytes:
        """The reply for the scope HAProxy named (``agent-send``), or "down #unknown scope"."""
        try:
            scope = name.strip().decode("ascii")
        except UnicodeDecodeError:
            return UNKNOWN_SCOPE_LINE
        if scope not in self.config.scopes:
            return UNKNOWN_SCOPE_LINE
        return self.line_for(scope)

    def publish(self, config: Config, snapshot: Snapshot, changed: Collection[str] | None) -> None:
        """A new state or config; ``changed``: the scopes whose state may differ (None: any)."""
        old = self.snapshot
        self.snapshot = snapshot
        if (
            config is not self.config
            or changed is None
            or snapshot.others_serving != old.others_serving
        ):
            self.config = config
            self.lines = {}
        else:
            for scope in changed:
                self.lines.pop(scope, None)
        self.line = self.line_for(config.agent.scope)

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


class NamedAgentConnection(AgentConnection):
    """``agent.named_listen``: read the line naming the scope, then answer as above.

    HAProxy sends its ``agent-send`` string as soon as it connects; without one
    within NAME_TIMEOUT, the connection is closed with no line (HAProxy then keeps
    the server's state, and guardd logs the misconfiguration once).
    """

    def __init__(self, shared: AgentShared, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(shared, loop)
        self.buffer = b""
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.shared.connections.add(self)
        self.timer = self.loop.call_later(NAME_TIMEOUT, self._no_name)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # drained
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_NAME_LINE:
                self._answer(UNKNOWN_SCOPE_LINE)
            return
        self._answer(self.shared.line_named(self.buffer[:end]))

    def eof_received(self) -> bool:
        if not self.answered and self.buffer:
            self._answer(self.shared.line_named(self.buffer))  # a name without a line end
        return False

    def _answer(self, line: bytes) -> None:
        stream = self.transport
        self.answered = True
        self.buffer = b""
        if stream is None:
            return
        stream.write(line)
        if stream.can_write_eof():
            stream.write_eof()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_SECONDS, self.drop)

    def _no_name(self) -> None:
        self.timer = None
        if not self.shared.timeouts_logged:
            self.shared.timeouts_logged = True
            log.warning(
                "agent.named_listen: a client named no scope within %ss "
                '(HAProxy needs agent-send "<scope>\\n"); closed without an answer '
                "(logged once)",
                NAME_TIMEOUT,
            )
        self.drop()
