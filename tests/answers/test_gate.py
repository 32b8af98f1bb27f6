"""The gate and the bypass cookie: the pure decisions (path normalisation, forwarded
addresses, networks, cookie signing, with time given by the test), then the gate and
the bypass URL on real sockets to a real guardd."""

from __future__ import annotations

import hmac
import random
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from guardd.answers import gate as gate_module
from guardd.answers.gate import (
    CLOCK_SLACK,
    COOKIE_NAME,
    CookieSigner,
    Gate,
    GateRules,
    Verdict,
    client_address,
    cookie_values,
    in_networks,
    normalize_path,
    parse_address,
    parse_networks,
    unambiguous_path,
)
from guardd.answers.http.parse import gate_headers, parse_head
from guardd.config.model import BypassConfig
from tests.fakes import FakeClock
from tests.helpers import EVENT_TIMEOUT, Guardd, command, free_port
from tests.httpclient import Connection, Response, wait_for_state, write_flag

SECRET = "unit-secret-0123456789-abcdef"
NOW = 1_800_000_000.0  # a fixed "now": no test here reads the clock or sleeps
TRUSTED = parse_networks(["127.0.0.1", "192.168.0.0/24", "fd00::/8"])


def ip(text: str) -> Any:
    address = parse_address(text)
    assert address is not None
    return address


def rules(**bypass: Any) -> GateRules:
    return GateRules.from_config(BypassConfig(**bypass), "default")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", "/"),
        (b"/a/b", "/a/b"),
        (b"/a//b", "/a/b"),
        (b"//a///b/", "/a/b/"),
        (b"/a/./b", "/a/b"),
        (b"/a/../b", "/b"),
        (b"/../../etc/passwd", "/etc/passwd"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/.", "/a/b/"),
        (b"/static/x.css?v=/admin", "/static/x.css"),
        (b"/status#frag", "/status"),
        (b"/%73tatic/x", "/static/x"),
        (b"/static/%2e%2e/admin", "/admin"),
        (b"/static/%2E%2E/%2e/x", "/x"),
        # Decoded once, like the application decodes it: "%2e%2e" is then a name.
        (b"/static/%252e%252e/admin", "/static/%2e%2e/admin"),
        (b"/caf%C3%A9", "/caf\u00e9"),
        (b"/a/..b/c", "/a/..b/c"),
        (b"http://example.test/static/x?q", "/static/x"),
        (b"HTTPS://example.test", "/"),
        # Dot segments first (an empty segment is one), then slashes merged (SPEC).
        (b"/admin//../static/x", "/admin/static/x"),
        (b"/a//..//b", "/a/b"),
        (b"/a/b//./..", "/a/b/"),
    ],
)
def test_normalize_path(target: bytes, expected: str) -> None:
    """Query dropped, percent-decoded once, slashes merged, dot segments resolved."""
    assert normalize_path(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"/static/..%2Fadmin",
        b"/static/..%2fadmin",
        b"/static%2F..%2Fadmin",
        b"/static/..%5Cadmin",
        b"/static/..\\admin",
        b"/status%00",
        b"/status%0A",
        b"/status%7F",
        b"/static/..;/admin",
        b"/static/.;x/admin",
        b"/static/%2e%2e%3b/admin",
        b"/%FF%FE",
        b"*",
        b"ftp://example.test/static/",
        b"static/x",
        b"",
    ],
)
def test_ambiguous_paths_are_never_exempt(target: bytes) -> None:
    """Encoded slashes, backslashes, control characters, '..;' segments, bad UTF-8 and
    non-paths give None, and so never match a bypass pattern, not even '.*'."""
    assert normalize_path(target) is None
    assert not rules(paths=(".*",)).path_exempt(target)


def _rfc3986_remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, written out as the RFC gives it (string buffers)."""
    out = ""
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = "/" + path[3:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = "/" + path[4:]
            out = out[: max(out.rfind("/"), 0)]
        elif path == "/..":
            path = "/"
            out = out[: max(out.rfind("/"), 0)]
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            end = len(path) if end < 0 else end
            out, path = out + path[:end], path[end:]
    return out


def _reference(path: str) -> str:
    """The SPEC's order: resolve dot segments, then merge repeated slashes."""
    return re.sub("/+", "/", _rfc3986_remove_dot_segments(path))


