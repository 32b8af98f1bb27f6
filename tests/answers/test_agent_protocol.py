"""The agent-check connection in-process (fake transport, fake clock): one line, half-close,
drain, cut after the linger time."""

from __future__ import annotations

from guardd.answers.agent import LINGER_SECONDS, AgentConnection, AgentShared
from guardd.core.state import ScopeStatus, Snapshot
from tests.fakes import FakeClock, connect

ON = Snapshot(
    statuses={"default": ScopeStatus("default", "on", "2026-01-01T00:00:00Z", None, "a\nb", 0)}
)


def test_line_then_half_close_then_cut_after_linger() -> None:
    """The line is written at once with a half-close; a checker that stays is cut later."""
    shared, clock = AgentShared(), FakeClock()
    transport = connect(AgentConnection(shared, clock.as_loop()))
    assert transport.take() == b"up ready 100%\n"
    assert transport.eof_written and not transport.closed
    clock.advance(LINGER_SECONDS - 0.01)
    assert not transport.closed
    clock.advance(0.02)
    assert transport.aborted and shared.connections == set()


def test_agent_send_input_is_ignored_and_hang_up_cancels_the_timer() -> None:
    """What HAProxy sends changes nothing; its hang-up forgets the connection and its timer."""
    shared, clock = AgentShared(), FakeClock()
    connection = AgentConnection(shared, clock.as_loop())
    transport = connect(connection)
    connection.data_received(b"hello from haproxy\n")
    assert transport.take() == b"up ready 100%\n"
    connection.connection_lost(None)
    assert shared.connections == set() and clock.pending() == 0


def test_published_state_is_what_new_connections_get() -> None:
    """After publish: maintenance is announced, as exactly one line whatever the reason."""
    shared, clock = AgentShared(), FakeClock()
    shared.publish(ON.view("default"), "withdraw", "drain")
    line = connect(AgentConnection(shared, clock.as_loop())).take()
    assert line.startswith(b"drain") and line.count(b"\n") == 1 and line.endswith(b"\n")


def test_close_all_cuts_every_open_connection() -> None:
    """Shutdown drops every connection still lingering."""
    shared, clock = AgentShared(), FakeClock()
    transports = [connect(AgentConnection(shared, clock.as_loop())) for _ in range(3)]
    shared.close_all()
    assert all(t.aborted for t in transports) and shared.connections == set()
