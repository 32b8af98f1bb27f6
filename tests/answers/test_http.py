"""The HTTP responder: every status, header and body of the SPEC, on real sockets to a
real guardd; plus the pure request parsing and content negotiation."""

from __future__ import annotations

import email.utils
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardd.answers.http.parse import Kind, Malformed, Persist, parse_head, prefers_json
from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import Connection, build_request, get, wait_for_state, write_flag

HOSTILE = "<script>alert('x')</script> & \"quotes\" {until}"


@dataclass
class Served:
    """A running guardd with its HTTP responder on ``port``."""

    guardd: Guardd
    port: int

    def on(self, scope: str = "default", **content: Any) -> dict[str, Any]:
        """Create the scope's flag (JSON ``content``) and wait until HTTP says so."""
        write_flag(self.guardd.flag(scope), content)
        return self.wait("on")

    def off(self, scope: str = "default") -> dict[str, Any]:
        self.guardd.flag(scope).unlink()
        return self.wait("off")

    def wait(self, state: str) -> dict[str, Any]:
        return wait_for_state(self.port, state)

    def get(self, path: str = "/", **kwargs: Any) -> Any:
        return get(self.port, path, **kwargs)


@pytest.fixture
def serve(make_guardd: Callable[..., Guardd]) -> Callable[..., Served]:
    """Start a guardd whose HTTP responder listens on a free loopback port."""

    def factory(http: dict[str, Any] | None = None, **settings: Any) -> Served:
        port = free_port()
        http_settings = {"listen": [f"127.0.0.1:{port}"], **(http or {})}
        daemon = make_guardd({"http": http_settings, **settings}).start()
        return Served(daemon, port)

    return factory


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    """guardd with the default HTTP settings on a free port."""
    return serve()


@pytest.fixture
def job(served: Served) -> Iterator[subprocess.Popen[str]]:
    """A stand-in guarded job: holds a shared lock on the default run lock until stdin closes."""
    lock = served.guardd.runtime_dir / "default.run"
    code = (
        "import fcntl, os, signal, sys\n"
        "signal.alarm(60)\n"  # never outlives a broken test
        f"fd = os.open({str(lock)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "locked\n"
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)
    process.stdout.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def in_one_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- health path


def test_health_off_is_200_pass(served: Served) -> None:
    """Scope off: the health path answers 200 application/health+json "pass", no marker."""
    response = served.get("/healthz")
    assert response.status == 200
    assert response.header("content-type") == "application/health+json"
    assert response.header("cache-control") == "no-store"
    assert "guard-maintenance" not in response.header_names()
    assert "retry-after" not in response.header_names()
    body = response.json()
    assert body["status"] == "pass"
    assert body["state"] == "off"
    assert body["scope"] == "default"
    assert body["maintenance"] is False


def test_health_withdraw_on_is_503_fail(served: Served) -> None:
    """withdraw + on: 503 "fail" with Retry-After (default 300) and Guard-Maintenance."""
    served.on(reason="disk swap")
    response = served.get("/healthz")
    assert response.status == 503
    assert response.header("retry-after") == "300"
    assert response.header("guard-maintenance") == "default"
    body = response.json()
    assert body["status"] == "fail"
    assert body["state"] == "on"
    assert body["reason"] == "disk swap"
    assert "disk swap" in body["output"]


def test_health_withdraw_draining_is_503(served: Served, job: subprocess.Popen[str]) -> None:
    """withdraw + draining (a guarded job still runs): the node already leaves the pool."""
    write_flag(served.guardd.flag(), {"reason": "deploy"})
    served.wait("draining")
    response = served.get("/healthz")
    assert response.status == 503
    assert response.header("guard-maintenance") == "default"
    assert response.json()["state"] == "draining"