_SEGMENTS = st.sampled_from(["", "", ".", "..", "a", "b", "static", "..b", ".a", "%2e", "%2E."])


@settings(max_examples=2000, deadline=None)
@given(segments=st.lists(_SEGMENTS, max_size=10), query=st.sampled_from(["", "?x=/..", "#/a"]))
def test_normalize_path_agrees_with_rfc3986(segments: list[str], query: str) -> None:
    """normalize_path gives what the written-out RFC 3986 remove_dot_segments plus a
    slash merge gives (on the percent-decoded path); unambiguous_path gives the same
    or None, and None exactly when merging slashes first would give another path."""
    target = "/" + "/".join(segments)
    decoded = target.replace("%2e", ".").replace("%2E", ".")
    expected = _reference(decoded)
    assert normalize_path((target + query).encode()) == expected
    merged_first = _rfc3986_remove_dot_segments(re.sub("/+", "/", decoded))
    unambiguous = unambiguous_path((target + query).encode())
    assert unambiguous == (expected if merged_first == expected else None)
    if unambiguous is None:
        assert not rules(paths=(".*",)).path_exempt(target.encode())


@pytest.mark.parametrize(
    ("target", "exempt"),
    [
        (b"/static/app.css", True),
        (b"/static/", True),
        (b"//static//app.css", True),
        (b"/status", True),
        (b"/status?full=1", True),
        (b"/static", False),
        (b"/status/details", False),
        (b"/statusx", False),
        (b"/x/static/app.css", False),
        (b"/static/../admin", False),
        (b"/static/%2e%2e/admin", False),
        (b"/admin/../static/x", True),
        (b"/admin//../static/x", False),
    ],
)
def test_path_exempt_matches_from_the_start(target: bytes, exempt: bool) -> None:
    """bypass.paths are regexes matched at the start of the normalised path (re.match)."""
    assert rules(paths=("/static/", "/status$")).path_exempt(target) is exempt


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        (" 10.1.2.3 ", "10.1.2.3"),
        ("10.1.2.3:8080", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        (b"10.1.2.3", "10.1.2.3"),
    ],
)
def test_parse_address(text: str | bytes, expected: str) -> None:
    """Peer names and forwarded entries, with ports and brackets; IPv4-mapped is IPv4."""
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", ["unknown", "", "_hidden", "10.1.2", "[::1", b"\xff10.0.0.1"])
def test_parse_address_rejects_garbage(text: str | bytes) -> None:
    """Anything that is not an address is None, never an exception."""
    assert parse_address(text) is None


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.1.255.255", True),
        ("10.2.0.1", False),
        ("::ffff:10.1.2.3", True),
        ("2001:db8::5", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("::1", False),
    ],
)
def test_cidr_matching_v4_and_v6(address: str, allowed: bool) -> None:
    """bypass.cidrs holds IPv4 and IPv6 networks and single addresses; families never mix."""
    networks = parse_networks(["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"])
    assert in_networks(ip(address), networks) is allowed


def test_ipv4_mapped_network_in_config_matches_ipv4_clients() -> None:
    """A network written IPv4-mapped (::ffff:10.1.0.0/112) matches the IPv4 clients it maps."""
    networks = parse_networks(["::ffff:10.1.0.0/112"])
    assert in_networks(ip("10.1.2.3"), networks)
    assert not in_networks(ip("10.2.2.3"), networks)


