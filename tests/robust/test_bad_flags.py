"""Any bytes in a flag file, through the real daemon: the scope is on, and every
answer built from the flag (status reply, watch event, health JSON, maintenance
page, API JSON, agent line, headers) stays well-formed whatever the flag holds.

tests/core/test_flag.py fuzzes the parser in-process, tests/answers/test_http.py and
tests/answers/test_agent.py try one hostile reason each; here generated contents go all the
way through guardd's watcher, refresh and responders.
"""

from __future__ import annotations

import html
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import ControlClient, free_port
from tests.httpclient import Connection, Response, write_flag
from tests.robust.support import WrappedGuardd, assert_no_crash, long_lived_guardd, wait_state

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HEADER_LINE = re.compile(rb"[A-Za-z-]+: [\x20-\x7e]*")


@dataclass
class Target:
    """The module's guardd and its responder ports."""

    daemon: WrappedGuardd
    http_port: int
    agent_port: int


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """One guardd with the HTTP responder and the agent port for the whole module."""
    http_port, agent_port = free_port(), free_port()
    settings_ = {
        "http": {"listen": [f"127.0.0.1:{http_port}"]},
        "agent": {"listen": [f"127.0.0.1:{agent_port}"]},
    }
    with long_lived_guardd(settings_) as daemon:
        yield Target(daemon, http_port, agent_port)


def raw_flag(target: Target, content: bytes) -> None:
    """Replace the flag with ``content`` (off first, so the change is unmistakable)."""
    flag = target.daemon.flag()
    if flag.exists():
        flag.unlink()
        wait_state(target.daemon, "off")
    temp = flag.with_name(".fuzz.tmp")
    temp.write_bytes(content)
    temp.rename(flag)
    wait_state(target.daemon, "on")


def check_reason(reason: object) -> None:
    """A reason is absent, or one trimmed line of printable text of bounded length."""
    if reason is None:
        return
    assert isinstance(reason, str) and reason
    assert reason.isprintable() and reason == reason.strip() and "  " not in reason
    assert len(reason) <= 1000


def check_fields(fields: dict[str, Any]) -> None:
    """The SPEC's five fields of a scope that is on because of a flag file."""
    assert fields["state"] == "on" and fields["jobs"] == 0
    assert RFC3339_UTC.fullmatch(fields["since"])
    assert fields["until"] is None or RFC3339_UTC.fullmatch(fields["until"])
    check_reason(fields["reason"])


def check_framing(response: Response, conn: Connection) -> None:
    """Every header line is printable ASCII; the body is exactly Content-Length long."""
    for line in response.raw_head.split(b"\r\n")[1:]:
        assert HEADER_LINE.fullmatch(line), line
    assert int(response.header("content-length") or -1) == len(response.body)
    assert conn.buffer == b""  # nothing beyond the announced length


def check_answers(target: Target) -> dict[str, Any]:
    """Read every answer built from the flag; return the status fields."""
    with ControlClient(target.daemon.socket_path) as client:
        reply = client.request({"op": "status"})
    fields: dict[str, Any] = reply["scopes"]["default"]
    check_fields(fields)
    reason = fields["reason"]

    with Connection(target.http_port) as conn:
        health = conn.request("/healthz")
        check_framing(health, conn)
        assert health.status == 503 and health.json()["reason"] == reason
        document = conn.request("/maintenance.json")
        check_framing(document, conn)
        assert document.json()["reason"] == reason
        page = conn.request("/", headers={"Accept": "text/html"})
        check_framing(page, conn)
        assert page.status == 503
        text = page.body.decode("utf-8")
        if reason is not None:
            assert html.escape(reason) in text
            assert "<" not in reason or reason not in text  # never unescaped markup
        api = conn.request("/api/x")
        check_framing(api, conn)
        assert api.json()["reason"] == reason

    with socket.create_connection(("127.0.0.1", target.agent_port), timeout=5) as agent:
        agent.settimeout(5)
        line = b""
        while chunk := agent.recv(4096):
            line += chunk
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line, line
    expected = "maint" + (f" #{reason[:200].strip()}" if reason else "")
    assert line.decode("utf-8") == expected + "\n"
    assert_no_crash(target.daemon.log())
    return fields


hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "</title><img src=x onerror=alert(1)>",
            "line one\r\nSet-Cookie: evil=1\r\n\r\n<h1>injected</h1>",
            "\x00\x1b[31mred\x1b[0m\x7f",
            "\u2028\u2029\u0085\u202e\u200b",
            "{until} {reason} {retry_after}",
            "é" * 3000,
            "x" * 100_000,
            "\ud800 lone surrogate",
        ]
    ),
)
json_flags = st.fixed_dictionaries(
    {},
    optional={
        "reason": st.one_of(hostile_text, st.integers(), st.none(), st.lists(st.text())),
        "until": st.one_of(
            hostile_text,
            st.sampled_from(
                [
                    "2999-01-01T00:00:00Z",
                    "9999-12-31T23:59:59-23:59",
                    "0001-01-01T00:00:00+23:59",
                    "2020-01-01T00:00:00Z",
                    "2030-02-30T00:00:00Z",
                ]
            ),
        ),
        "since": hostile_text,
        "by": hostile_text,
    },
).map(lambda obj: json.dumps(obj).encode())
plain_flags = hostile_text.map(lambda text: text.encode("utf-8", errors="surrogatepass"))
flag_contents = st.one_of(st.binary(max_size=500), json_flags, plain_flags)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(content=flag_contents)
@example(content=b"")
@example(content=b"\xff\xfe\xfd invalid utf-8 \xc3\x28")
@example(content=b"\x00" * 1000)
@example(content=b'{"reason": "\\ud800\\udfff\\u0000 escapes", "until": "2999-01-01T00:00:00Z"}')
@example(content=b"{" * 70_000)
@example(content=json.dumps({"reason": "r" * 200_000}).encode())
def test_any_flag_content_gives_a_sane_state_everywhere(target: Target, content: bytes) -> None:
    """Any bytes in the flag: on, with a clean reason and valid times in every answer."""
    raw_flag(target, content)
    check_answers(target)


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("<b>bold</b> & 'quotes'", "<b>bold</b> & 'quotes'"),
        ("one\r\ntwo\nthree", "one two three"),
        ("tab\there\x00nul", "tab here nul"),
        ("Wartung ☕ ümlaut", "Wartung ☕ ümlaut"),
    ],
)
def test_hostile_reason_reaches_every_answer_intact_or_flattened(
    target: Target, reason: str, shown: str
) -> None:
    """A reason written by guardctl's JSON keeps its text (escaped in HTML) and loses
    only its control characters, in every answer and in the watch stream."""
    flag = target.daemon.flag()
    flag.unlink(missing_ok=True)
    wait_state(target.daemon, "off")
    with ControlClient(target.daemon.socket_path) as watcher:
        watcher.request({"op": "watch"})
        write_flag(flag, {"reason": reason})
        event = watcher.read_line()
    assert event["event"] == "state" and event["reason"] == shown
    assert check_answers(target)["reason"] == shown