def test_health_stay_on_is_200_warn(serve: Callable[..., Served]) -> None:
    """stay + on: 200 "warn" (stays in the pool), marked, without Retry-After."""
    served = serve({"policy": "stay"})
    served.on(reason="all nodes")
    response = served.get("/healthz")
    assert response.status == 200
    assert response.header("guard-maintenance") == "default"
    assert "retry-after" not in response.header_names()
    assert response.json()["status"] == "warn"


def test_health_path_is_configurable(serve: Callable[..., Served]) -> None:
    """http.health_path moves the health answer; the old path becomes an ordinary page."""
    served = serve({"health_path": "/-/ready"})
    assert served.get("/-/ready").status == 200
    assert served.get("/healthz").header("content-type") == "text/html; charset=utf-8"


def test_health_ignores_query_and_accepts_absolute_form(served: Served) -> None:
    """/healthz?probe=1 and an absolute-form target both reach the health answer."""
    assert served.get("/healthz?probe=1").json()["status"] == "pass"
    assert served.get("http://example.test/healthz").json()["status"] == "pass"


def test_retry_after_counts_down_to_until(served: Served) -> None:
    """With `until` one hour ahead, Retry-After is the seconds remaining (at most 3600)."""
    served.on(reason="upgrade", until=in_one_hour())
    for path in ("/healthz", "/"):
        value = int(served.get(path).header("retry-after"))
        assert 3000 < value <= 3600
    assert 3000 < served.get("/maintenance.json").json()["retry_after"] <= 3600


def test_retry_after_falls_back_when_until_passed(serve: Callable[..., Served]) -> None:
    """An `until` in the past (overrun) gives the configured http.retry_after."""
    served = serve({"retry_after": 42})
    served.on(until="2001-01-01T00:00:00Z")
    assert served.get("/").header("retry-after") == "42"
    assert served.get("/healthz").header("retry-after") == "42"


# --------------------------------------------------------------------------- /maintenance.json


def test_maintenance_json_off(served: Served) -> None:
    """/maintenance.json is 200 with every SPEC field while the scope is off."""
    response = served.get("/maintenance.json")
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.json() == {
        "scope": "default",
        "state": "off",
        "maintenance": False,
        "mode": None,
        "reason": None,
        "since": None,
        "until": None,
        "overdue": False,
        "retry_after": None,
        "upcoming": [],
        "bypass": False,
    }


def test_maintenance_json_on(served: Served) -> None:
    """/maintenance.json is still 200 in maintenance, with reason, since, until, retry_after."""
    until = in_one_hour()
    document = served.on(reason="db migration", until=until, since="2026-01-01T00:00:00Z")
    assert document["maintenance"] is True
    assert document["reason"] == "db migration"
    assert document["until"] == until
    assert document["since"] == "2026-01-01T00:00:00Z"
    assert document["upcoming"] == []
    response = served.get("/maintenance.json")
    assert response.status == 200
    assert response.header("guard-maintenance") == "default"


# --------------------------------------------------------------------------- the page


def test_page_in_maintenance(served: Served) -> None:
    """Any other path while on: the HTML page, 503, Retry-After, no-store, marker, reason."""
    served.on(reason="new hardware", until=in_one_hour())
    response = served.get("/shop/cart?id=3")
    assert response.status == 503
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert response.header("cache-control") == "no-store"
    assert response.header("guard-maintenance") == "default"
    assert response.header("retry-after") is not None
    assert response.header("vary") == "Accept"
    assert "new hardware" in response.text
    assert "Down for maintenance" in response.text


def test_page_status_is_configurable(serve: Callable[..., Served]) -> None:
    """http.page_status sets the page's status (here 200), marker and Retry-After stay."""
    served = serve({"page_status": 200})
    served.on()
    response = served.get("/")
    assert response.status == 200
    assert response.header("guard-maintenance") == "default"
    assert response.header("retry-after") == "300"