def test_ipv4_network_does_not_match_ipv6_client() -> None:
    """0.0.0.0/0 lets in no IPv6 client, ::/0 no IPv4 client (other than IPv4-mapped)."""
    assert not in_networks(ip("2001:db8::1"), parse_networks(["0.0.0.0/0"]))
    assert not in_networks(ip("10.1.2.3"), parse_networks(["::/0"]))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "expected"),
    [
        # An untrusted peer: its headers are its own claims, ignored.
        ("203.0.113.9", b"10.1.2.3", b"10.1.2.3", "203.0.113.9"),
        # A trusted proxy: the right-most entry it did not add itself.
        ("127.0.0.1", b"10.1.2.3", None, "10.1.2.3"),
        ("127.0.0.1", b"6.6.6.6, 10.1.2.3", None, "10.1.2.3"),
        ("127.0.0.1", b"6.6.6.6, 10.1.2.3, 192.168.0.5", None, "10.1.2.3"),
        ("127.0.0.1", b"10.1.2.3,192.168.0.5,127.0.0.1", None, "10.1.2.3"),
        ("::ffff:127.0.0.1", b"10.1.2.3", None, "10.1.2.3"),
        ("fd00::7", b"[2001:db8::1]:5555, fd00::8", None, "2001:db8::1"),
        ("127.0.0.1", b"10.1.2.3:4567", None, "10.1.2.3"),
        # Spoofed on the left of a client that is not a trusted proxy: ignored.
        ("127.0.0.1", b"10.1.2.3, 198.51.100.4", None, "198.51.100.4"),
        # Only trusted proxies in the chain: X-Real-IP, else the peer.
        ("127.0.0.1", b"192.168.0.5, 127.0.0.1", b"10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", None, b"10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", b"", b"10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", None, None, "127.0.0.1"),
        # Garbage where the client should be: no address (fail closed).
        ("127.0.0.1", b"10.1.2.3, unknown", None, None),
        ("127.0.0.1", b"10.1.2.3, unknown, 127.0.0.1", b"10.1.2.3", None),
        ("127.0.0.1", None, b"not an address", None),
    ],
)
def test_client_address(
    peer: str, forwarded_for: bytes | None, real_ip: bytes | None, expected: str | None
) -> None:
    """The peer, unless it is a trusted proxy: then the right-most untrusted
    X-Forwarded-For entry, else X-Real-IP."""
    found = client_address(ip(peer), forwarded_for=forwarded_for, real_ip=real_ip, trusted=TRUSTED)
    assert (str(found) if found is not None else None) == expected


def test_client_address_without_trusted_proxies_is_the_peer() -> None:
    """No trusted_proxies configured: forwarded headers never matter."""
    found = client_address(ip("127.0.0.1"), forwarded_for=b"10.1.2.3", real_ip=None, trusted=())
    assert str(found) == "127.0.0.1"


def test_endless_trusted_chain_gives_no_address() -> None:
    """A crafted chain of trusted-looking hops longer than any deployment: no address."""
    chain = b", ".join([b"10.1.2.3"] + [b"192.168.0.5"] * (gate_module.MAX_FORWARDED_HOPS + 1))
    found = client_address(ip("127.0.0.1"), forwarded_for=chain, real_ip=None, trusted=TRUSTED)
    assert found is None


# --------------------------------------------------------------------------- headers


def test_gate_headers_keep_case_and_combine_repeats() -> None:
    """Names match in any case; values keep theirs; repeated X-Forwarded-For and Cookie
    headers are combined, and the first X-Original-URI wins."""
    head = (
        b"GET /gate HTTP/1.1\r\nHost: x\r\nx-original-uri: /Static/A.css?Q=1\r\n"
        b"X-ORIGINAL-URI: /second\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For:10.1.2.3 \r\n"
        b"Cookie: a=B\r\ncookie: guardd_bypass=v1.X\r\nX-Real-IP: \t10.9.9.9\r\nAccept: */*"
    )
    headers = gate_headers(parse_head(head).fields)
    assert headers.original_uri == b"/Static/A.css?Q=1"
    assert headers.forwarded_for == b"6.6.6.6,10.1.2.3"
    assert headers.real_ip == b"10.9.9.9"
    assert headers.cookie == b"a=B; guardd_bypass=v1.X"


def test_gate_headers_absent() -> None:
    """A request without the gate's headers (or without any header) gives None for each."""
    assert tuple(gate_headers(parse_head(b"GET /gate HTTP/1.0").fields)) == (None,) * 5
    headers = gate_headers(parse_head(b"GET /gate HTTP/1.1\r\nX-Original: /x").fields)
    assert tuple(headers) == (None,) * 5


# --------------------------------------------------------------------------- cookie


def signer(secret: str = SECRET, ttl: float = 3600) -> CookieSigner:
    return CookieSigner.from_secret(secret, ttl)


