"""The HTTP connection in-process (fake transport, fake clock): parsing, routing,
pipelining, bodies, flow control, timeouts and closing, without a socket or guardd."""

from __future__ import annotations

import json

import pytest

from guardd.answers.http.connection import HttpConnection
from guardd.answers.http.parse import LINGER_SECONDS, MAX_HEAD
from guardd.answers.http.replies import HttpSettings, HttpShared
from guardd.config.load import parse_config_text
from guardd.core.state import ScopeStatus, Snapshot
from tests.fakes import FakeClock, FakeTransport, connect

CONFIG = """
lock_dir: /nonexistent/lock
runtime_dir: /nonexistent/run
http: {header_timeout: 10s}
bypass: {paths: ["^/static/"]}
"""

OFF = Snapshot(statuses={})
ON = Snapshot(
    statuses={
        "default": ScopeStatus("default", "on", "2026-01-01T00:00:00Z", None, "db upgrade", 0)
    }
)


class Client:
    """One fake connection to a responder, and the clock it lives by."""

    def __init__(self, shared: HttpShared, clock: FakeClock) -> None:
        self.clock = clock
        self.connection = HttpConnection(shared, clock.as_loop())
        self.transport: FakeTransport = connect(self.connection)

    def send(self, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
        """Feed bytes; the responses written in reply (status, headers, body)."""
        self.connection.data_received(data)
        return responses(self.transport.take())


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split written bytes into responses (every answer carries Content-Length)."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("Content-Length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return found


class Responder:
    """The shared state every connection reads, switchable between off and on."""

    def __init__(self) -> None:
        self.settings = HttpSettings.from_config(parse_config_text(CONFIG, source="c"), None)
        self.shared = HttpShared(self.settings, OFF.view("default"))
        self.clock = FakeClock()

    def switch(self, snapshot: Snapshot) -> None:
        self.shared.publish(self.settings, snapshot.view("default"))

    def client(self) -> Client:
        return Client(self.shared, self.clock)


@pytest.fixture
def responder() -> Responder:
    return Responder()


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: shop.example", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_health_follows_the_state(responder: Responder) -> None:
    """/healthz: 200 pass while off, 503 fail with Retry-After and the marker while on."""
    client = responder.client()
    [(status, headers, body)] = client.send(get("/healthz"))
    assert status == 200 and json.loads(body)["status"] == "pass"
    assert "Guard-Maintenance" not in headers
    responder.switch(ON)
    [(status, headers, body)] = client.send(get("/healthz"))
    assert status == 503 and headers["Retry-After"] == "300"
    assert headers["Guard-Maintenance"] == "default"
    assert json.loads(body)["reason"] == "db upgrade"


def test_pipelined_requests_are_answered_in_order_in_one_write(responder: Responder) -> None:
    """Three requests in one segment: three answers, in order, written at once."""
    responder.switch(ON)
    client = responder.client()
    client.connection.data_received(get("/healthz") + get("/maintenance.json") + get("/gate"))
    assert len(client.transport.chunks) == 1
    statuses = [status for status, _, _ in responses(client.transport.take())]
    assert statuses == [503, 200, 403]  # /maintenance.json is a document: 200 either way


def test_a_head_split_anywhere_is_answered_once_complete(responder: Responder) -> None:
    """Byte by byte, nothing is answered until the blank line; then exactly one answer."""
    client = responder.client()
    request = get("/healthz")
    for byte in request[:-1]:
        assert client.send(bytes([byte])) == []
    [(status, _, _)] = client.send(request[-1:])
    assert status == 200


def test_head_gets_headers_without_a_body(responder: Responder) -> None:
    """HEAD: the GET's Content-Length, no body bytes."""
    responder.switch(ON)
    client = responder.client()
    client.connection.data_received(get("/", method="HEAD"))
    head, _, body = client.transport.take().partition(b"\r\n\r\n")
    assert b"Content-Length: " in head and body == b""


def test_page_or_json_by_path_and_accept(responder: Responder) -> None:
    """HTML page for browsers, JSON for API prefixes and Accept: application/json."""
    responder.switch(ON)
    client = responder.client()
    [(_, html, page)] = client.send(get("/shop"))
    [(_, api, _)] = client.send(get("/api/orders"))
    [(_, accept, _)] = client.send(get("/shop", "Accept: application/json"))
    assert html["Content-Type"].startswith("text/html") and b"db upgrade" in page
    assert api["Content-Type"] == accept["Content-Type"] == "application/json"


def test_request_body_is_skipped(responder: Responder) -> None:
    """A POST body (even split) is discarded; the request after it is parsed."""
    client = responder.client()
    post = get("/healthz", "Content-Length: 10", method="POST")
    assert len(client.send(post + b"01234")) == 1
    [(status, _, _)] = client.send(b"56789" + get("/healthz"))
    assert status == 200


def test_gate_open_path_exempt_and_closed(responder: Responder) -> None:
    """The gate: 204 while off; during maintenance an exempt path passes, others get 403."""
    client = responder.client()
    assert client.send(get("/gate", "X-Original-URI: /shop"))[0][0] == 204
    responder.switch(ON)
    assert client.send(get("/gate", "X-Original-URI: /static/app.css"))[0][0] == 204
    assert client.send(get("/gate", "X-Original-URI: /shop"))[0][0] == 403


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * MAX_HEAD + b"\r\n", 431),
    ],
)
def test_bad_requests_are_answered_and_closed(
    responder: Responder, data: bytes, status: int
) -> None:
    """Malformed, wrong version, ambiguous length, oversized: one answer, then half-close."""
    client = responder.client()
    [(answered, headers, _)] = client.send(data)
    assert answered == status and headers.get("Connection") == "close"
    assert client.transport.eof_written
    assert client.send(get("/healthz")) == []  # lingering: later input is only drained