@pytest.mark.parametrize(
    ("accept", "json_expected"),
    [
        ("application/json", True),
        ("application/json, text/plain, */*", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        ("application/json;q=0, text/html", False),
        ("text/html;q=0.5, application/json", True),
    ],
)
def test_page_json_by_accept(served: Served, accept: str, json_expected: bool) -> None:
    """JSON when Accept prefers application/json, the HTML page otherwise."""
    served.on(reason="r")
    response = served.get("/account", headers={"Accept": accept})
    assert response.status == 503
    if json_expected:
        assert response.header("content-type") == "application/json"
        body = response.json()
        assert body["maintenance"] is True
        assert body["reason"] == "r"
        assert body["retry_after"] == 300
        assert set(body) == {
            "maintenance",
            "mode",
            "paused",
            "reason",
            "until",
            "overdue",
            "retry_after",
        }
    else:
        assert response.header("content-type") == "text/html; charset=utf-8"


def test_page_json_under_api_prefix(served: Served) -> None:
    """A path under an api_prefix (default /api/) gets JSON even from a browser."""
    served.on(until=in_one_hour())
    response = served.get("/api/v2/orders", headers={"Accept": "text/html"})
    assert response.header("content-type") == "application/json"
    assert response.header("guard-maintenance") == "default"
    assert response.json()["until"] is not None


def test_custom_api_prefixes(serve: Callable[..., Served]) -> None:
    """http.api_prefixes replaces the default list."""
    served = serve({"api_prefixes": ["/v1/", "/graphql"]})
    served.on()
    assert served.get("/v1/x").header("content-type") == "application/json"
    assert served.get("/graphql").header("content-type") == "application/json"
    assert served.get("/api/x").header("content-type") == "text/html; charset=utf-8"


def test_outage_page_when_off(served: Served) -> None:
    """Scope off: 503 "temporarily unavailable", never claiming maintenance, no marker."""
    response = served.get("/anything")
    assert response.status == 503
    assert "guard-maintenance" not in response.header_names()
    assert "Temporarily unavailable" in response.text
    assert "maintenance" not in response.text.lower()
    api = served.get("/api/x")
    assert api.status == 503
    assert "guard-maintenance" not in api.header_names()
    assert api.json()["maintenance"] is False


def test_page_template(serve: Callable[..., Served], tmp_short: Path) -> None:
    """page_template: placeholders replaced HTML-escaped, other braces left alone,
    and the file is read at start only (deleting it changes nothing)."""
    template = tmp_short / "page.html"
    template.write_text(
        "<style>body { color: red; }</style>"
        "<p>{reason}</p><p>{until}</p><p>{retry_after}</p><p>{other}</p>"
    )
    served = serve({"page_template": str(template)})
    template.unlink()
    served.on(reason=HOSTILE, until="2001-01-01T00:00:00Z")
    response = served.get("/")
    assert response.status == 503
    assert response.header("guard-maintenance") == "default"
    assert "<style>body { color: red; }</style>" in response.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot; {until}" in (
        response.text
    )
    # An until in the past: overdue, so {until} says so, and Retry-After falls back.
    overdue = "The work is taking longer than expected. We will be back as soon as possible."
    assert f"<p>{overdue}</p><p>300</p><p>{{other}}</p>" in response.text
    assert "content-security-policy" not in response.header_names()


def test_hostile_reason_is_escaped_everywhere(served: Served) -> None:
    """A reason full of markup is escaped in the page, intact in JSON, absent from headers."""
    served.on(reason=HOSTILE + "\r\nSet-Cookie: evil=1")
    page = served.get("/")
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page.text
    assert "set-cookie" not in page.header_names()
    reason = served.get("/api/x").json()["reason"]
    assert reason.startswith(HOSTILE)
    assert "\r" not in reason
    assert "\n" not in reason
    for path in ("/healthz", "/maintenance.json", "/api/x"):
        assert "set-cookie" not in served.get(path).header_names()