def test_cookie_round_trip() -> None:
    """A signed cookie is valid for its scope until now + ttl, and names scope and expiry."""
    value = signer().sign("default", now=NOW)
    assert value.startswith(f"v1.default.{int(NOW) + 3600}.")
    assert signer().expiry(value.encode(), "default", now=NOW) == int(NOW) + 3600
    assert signer().expiry(value.encode(), "default", now=NOW + 3599) == int(NOW) + 3600


def test_cookie_expires() -> None:
    """At its expiry (and after) the cookie is rejected."""
    value = signer().sign("default", now=NOW).encode()
    assert signer().expiry(value, "default", now=NOW + 3600) is None
    assert signer().expiry(value, "default", now=NOW + 10**6) is None


def test_cookie_beyond_a_shortened_ttl_is_rejected() -> None:
    """Shortening cookie_ttl (reload) shortens cookies already handed out."""
    value = signer(ttl=12 * 3600).sign("default", now=NOW).encode()
    assert signer(ttl=3600).expiry(value, "default", now=NOW) is None
    assert signer(ttl=12 * 3600 - CLOCK_SLACK).expiry(value, "default", now=NOW) is not None


def test_cookie_every_tampered_byte_is_rejected() -> None:
    """Changing any one character of the value (scope, expiry, MAC, separators) invalidates it."""
    value = signer().sign("default", now=NOW)
    alphabet = "ABCabc019-_."
    for index, original in enumerate(value):
        for replacement in alphabet:
            if replacement == original:
                continue
            tampered = value[:index] + replacement + value[index + 1 :]
            assert signer().expiry(tampered.encode(), "default", now=NOW) is None, tampered


def test_cookie_extended_expiry_is_rejected() -> None:
    """Moving the expiry later (keeping the MAC) is caught by the MAC."""
    version, scope, expiry, mac = signer().sign("default", now=NOW).split(".")
    forged = f"{version}.{scope}.{int(expiry) + 60}.{mac}".encode()
    assert signer().expiry(forged, "default", now=NOW) is None


def test_cookie_is_bound_to_its_scope() -> None:
    """A cookie for "shop" does not open "default", nor with the scope text swapped."""
    value = signer().sign("shop", now=NOW)
    assert signer().expiry(value.encode(), "default", now=NOW) is None
    swapped = value.replace("v1.shop.", "v1.default.").encode()
    assert signer().expiry(swapped, "default", now=NOW) is None
    assert signer().expiry(value.encode(), "shop", now=NOW) is not None


def test_cookie_from_a_foreign_secret_is_rejected() -> None:
    """A cookie signed with another secret (another site, or before rotation) is invalid."""
    value = signer("another-secret-0123456789").sign("default", now=NOW).encode()
    assert signer().expiry(value, "default", now=NOW) is None


def test_no_secret_accepts_no_cookie() -> None:
    """Without bypass.secret no cookie is ever valid, not even one of its own signing."""
    disabled = CookieSigner.from_secret(None, 3600)
    value = disabled.sign("default", now=NOW).encode()
    assert disabled.expiry(value, "default", now=NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"v1",
        b"v1.default",
        b"v1.default.1800003600",
        b"v1.default.1800003600.",
        b"v1.default.1800003600.abc.def",
        b"v2.default.1800003600.AAAA",
        b"v1.default.01800003600.AAAA",
        b"v1.default.-1.AAAA",
        b"v1.default.99999999999999999999.AAAA",
        b"v1.default.1800003600.!!!!",
        b"v1.default.1800003600." + b"A" * 43,
        b"\xff\xfe\x00",
        "v1.d\u00e9fault.1.A".encode(),
        b"." * 500,
    ],
)
def test_cookie_garbage_is_rejected_without_exception(value: bytes) -> None:
    """Malformed values are simply invalid."""
    assert signer().expiry(value, "default", now=NOW) is None


