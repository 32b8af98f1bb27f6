"""Garbage on every port: arbitrary bytes sent to the HTTP responder, the agent-check
port and the control socket never crash guardd nor wedge anyone else.

One guardd serves the whole module (maintenance on, every gate bypass configured, so
that fuzzed gate requests reach the deepest code). After each example the fuzzing
connection is still open while a fresh client must get a correct answer on each of
the three ports; then the fuzzing client hangs up and what it received is checked.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import ControlClient, free_port
from tests.httpclient import get, write_flag
from tests.robust.support import WrappedGuardd, assert_no_crash, long_lived_guardd, wait_state

REASON = "fuzzing"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Every status the responder can give; anything else on the wire is a bug.
HTTP_STATUSES = {200, 204, 302, 400, 403, 404, 431, 503, 505}
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
# A client that neither finishes nor hangs up is read for at most this long.
READ_TIMEOUT = 5.0


@dataclass
class Target:
    """The module's guardd and its ports."""

    daemon: WrappedGuardd
    http_port: int
    agent_port: int


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """One guardd in maintenance with HTTP, agent and every bypass configured."""
    http_port, agent_port = free_port(), free_port()
    settings_ = {
        "scopes": {"shop": None},
        "http": {"listen": [f"127.0.0.1:{http_port}"], "header_timeout": "3s"},
        "agent": {"listen": [f"127.0.0.1:{agent_port}"]},
        "bypass": {
            "paths": ["/static/", "/status$"],
            "cidrs": ["10.0.0.0/8", "2001:db8::/32"],
            "trusted_proxies": ["127.0.0.1"],
            "secret": "s3cret-s3cret-s3cret",
            "insecure_cookie": True,
        },
    }
    with long_lived_guardd(settings_) as daemon:
        write_flag(daemon.flag(), {"reason": REASON})
        wait_state(daemon, "on", reason=REASON)
        yield Target(daemon, http_port, agent_port)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by READ_TIMEOUT)."""
    sock.settimeout(READ_TIMEOUT)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            shown = received[:300]
            raise AssertionError(f"guardd neither answered nor hung up: {shown!r}") from None
        if not chunk:
            return received
        received += chunk


def assert_everyone_else_served(target: Target) -> None:
    """Fresh clients get correct answers on all three ports; the log shows no crash."""
    health = get(target.http_port, "/healthz")
    assert health.status == 503 and health.header("guard-maintenance") == "default"
    assert health.json()["reason"] == REASON
    with socket.create_connection(("127.0.0.1", target.agent_port), timeout=5) as agent:
        assert read_all(agent) == f"maint #{REASON}\n".encode()
    with ControlClient(target.daemon.socket_path) as client:
        assert client.request({"op": "ping"}) == {"ok": True}
    assert target.daemon.process is not None and target.daemon.process.poll() is None
    assert_no_crash(target.daemon.log())


def fuzz_stream(target: Target, port: int | str, payload: bytes) -> bytes:
    """Send ``payload`` on a new connection, prove others are served meanwhile, then
    hang up (half-close) and return everything guardd answered."""
    if isinstance(port, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(READ_TIMEOUT)
        sock.connect(port)
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    with sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # guardd answered and closed before taking it all (e.g. 431)
        assert_everyone_else_served(target)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already closed by guardd
        return read_all(sock)


# --------------------------------------------------------------------------- HTTP

methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"G(T", b""])
targets = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"/healthz",
            b"/gate",
            b"/maintenance.json",
            b"/api/x",
            b"/.guardd/bypass/s3cret-s3cret-s3cret",
            b"/.guardd/bypass/%73",
            b"/../../etc/passwd",
            b"*",
            b"http://h/healthz?x",
            b"https://h",
            b"ftp://h/",
        ]
    ),
    st.binary(max_size=40).map(lambda b: b"/" + b),
)
header_names = st.sampled_from(
    [
        b"Host",
        b"Accept",
        b"Connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Expect",
        b"X-Original-URI",
        b"X-Forwarded-For",
        b"X-Real-IP",
        b"Cookie",
        b"x-forwarded-for",
        b"Bad Name",
        b"",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"close",
            b"keep-alive",
            b"chunked",
            b"100-continue",
            b"5",
            b"-1",
            b"99999999999999999999",
            b"application/json;q=nan, text/html;q=1e999",
            b"/static/../admin",
            b"/%2e%2e/%2fstatus",
            b"10.1.2.3, 127.0.0.1",
            b"::1, [2001:db8::1]:80, unknown",
            b"guardd_bypass=v1.default.9999999999.AAAA; guardd_bypass=x",
        ]
    ),
    st.binary(max_size=60),
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """One to three (pipelined) request-like heads, some well-formed, most not."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        newline = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.9", b""]))
        lines = [draw(methods) + b" " + draw(targets) + b" " + version]
        headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
        lines += [name + b": " + value for name, value in headers]
        parts.append(newline.join(lines) + newline + newline + draw(st.binary(max_size=20)))
    return b"".join(parts)