def test_flag_removal_restores_answers(served: Served) -> None:
    """Removing the flag flips health back to 200 and the page back to the outage page."""
    served.on(reason="short")
    assert served.get("/healthz").status == 503
    served.off()
    assert served.get("/healthz").status == 200
    assert "guard-maintenance" not in served.get("/").header_names()


def test_http_scope_follows_own_and_default_flag(serve: Callable[..., Served]) -> None:
    """http.scope: its own flag and `default`'s put it on; another scope's flag does not."""
    served = serve({"scope": "shop"}, scopes={"shop": {}, "blog": {}})
    write_flag(served.guardd.flag("blog"), {"reason": "blog only"})
    wait_until(
        lambda: served.guardd.request({"op": "status"})["scopes"]["blog"]["state"] == "on",
        what="blog on",
    )
    assert served.get("/maintenance.json").json()["state"] == "off"
    served.on("shop", reason="shop work")
    assert served.get("/").header("guard-maintenance") == "shop"
    served.off("shop")
    served.on("default", reason="host work")
    document = served.get("/maintenance.json").json()
    assert document["scope"] == "shop"
    assert document["reason"] == "host work"


def test_guardd_paths_are_404_and_gate_answers_without_bypass_config(served: Served) -> None:
    """Without a bypass section: /.guardd/bypass/... is a plain 404 (no secret configured),
    and the gate path answers 403 with the marker while on (test_gate.py has the rest)."""
    served.on()
    bypass = served.get("/.guardd/bypass/some-secret-0123456789")
    assert bypass.status == 404
    assert "guard-maintenance" not in bypass.header_names()
    assert "set-cookie" not in bypass.header_names()
    gate = served.get("/gate", headers={"X-Original-URI": "/static/x.css"})
    assert gate.status == 403
    assert gate.header("guard-maintenance") == "default"


def test_date_header_is_current(served: Served) -> None:
    """Every answer carries a valid Date header close to now."""
    response = served.get("/healthz")
    sent = email.utils.parsedate_to_datetime(response.header("date"))
    assert abs((sent - datetime.now(UTC)).total_seconds()) < 60


# --------------------------------------------------------------------------- HTTP mechanics


def test_head_has_headers_but_no_body(served: Served) -> None:
    """HEAD: the same status and headers as GET (Content-Length too), and no body bytes."""
    served.on(reason="head")
    with Connection(served.port) as connection:
        full = connection.request("/")
        head = connection.request("/", method="HEAD")
        # If HEAD had sent a body, this next answer would not parse.
        after = connection.request("/healthz")
    assert head.status == full.status == 503
    assert head.body == b""
    assert head.header("content-length") == str(len(full.body))
    assert head.header("guard-maintenance") == "default"
    assert after.json()["state"] == "on"


def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    """HTTP/1.1 keep-alive: several requests, one connection, no Connection: close."""
    with Connection(served.port) as connection:
        for path in ("/healthz", "/maintenance.json", "/", "/api/x", "/healthz"):
            response = connection.request(path)
            assert "connection" not in response.header_names()
        assert connection.request("/healthz").status == 200


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    """Three requests sent at once get three answers in order."""
    with Connection(served.port) as connection:
        connection.send(
            build_request("/healthz") + build_request("/maintenance.json") + build_request("/")
        )
        first = connection.read_response()
        second = connection.read_response()
        third = connection.read_response()
    assert first.header("content-type") == "application/health+json"
    assert second.json()["state"] == "off"
    assert third.header("content-type") == "text/html; charset=utf-8"


def test_http10_closes_by_default(served: Served) -> None:
    """HTTP/1.0 without keep-alive: Connection: close, then the server closes."""
    with Connection(served.port) as connection:
        response = connection.request("/healthz", version="HTTP/1.0")
        assert response.status == 200
        assert response.header("connection") == "close"
        assert connection.wait_closed() == b""