def test_cookie_random_bytes_never_raise() -> None:
    """Seeded random values, and random mutations of a valid one: invalid, never an error."""
    rng = random.Random(8)
    good = signer().sign("default", now=NOW).encode()
    for _ in range(2000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        assert signer().expiry(noise, "default", now=NOW) is None
        mutated = bytearray(good)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if bytes(mutated) != good:
            assert signer().expiry(bytes(mutated), "default", now=NOW) is None


def test_set_cookie_attributes() -> None:
    """HttpOnly, SameSite=Lax, Path=/, Max-Age=ttl, and Secure unless insecure_cookie."""
    secure = rules(secret=SECRET, cookie_ttl=7200).bypass_cookie(NOW)
    parts = [part.strip() for part in secure.split(";")]
    assert parts[0].startswith(f"{COOKIE_NAME}=v1.default.{int(NOW) + 7200}.")
    assert set(parts[1:]) == {"Max-Age=7200", "Path=/", "HttpOnly", "SameSite=Lax", "Secure"}
    plain = rules(secret=SECRET, insecure_cookie=True).bypass_cookie(NOW)
    assert "Secure" not in [part.strip() for part in plain.split(";")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"guardd_bypass=v1.a.1.b", [b"v1.a.1.b"]),
        (b"theme=dark; guardd_bypass=v1.a.1.b; lang=en", [b"v1.a.1.b"]),
        (b'guardd_bypass="v1.a.1.b"', [b"v1.a.1.b"]),
        (b"guardd_bypass=one;guardd_bypass=two", [b"one", b"two"]),
        (b"xguardd_bypass=v1.a.1.b; guardd_bypass_old=v1", []),
        (b"guardd_bypass=bad value", []),
        (b"; ".join([b"guardd_bypass=v"] * 50), [b"v"] * gate_module.MAX_COOKIES_CHECKED),
    ],
)
def test_cookie_values(header: bytes, expected: list[bytes]) -> None:
    """Only guardd_bypass values are read from the Cookie header, a few at most."""
    assert cookie_values(header) == expected


@pytest.mark.parametrize(
    ("candidate", "matches"),
    [
        (SECRET.encode(), True),
        (SECRET.encode()[:-1], False),
        (SECRET.encode() + b"x", False),
        (SECRET.upper().encode(), False),
        (b"", False),
        (b"unit-secret-0123456789%2Dabcdef", True),  # percent-encoded '-'
    ],
)
def test_secret_matches(candidate: bytes, matches: bool) -> None:
    """The URL tail opens the bypass only when it is the secret (percent-decoded)."""
    assert signer().secret_matches(candidate) is matches


def test_no_secret_configured_matches_nothing() -> None:
    """Without bypass.secret no URL matches, whatever it is."""
    disabled = CookieSigner.from_secret(None, 3600)
    assert not disabled.secret_matches(b"")
    assert not disabled.secret_matches(SECRET.encode())