def assert_http_answers(data: bytes) -> None:
    """What came back is nothing, or well-framed HTTP/1.1 answers with known statuses."""
    if not data:
        return
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    statuses = {int(code) for code in _STATUS_LINE.findall(data)}
    assert statuses and statuses <= HTTP_STATUSES, statuses
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        assert re.fullmatch(rb"[A-Za-z-]+: [\x20-\x7e]*", line), line


@FUZZ
@given(payload=st.binary(max_size=3000))
@example(payload=b"\r\n" * 5000)
@example(payload=b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
@example(payload=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
def test_http_port_survives_arbitrary_bytes(target: Target, payload: bytes) -> None:
    """Arbitrary bytes on the HTTP port: well-framed answers or none; others still served."""
    assert_http_answers(fuzz_stream(target, target.http_port, payload))


@FUZZ
@given(payload=http_requests())
def test_http_port_survives_malformed_requests(target: Target, payload: bytes) -> None:
    """Request-shaped garbage (gate headers, cookies, smuggling shapes): well-framed
    answers with known statuses; others still served."""
    assert_http_answers(fuzz_stream(target, target.http_port, payload))


# --------------------------------------------------------------------------- agent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=2000))
def test_agent_port_survives_arbitrary_bytes(target: Target, payload: bytes) -> None:
    """Whatever a checker sends, it gets the one agent line; others still served."""
    assert fuzz_stream(target, target.agent_port, payload) == f"maint #{REASON}\n".encode()


# --------------------------------------------------------------------------- control socket

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "op": st.one_of(st.sampled_from(["ping", "status", "jobs", "watch"]), json_values),
        "scope": st.one_of(st.sampled_from(["default", "shop", "nope", "../x"]), json_values),
    },
).map(lambda obj: json.dumps(obj).encode())
control_lines = st.lists(
    st.one_of(requests, st.binary(max_size=200).filter(lambda b: b"\n" not in b)), max_size=5
).map(lambda lines: b"".join(line + b"\n" for line in lines))


def assert_control_answers(data: bytes, sent: bytes) -> None:
    """Every line back is one JSON object (a reply or a watch event); no more replies
    than request lines, plus the one unterminated last line guardd also answers."""
    lines = data.splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines), data[-200:]
    replies = [json.loads(line) for line in lines]
    assert all(isinstance(reply, dict) for reply in replies)
    answers = [r for r in replies if "event" not in r]
    assert len(answers) <= sent.count(b"\n") + 1
    for reply in answers:
        assert reply.get("ok") in (True, False), reply
        if reply["ok"] is False:
            assert reply["error"]["code"] in ("bad_request", "unknown_op", "too_long")


@FUZZ
@given(payload=st.one_of(control_lines, st.binary(max_size=2000)))
@example(payload=b'{"op":"watch"}\n{"op":"ping"}\n' + b"\xff" * 100)
@example(payload=b"[" * 50000 + b"\n")
@example(payload=b'{"op":"ping"}')
def test_control_socket_survives_arbitrary_bytes(target: Target, payload: bytes) -> None:
    """Arbitrary lines on the control socket: one JSON answer per line at most, the
    SPEC's error codes; others still served."""
    assert_control_answers(fuzz_stream(target, target.daemon.socket_path, payload), payload)