def test_http10_keep_alive(served: Served) -> None:
    """HTTP/1.0 with Connection: keep-alive: kept open, and says so."""
    with Connection(served.port) as connection:
        headers = {"Connection": "keep-alive"}
        first = connection.request("/healthz", version="HTTP/1.0", headers=headers)
        second = connection.request("/", version="HTTP/1.0", headers=headers)
    assert first.header("connection") == "keep-alive"
    assert second.status == 503


def test_http11_connection_close(served: Served) -> None:
    """HTTP/1.1 with Connection: close is answered, then closed."""
    with Connection(served.port) as connection:
        response = connection.request("/healthz", headers={"Connection": "close"})
        assert response.header("connection") == "close"
        assert connection.wait_closed() == b""


def test_bare_lf_line_ends_are_accepted(served: Served) -> None:
    """A hand-typed request with LF line ends (printf | nc) is understood."""
    with Connection(served.port) as connection:
        connection.send(b"GET /healthz HTTP/1.0\n\n")
        assert connection.read_response().status == 200


def test_content_length_body_is_skipped_and_connection_reused(served: Served) -> None:
    """A POST body is discarded as it arrives; the next request on the connection works."""
    with Connection(served.port) as connection:
        body = b"x" * 300_000
        connection.send(build_request("/form", method="POST", body=b"")[:-2])
        connection.send(f"Content-Length: {len(body)}\r\n\r\n".encode())
        for start in range(0, len(body), 65536):
            connection.send(body[start : start + 65536])
        connection.send(build_request("/healthz"))
        posted = connection.read_response()
        after = connection.read_response()
    assert posted.status == 503
    assert after.header("content-type") == "application/health+json"


def test_chunked_body_is_answered_then_closed(served: Served) -> None:
    """A chunked body is not read: answered with Connection: close, input drained, closed."""
    with Connection(served.port) as connection:
        connection.send(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        response = connection.read_response()
        assert response.status == 503
        assert response.header("connection") == "close"
        connection.send(b"0\r\n\r\n")
        connection.sock.shutdown(socket.SHUT_WR)
        assert connection.wait_closed() == b""


def test_expect_continue_body_closes(served: Served) -> None:
    """Expect: 100-continue with a body: a final answer and Connection: close."""
    with Connection(served.port) as connection:
        connection.send(
            b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        response = connection.read_response()
    assert response.header("connection") == "close"


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / FOO/1.1\r\nHost: x\r\n\r\n",
        b"GET example.test HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: \x00\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding:\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: \t \r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
    ],
)
def test_malformed_request_gets_400_and_close(served: Served, raw: bytes) -> None:
    """Malformed request heads (smuggling shapes included): 400, Connection: close, closed."""
    with Connection(served.port) as connection:
        connection.send(raw + build_request("/healthz"))
        response = connection.read_response()
        assert response.status == 400
        assert response.header("connection") == "close"
        assert "guard-maintenance" not in response.header_names()
        # The pipelined request behind the bad one is never answered.
        assert b"HTTP/1.1" not in connection.wait_closed()


def test_http2_text_gets_505(served: Served) -> None:
    """A request line claiming HTTP/2.0 is answered 505 and closed."""
    with Connection(served.port) as connection:
        connection.send(b"GET / HTTP/2.0\r\n\r\n")
        assert connection.read_response().status == 505
        assert connection.wait_closed() == b""


def test_head_over_8k_gets_431_and_close(served: Served) -> None:
    """A request head over 8 KiB, finished or not, gets 431 and the connection is closed."""
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000
    with Connection(served.port) as connection:
        connection.send(big)  # never finished
        response = connection.read_response()
        assert response.status == 431
        assert response.header("connection") == "close"
        assert connection.wait_closed() == b""
    with Connection(served.port) as connection:
        connection.send(big + b"\r\n\r\n")
        assert connection.read_response().status == 431