def test_comparisons_use_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret URL, in the responder's own routing, and the cookie MAC are compared
    with hmac.compare_digest on bytes."""
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert signer().secret_matches(SECRET.encode())
    assert len(calls) == 1
    value = signer().sign("default", now=NOW).encode()
    assert signer().expiry(value, "default", now=NOW) is not None
    assert len(calls) == 2
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)

    # The responder's route for /.guardd/bypass/<secret> goes through the same check.
    from guardd.answers.http.connection import HttpConnection
    from guardd.answers.http.parse import Kind
    from guardd.answers.http.replies import HttpSettings, HttpShared
    from guardd.core.state import Snapshot

    config = _config(bypass={"secret": SECRET})
    settings = HttpSettings.from_config(config, None)
    shared = HttpShared(settings, Snapshot(statuses={}).view("default"))
    connection = HttpConnection(shared, FakeClock().as_loop())
    calls.clear()
    route = connection._route(f"/.guardd/bypass/{SECRET}".encode(), None, b"", NOW)
    assert route is Kind.BYPASS
    assert len(calls) == 1
    assert connection._route(b"/.guardd/bypass/wrong", None, b"", NOW) is Kind.NOT_FOUND
    assert len(calls) == 2


def _config(**settings: Any) -> Any:
    from guardd.config.load import load_config

    path = Path(f"/tmp/guardd-gate-test-{free_port()}.yaml")
    path.write_text(yaml.safe_dump({"lock_dir": "/tmp/x", "runtime_dir": "/tmp/y", **settings}))
    try:
        return load_config(str(path))
    finally:
        path.unlink()


# --------------------------------------------------------------------------- Gate.decide


def decide(gate: Gate, **request: Any) -> Verdict:
    fields: dict[str, Any] = {
        "original_uri": b"/shop",
        "peer": "203.0.113.9",
        "forwarded_for": None,
        "real_ip": None,
        "cookie": None,
        "now": NOW,
    }
    fields.update(request)
    return gate.decide(**fields)


def full_gate() -> Gate:
    return Gate(
        rules(
            paths=("/static/",),
            cidrs=("10.1.0.0/16",),
            trusted_proxies=("127.0.0.1",),
            secret=SECRET,
        )
    )


def test_decide_each_way_through() -> None:
    """DENY by default; PATH, ADDRESS and COOKIE each let a request through on their own."""
    gate = full_gate()
    cookie = f"{COOKIE_NAME}={gate.rules.signer.sign('default', now=NOW)}".encode()
    assert decide(gate) is Verdict.DENY
    assert decide(gate, original_uri=b"/static/x.css") is Verdict.PATH
    assert decide(gate, peer="10.1.7.7") is Verdict.ADDRESS
    assert decide(gate, peer="127.0.0.1", forwarded_for=b"10.1.2.3") is Verdict.ADDRESS
    assert decide(gate, forwarded_for=b"10.1.2.3") is Verdict.DENY  # untrusted peer
    assert decide(gate, cookie=cookie) is Verdict.COOKIE
    assert decide(gate, cookie=cookie, now=NOW + 12 * 3600) is Verdict.DENY
    assert decide(gate, original_uri=None, peer=None) is Verdict.DENY


def test_decide_remembered_cookie_still_expires() -> None:
    """A cookie remembered as valid is still refused once its expiry has passed."""
    gate = full_gate()
    cookie = f"{COOKIE_NAME}={gate.rules.signer.sign('default', now=NOW)}".encode()
    assert decide(gate, cookie=cookie) is Verdict.COOKIE
    assert gate.cookie_cache
    assert decide(gate, cookie=cookie, now=NOW + 12 * 3600 + 1) is Verdict.DENY


def test_decide_remembers_path_and_address_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same original URI or client is worked out once; a new Gate forgets."""
    counts = {"path": 0, "address": 0}
    path_exempt, address_allowed = GateRules.path_exempt, GateRules.address_allowed

    def counting_path(self: GateRules, uri: bytes) -> bool:
        counts["path"] += 1
        return path_exempt(self, uri)

    def counting_address(self: GateRules, *args: Any) -> bool:
        counts["address"] += 1
        return address_allowed(self, *args)

    monkeypatch.setattr(GateRules, "path_exempt", counting_path)
    monkeypatch.setattr(GateRules, "address_allowed", counting_address)
    gate = full_gate()
    for _ in range(5):
        assert decide(gate) is Verdict.DENY
    assert counts == {"path": 1, "address": 1}
    decide(Gate(gate.rules))
    assert counts == {"path": 2, "address": 2}


def test_decide_skips_what_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no bypass configured the gate does no parsing at all: straight to DENY."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no parsing expected")

    monkeypatch.setattr(gate_module, "normalize_path", fail)
    monkeypatch.setattr(gate_module, "parse_address", fail)
    monkeypatch.setattr(gate_module, "cookie_values", fail)
    assert decide(Gate(rules()), cookie=b"guardd_bypass=x") is Verdict.DENY


# --------------------------------------------------------------------------- real guardd


@dataclass
class Served:
    """A running guardd with its HTTP responder on ``port``."""

    guardd: Guardd
    port: int

    def get(
        self, path: str = "/", *, source: str = "127.0.0.1", method: str = "GET", **headers: str
    ) -> Response:
        with ClientAt(self.port, source) as connection:
            return connection.request(path, method=method, headers=headers)

    def on(self) -> None:
        write_flag(self.guardd.flag(), {"reason": "gate"})
        wait_for_state(self.port, "on")


class ClientAt(Connection):
    """A connection from a chosen loopback source address (127.0.0.0/8 is all local)."""

    def __init__(self, port: int, source: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=EVENT_TIMEOUT, source_address=(source, 0)
        )
        self.buffer = b""