def test_connection_close_lingers_then_is_cut(responder: Responder) -> None:
    """Connection: close is answered, half-closed, and cut after the linger time."""
    client = responder.client()
    [(status, headers, _)] = client.send(get("/healthz", "Connection: close"))
    assert status == 200 and headers["Connection"] == "close"
    assert client.transport.eof_written and not client.transport.is_closing()
    responder.clock.advance(min(LINGER_SECONDS, 10.0) + 0.01)
    assert client.transport.aborted


def test_http_1_0_closes_unless_keep_alive(responder: Responder) -> None:
    """HTTP/1.0 closes after one answer; with Connection: keep-alive it stays open."""
    plain = responder.client()
    plain.send(get("/healthz", version="1.0"))
    assert plain.transport.eof_written
    kept = responder.client()
    [(_, headers, _)] = kept.send(get("/healthz", "Connection: keep-alive", version="1.0"))
    assert headers["Connection"] == "keep-alive" and not kept.transport.eof_written


def test_unfinished_head_is_cut_at_header_timeout(responder: Responder) -> None:
    """A head still incomplete after header_timeout: the connection is closed."""
    client = responder.client()
    client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    responder.clock.advance(9.9)
    assert not client.transport.is_closing()
    responder.clock.advance(0.2)
    assert client.transport.is_closing()


def test_keep_alive_deadline_moves_with_each_request(responder: Responder) -> None:
    """Each answered request gives the client header_timeout more; idle beyond that: closed."""
    client = responder.client()
    for _ in range(3):
        responder.clock.advance(8)
        assert client.send(get("/healthz"))[0][0] == 200
    responder.clock.advance(9.9)
    assert not client.transport.is_closing()
    responder.clock.advance(0.2)
    assert client.transport.is_closing() and not client.transport.aborted
    assert responder.clock.pending() == 0


def test_a_client_that_does_not_read_is_flow_controlled(responder: Responder) -> None:
    """pause_writing stops reading and parsing; resume_writing answers what waited."""
    client = responder.client()
    client.connection.pause_writing()
    assert not client.transport.is_reading()
    assert client.send(get("/healthz") * 3) == []
    client.connection.resume_writing()
    assert client.transport.is_reading()
    assert [status for status, _, _ in responses(client.transport.take())] == [200, 200, 200]


def test_close_all_cuts_every_connection(responder: Responder) -> None:
    """Shutdown: every open connection is dropped and forgotten, timers cancelled."""
    clients = [responder.client() for _ in range(3)]
    assert len(responder.shared.connections) == 3
    responder.shared.close_all()
    assert all(client.transport.is_closing() for client in clients)
    assert responder.shared.connections == set()
    assert responder.clock.pending() == 0


def test_switch_takes_effect_on_a_kept_alive_connection(responder: Responder) -> None:
    """The state is read per request: an open connection sees the switch at once."""
    client = responder.client()
    assert client.send(get("/healthz"))[0][0] == 200
    responder.switch(ON)
    assert client.send(get("/healthz"))[0][0] == 503
    responder.switch(OFF)
    assert client.send(get("/healthz"))[0][0] == 200
