"""fleet/model.py: keys, node records and the pure questions guardd and guardctl ask of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.fleet.model import (
    FleetView,
    NodeRecord,
    NodeScope,
    decode_node,
    node_key,
    parse_key,
    scope_key,
)


def record(node: str, **scopes: tuple[str, int, int | None]) -> NodeRecord:
    return NodeRecord(node, {name: NodeScope(*fields) for name, fields in scopes.items()})


def test_keys_round_trip_and_ignore_a_trailing_slash() -> None:
    """node_key/scope_key build what parse_key reads back, with or without a trailing '/'."""
    assert node_key("/guardd/", "web-1") == b"/guardd/nodes/web-1"
    assert scope_key("/guardd", "shop") == b"/guardd/scopes/shop"
    assert parse_key("/guardd", node_key("/guardd", "web-1")) == ("node", "web-1")
    assert parse_key("/guardd/", scope_key("/guardd", "shop")) == ("scope", "shop")


@pytest.mark.parametrize(
    "key",
    [
        b"/other/nodes/web-1",
        b"/guardd/nodes/",
        b"/guardd/nodes/a/b",
        b"/guardd/scopes/Not_A_Scope!",
        b"/guardd/elsewhere/x",
        b"/guardd/nodes/\xff",
        b"/guarddx/nodes/web-1",
    ],
)
def test_foreign_or_malformed_keys_are_none(key: bytes) -> None:
    """Keys outside the prefix, nested, badly named or not UTF-8 are not ours."""
    assert parse_key("/guardd", key) is None


def test_record_encodes_and_decodes() -> None:
    """A node record survives encode/decode unchanged."""
    original = record("web-1", default=("off", 0, None), shop=("draining", 3, 17))
    assert decode_node("web-1", original.encode()) == original


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"[]", b'{"scopes": []}', b"{" * 5000, b'"text"', b"null"],
)
def test_garbage_is_not_a_record(data: bytes) -> None:
    """Anything but a JSON object with a scopes mapping is None, never an exception."""
    assert decode_node("n", data) is None


def test_bad_scope_entries_are_dropped_or_defaulted() -> None:
    """Unknown states are dropped; bad job counts and revisions fall back to 0 and None."""
    data = (
        b'{"scopes": {"a": {"state": "on", "jobs": true, "revision": "7"},'
        b' "b": {"state": "exploded"}, "c": "on"}}'
    )
    decoded = decode_node("n", data)
    assert decoded == record("n", a=("on", 0, None))


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_none(data: bytes) -> None:
    """decode_node never raises."""
    result = decode_node("n", data)
    assert result is None or isinstance(result, NodeRecord)


def test_others_serving() -> None:
    """True only when another node that has the scope reports it off; None before any view."""
    assert FleetView().others_serving("shop", "me") is None
    view = FleetView(ever_connected=True)
    view.nodes = {
        "me": record("me", shop=("off", 0, None)),
        "peer-on": record("peer-on", shop=("on", 0, 3)),
        "peer-without": record("peer-without", default=("off", 0, None)),
    }
    assert view.others_serving("shop", "me") is False
    view.nodes["peer-off"] = record("peer-off", shop=("off", 0, None))
    assert view.others_serving("shop", "me") is True
