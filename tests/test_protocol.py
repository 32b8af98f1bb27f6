"""The control socket's wire format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.core.state import ScopeStatus
from guardd.protocol import ProtocolError, Request, encode, parse_request, state_event


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"op":"ping"}', Request("ping")),
        (b'{"op":"status"}', Request("status")),
        (b'{"op":"jobs","scope":"shop"}', Request("jobs", "shop")),
        (b'{"op":"watch"}', Request("watch")),
    ],
)
def test_valid_requests(line: bytes, expected: Request) -> None:
    """Each op of the SPEC parses."""
    assert parse_request(line) == expected


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"garbage", "bad_request"),
        (b"\xff\xfe", "bad_request"),
        (b"[1]", "bad_request"),
        (b'{"op": 5}', "bad_request"),
        (b"{}", "bad_request"),
        (b'{"op":"jobs","scope":"../etc"}', "bad_request"),
        (b'{"op":"reboot"}', "unknown_op"),
        (b'{"op":"PING"}', "unknown_op"),
    ],
)
def test_bad_requests_get_their_code(line: bytes, code: str) -> None:
    """Malformed lines are bad_request; well-formed unknown ops are unknown_op."""
    result = parse_request(line)
    assert isinstance(result, ProtocolError)
    assert result.code == code


@given(st.binary(max_size=300))
def test_any_line_parses_or_errors(line: bytes) -> None:
    """Any bytes give a Request or a ProtocolError, never an exception."""
    assert isinstance(parse_request(line), Request | ProtocolError)


def test_event_carries_the_five_fields() -> None:
    """A watch event is one line with the scope, its five fields, the mode, and
    overdue, via, by and note (the audit fields)."""
    status = ScopeStatus("shop", "draining", "2026-11-21T23:00:00Z", None, "ü migration", 2)
    line = encode(state_event(status))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "event": "state",
        "scope": "shop",
        "state": "draining",
        "since": "2026-11-21T23:00:00Z",
        "until": None,
        "reason": "ü migration",
        "jobs": 2,
        "mode": None,
        "overdue": False,
        "via": None,
        "by": None,
        "note": None,
    }