def test_head_of_exactly_8k_is_served(served: Served) -> None:
    """The limit is inclusive: a head of exactly 8192 bytes (blank line included) is served."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    pad = 8192 - len(start) - len(b"\r\n\r\n")
    with Connection(served.port) as connection:
        connection.send(start + b"p" * pad + b"\r\n\r\n")
        assert connection.read_response().status == 200


def test_slow_client_is_dropped_after_header_timeout(serve: Callable[..., Served]) -> None:
    """A client that never finishes its head is dropped (http.header_timeout), unanswered."""
    served = serve({"header_timeout": 0.5})
    with Connection(served.port) as connection:
        connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert connection.wait_closed() == b""


def test_idle_keep_alive_is_dropped_after_header_timeout(serve: Callable[..., Served]) -> None:
    """After an answer, an idle keep-alive connection is closed once header_timeout passes."""
    served = serve({"header_timeout": 0.5})
    with Connection(served.port) as connection:
        assert connection.request("/healthz").status == 200
        assert connection.wait_closed() == b""


def test_head_sent_in_pieces_is_answered(served: Served) -> None:
    """A head that arrives a few bytes at a time (within the timeout) is answered."""
    raw = build_request("/healthz")
    with Connection(served.port) as connection:
        for start in range(0, len(raw), 7):
            connection.send(raw[start : start + 7])
            time.sleep(0.01)
        assert connection.read_response().status == 200


def test_many_listen_addresses_ipv4_and_ipv6(serve: Callable[..., Served]) -> None:
    """Several listen addresses, IPv4 and IPv6 (skipped without IPv6 loopback)."""
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    other = free_port()
    serve({"listen": [f"127.0.0.1:{free_port()}", f"[::1]:{other}"]})
    assert get(other, "/healthz", host="::1").status == 200


def test_all_addresses_listen(serve: Callable[..., Served]) -> None:
    """`:PORT` answers on every address: IPv4 and (when present) IPv6 loopback."""
    port = free_port()
    serve({"listen": [f":{port}"]})
    assert get(port, "/healthz", host="127.0.0.1").status == 200
    if ipv6_loopback():
        assert get(port, "/healthz", host="::1").status == 200


def test_port_in_use_is_one_clear_error(make_guardd: Callable[..., Guardd]) -> None:
    """A listen address already taken: guardd exits non-zero naming the key and address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"]}})
        daemon.start(wait_ready=False)
        assert daemon.process is not None
        code = daemon.process.wait(timeout=15)
    assert code == 1
    assert f"http.listen[0]: cannot listen on 127.0.0.1:{port}" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_reload_applies_policy_and_listen_changes(served: Served) -> None:
    """SIGHUP: a new policy changes the health answer; a new listen address is served."""
    served.on(reason="reload")
    assert served.get("/healthz").status == 503
    new_port = free_port()
    daemon = served.guardd
    daemon.settings["http"] = {
        "listen": [f"127.0.0.1:{served.port}", f"127.0.0.1:{new_port}"],
        "policy": "stay",
    }
    daemon.write_config()
    seen = len(daemon.notify.collect())
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("READY=1", after=seen)
    assert served.get("/healthz").status == 200
    assert get(new_port, "/healthz").json()["status"] == "warn"


def test_stop_closes_idle_connections(served: Served) -> None:
    """SIGTERM with an idle keep-alive connection open: guardd still exits 0 promptly."""
    with Connection(served.port) as connection:
        assert connection.request("/healthz").status == 200
        code, err = served.guardd.stop()
        assert code == 0, err
        assert connection.wait_closed() == b""


# --------------------------------------------------------------------------- pure parts


def test_parse_head_persistence_rules() -> None:
    """Persistence: 1.1 keeps, 1.0 closes unless keep-alive, Connection: close wins."""
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\r").persist is Persist.KEEP
    assert parse_head(b"GET / HTTP/1.0").persist is Persist.CLOSE
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").persist is Persist.KEEP_10
    assert parse_head(b"GET / HTTP/1.1\r\nConnection: foo, close").persist is Persist.CLOSE
    assert parse_head(b"GET / HTTP/1.2").persist is Persist.KEEP