BYPASS = {
    "paths": ["/static/", "/status$"],
    "cidrs": ["10.1.0.0/16", "127.0.0.3"],
    "trusted_proxies": ["127.0.0.1"],
    "secret": SECRET,
}


@pytest.fixture
def serve(make_guardd: Callable[..., Guardd]) -> Callable[..., Served]:
    """Start a guardd whose HTTP responder listens on a free loopback port."""

    def factory(bypass: dict[str, Any] | None = None, **http: Any) -> Served:
        http.setdefault("listen", [f"127.0.0.1:{free_port()}"])
        port = int(http["listen"][0].rsplit(":", 1)[1])  # the first address: IPv4
        settings: dict[str, Any] = {"http": http}
        if bypass is not None:
            settings["bypass"] = bypass
        return Served(make_guardd(settings).start(), port)

    return factory


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    """guardd with the BYPASS rules."""
    return serve(BYPASS)


def test_gate_off_is_204_without_a_body(served: Served) -> None:
    """Scope off: 204, no Content-Length, no-store, no marker; the connection stays usable."""
    with Connection(served.port) as connection:
        gate = connection.request("/gate", headers={"X-Original-URI": "/anything"})
        head = connection.request("/gate", method="HEAD")
        after = connection.request("/healthz")
    for response in (gate, head):
        assert response.status == 204
        assert response.body == b""
        assert "content-length" not in response.header_names()
        assert response.header("cache-control") == "no-store"
        assert "guard-maintenance" not in response.header_names()
    assert after.status == 200


def test_gate_on_denies_with_403_and_marker(served: Served) -> None:
    """Scope on, nothing lets it through: 403 with Guard-Maintenance and no-store."""
    served.on()
    response = served.get("/gate", **{"X-Original-URI": "/shop/cart"})
    assert response.status == 403
    assert response.header("guard-maintenance") == "default"
    assert response.header("cache-control") == "no-store"
    assert response.body == b""


def test_gate_exempt_path(served: Served) -> None:
    """Scope on: X-Original-URI under an exempt path gets 204 (Guard-Bypass: path)."""
    served.on()
    response = served.get("/gate", **{"X-Original-URI": "/static/app.css?v=3"})
    assert response.status == 204
    assert response.header("guard-bypass") == "path"
    assert served.get("/gate", **{"X-Original-URI": "/static/..%2Fadmin"}).status == 403
    assert served.get("/gate", **{"X-Original-URI": "/status/x"}).status == 403