def test_parse_head_bodies() -> None:
    """Content-Length is skipped; chunked or Expect: 100-continue stop reading requests."""
    assert parse_head(b"POST / HTTP/1.1\r\nContent-Length: 12").body_length == 12
    chunked = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked")
    assert chunked.body_length == -1
    assert chunked.persist is Persist.CLOSE
    expect = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue")
    assert expect.persist is Persist.CLOSE


def test_parse_head_paths() -> None:
    """The route path drops the query; absolute-form targets give their path."""
    assert parse_head(b"GET /a/b?c=d HTTP/1.1").path == b"/a/b"
    assert parse_head(b"GET HTTPS://h.test HTTP/1.1").path == b"/"
    assert parse_head(b"GET http://h.test/x?y HTTP/1.1").path == b"/x"
    assert parse_head(b"HEAD / HTTP/1.1").head_only
    with pytest.raises(Malformed) as caught:
        parse_head(b"GET ftp://h.test/ HTTP/1.1")
    assert caught.value.kind is Kind.BAD_REQUEST


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (b"application/json", True),
        (b"APPLICATION/JSON", True),
        (b"application/*", True),
        (b"text/html", False),
        (b"*/*", False),
        (b"", False),
        (b"application/json;q=0.5, text/html;q=0.6", False),
        (b"application/json;q=0.7, text/*;q=0.6", True),
        (b"text/*, application/json", True),
        (b"application/json, text/html", True),
        (b"text/html, application/json", False),
        (b"application/json;q=bogus", False),
    ],
)
def test_prefers_json(accept: bytes, expected: bool) -> None:
    """Content negotiation ranks application/json against text/html by q, then specificity."""
    assert prefers_json(accept) is expected


def test_reload_turns_http_on(make_guardd: Callable[..., Guardd]) -> None:
    """With only the agent port at start, a reload can turn the HTTP responder on."""
    agent_port, http_port = free_port(), free_port()
    daemon = make_guardd({"agent": {"listen": [f"127.0.0.1:{agent_port}"]}}).start()
    daemon.settings["http"] = {"listen": [f"127.0.0.1:{http_port}"]}
    daemon.write_config()
    seen = len(daemon.notify.collect())
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("READY=1", after=seen)
    assert get(http_port, "/healthz").json()["status"] == "pass"


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def test_pipelining_flood_without_reading_is_flow_controlled(served: Served) -> None:
    """A client pipelining requests without reading: guardd stops reading instead of
    queueing every answer in memory, and answers them all once the client reads."""
    served.on(reason="flood")
    assert served.guardd.process is not None
    pid = served.guardd.process.pid
    count = 20_000  # ~1 MB of requests asking for ~110 MB of answers
    before = _peak_rss_kib(pid)
    with Connection(served.port) as connection:
        sender = threading.Thread(
            target=connection.send, args=(build_request("/") * count,), daemon=True
        )
        sender.start()
        # Give guardd the chance to overeat. This only makes the check sharper: a
        # slow machine can make the test pass too easily, never fail wrongly.
        time.sleep(0.5)
        statuses = {connection.read_response().status for _ in range(count)}
        sender.join(timeout=10)
    assert statuses == {503}
    assert _peak_rss_kib(pid) - before < 48_000


def _established(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
            count += 1
    return count


def test_client_that_never_reads_is_cut_after_header_timeout(
    serve: Callable[..., Served],
) -> None:
    """A client that sends requests but never reads is cut once header_timeout passes,
    instead of holding its connection and unsent answers for ever."""
    served = serve({"header_timeout": 0.5})
    served.on(reason="stuck")
    with Connection(served.port) as connection:
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.send(build_request("/") * 2000)
        assert _established(served.port) == 1
        wait_until(lambda: _established(served.port) == 0, what="guardd to cut the client")