def test_gate_client_address(served: Served) -> None:
    """A peer in bypass.cidrs passes; so does an allowed client forwarded by a trusted
    proxy; an untrusted peer's X-Forwarded-For and X-Real-IP are ignored."""
    served.on()
    assert served.get("/gate", source="127.0.0.3").header("guard-bypass") == "address"
    forwarded = served.get("/gate", **{"X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
    assert forwarded.status == 204
    real_ip = served.get("/gate", **{"X-Real-IP": "10.1.2.3"})
    assert real_ip.status == 204
    spoofed = served.get(
        "/gate", source="127.0.0.2", **{"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"}
    )
    assert spoofed.status == 403
    assert served.get("/gate", **{"X-Forwarded-For": "10.1.2.3, 10.2.0.1"}).status == 403


def test_gate_ipv6_client(serve: Callable[..., Served]) -> None:
    """An IPv6 peer in an IPv6 network passes the gate; other IPv6 peers do not."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    for cidrs, expected in ((["::1/128"], 204), (["2001:db8::/32"], 403)):
        daemon = serve({"cidrs": cidrs}, listen=[f"127.0.0.1:{free_port()}", f"[::1]:{port}"])
        daemon.on()
        with ClientAt(port, "::1", host="::1") as connection:
            assert connection.request("/gate").status == expected
        daemon.guardd.stop()


def test_bypass_visit_sets_cookie_that_opens_the_gate(served: Served) -> None:
    """/.guardd/bypass/<secret>: 302 to / with a Secure, HttpOnly, SameSite=Lax cookie
    that opens the gate (Guard-Bypass: cookie); the page itself stays the page."""
    served.on()
    visit = served.get(f"/.guardd/bypass/{SECRET}")
    assert visit.status == 302
    assert visit.header("location") == "/"
    assert visit.header("cache-control") == "no-store"
    assert visit.header("referrer-policy") == "no-referrer"
    set_cookie = visit.header("set-cookie")
    assert set_cookie is not None
    parts = [part.strip() for part in set_cookie.split(";")]
    assert set(parts[1:]) == {"Max-Age=43200", "Path=/", "HttpOnly", "SameSite=Lax", "Secure"}
    cookie = parts[0]
    opened = served.get("/gate", source="127.0.0.2", Cookie=f"a=1; {cookie}")
    assert opened.status == 204
    assert opened.header("guard-bypass") == "cookie"
    # guardd cannot proxy to the application: serving the page itself, it stays the page.
    page = served.get("/", Cookie=cookie)
    assert page.status == 503
    assert page.header("guard-maintenance") == "default"


def test_wrong_or_missing_secret_is_the_404_of_any_unknown_path(
    serve: Callable[..., Served],
) -> None:
    """A wrong secret, and any secret when none is configured: the very 404 of
    /.guardd/<anything> (same status, headers and body), no cookie."""
    with_secret, without = serve(BYPASS), serve({})
    for served in (with_secret, without):
        wrong = served.get("/.guardd/bypass/" + "x" * len(SECRET))
        prefix = served.get(f"/.guardd/bypass/{SECRET[:-1]}")
        other = served.get("/.guardd/other")
        for response in (wrong, prefix):
            assert response.status == other.status == 404
            assert response.body == other.body
            assert response.header_names() == other.header_names()
            assert "set-cookie" not in response.header_names()
    assert without.get(f"/.guardd/bypass/{SECRET}").status == 404


def test_secret_never_in_logs_or_check_config(served: Served) -> None:
    """After bypass visits and a reload, the secret is nowhere in guardd's stderr, and
    --check-config shows it masked."""
    served.get(f"/.guardd/bypass/{SECRET}")
    served.get("/.guardd/bypass/wrong-guess")
    seen = len(served.guardd.notify.collect())
    served.guardd.signal(signal.SIGHUP)
    served.guardd.notify.wait_for("READY=1", after=seen)
    code, log = served.guardd.stop()
    assert code == 0
    assert "ready" in log  # the log was captured at all
    assert SECRET not in log
    checked = subprocess.run(
        [command("guardd"), "--check-config", "--config", str(served.guardd.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0
    assert SECRET not in checked.stdout + checked.stderr
    assert "********" in checked.stdout


def test_reload_with_a_new_secret_revokes_cookies(served: Served) -> None:
    """Rotating bypass.secret (SIGHUP) invalidates every cookie signed with the old one."""
    served.on()
    cookie = served.get(f"/.guardd/bypass/{SECRET}").header("set-cookie")
    assert cookie is not None
    value = cookie.split(";")[0]
    assert served.get("/gate", Cookie=value).status == 204
    daemon = served.guardd
    daemon.settings["bypass"] = {**BYPASS, "secret": "rotated-secret-0123456789"}
    daemon.write_config()
    seen = len(daemon.notify.collect())
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("READY=1", after=seen)
    assert served.get("/gate", Cookie=value).status == 403
    assert served.get(f"/.guardd/bypass/{SECRET}").status == 404


def test_gate_path_is_configurable(serve: Callable[..., Served]) -> None:
    """http.gate_path moves the gate; /gate becomes an ordinary path (the page)."""
    served = serve(BYPASS, gate_path="/-/auth")
    served.on()
    assert served.get("/-/auth").status == 403
    other = served.get("/gate")
    assert other.status == 503
    assert other.header("content-type") == "text/html; charset=utf-8"


def test_gate_pipelined_answers_frame_correctly(served: Served) -> None:
    """Pipelined gate requests (204 and 403 mixed) are each framed and answered in order."""
    served.on()
    request = b"GET /gate HTTP/1.1\r\nHost: x\r\nX-Original-URI: %s\r\n\r\n"
    with Connection(served.port) as connection:
        connection.send(request % b"/static/a" + request % b"/x" + request % b"/status")
        statuses = [connection.read_response().status for _ in range(3)]
        assert connection.request("/healthz").status == 503
    assert statuses == [204, 403, 204]
