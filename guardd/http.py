"""The HTTP/1.x health responder and maintenance page: an ``asyncio.Protocol``.

Every answer is prebuilt as bytes when the scope's state changes (and renewed at
most once a second for ``Date`` and ``Retry-After``); a request costs parsing its
head and one dictionary look-up. Nothing here touches the disk.

The nginx ``auth_request`` gate (``http.gate_path``) answers 204 or 403 from the
same prebuilt bytes; only while the scope is in maintenance does a gate request
cost more: reading four headers and asking ``guardd.gate`` (which remembers).

Request bodies are never buffered: a ``Content-Length`` body is counted off as it
arrives and the connection stays usable; a chunked body (or one announced with
``Expect: 100-continue``) is answered, then the connection is half-closed and its
input discarded until the client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from enum import IntEnum
from http import HTTPStatus
from typing import NamedTuple, cast

from guardd.config import Config, Policy
from guardd.gate import BYPASS_PATH, Gate, GateRules, Verdict
from guardd.page import Page, maintenance_page, outage_page, render_template, uses_retry_after
from guardd.policy import health_answer, health_body, retry_after_seconds, until_epoch
from guardd.state import ScopeView

log = logging.getLogger(__name__)

# A request head (request line, headers, blank line) longer than this gets 431.
MAX_HEAD = 8192
# After an error or a body we will not read, how long the client may keep sending
# before the connection is cut: closing with unread input would send a TCP reset,
# which can destroy our answer before the client reads it.
LINGER_SECONDS = 5.0
# Distinct Accept headers remembered; browsers send a handful of them.
ACCEPT_CACHE_SIZE = 512
# Distinct request heads remembered with their parse (parse_head is pure): a load
# balancer's probe, or a flood of one request, is parsed once. Only short heads:
# the cache holds at most HEAD_CACHE_SIZE * HEAD_CACHE_MAX_BYTES (512 KiB).
HEAD_CACHE_SIZE = 512
HEAD_CACHE_MAX_BYTES = 1024
# Answers to pipelined requests are written in batches of about this size, so that
# flow control (pause_writing) stops a client that sends without reading before
# its answers pile up in memory.
FLUSH_BYTES = 65536
STATUS_PATH = b"/maintenance.json"
BYPASS_PREFIX = b"/.guardd/"

HTML = "text/html; charset=utf-8"
JSON = "application/json"
HEALTH_JSON = "application/health+json"
TEXT = "text/plain; charset=utf-8"


class Kind(IntEnum):
    """Which prebuilt answer a request gets."""

    HEALTH = 0  # the health path, by policy
    STATUS = 1  # /maintenance.json
    PAGE_HTML = 2  # maintenance page, or the outage page when the scope is off
    PAGE_JSON = 3  # the same for API clients
    NOT_FOUND = 4  # /.guardd/... other than the bypass URL with the right secret
    BAD_REQUEST = 5  # malformed: 400, then close
    TOO_LARGE = 6  # head over MAX_HEAD: 431, then close
    BAD_VERSION = 7  # HTTP/2 and later spoken as text: 505, then close
    GATE_OPEN = 8  # the gate, scope off: 204
    GATE_PATH = 9  # the gate in maintenance, an exempt path: 204
    GATE_ADDRESS = 10  # ... an allowed client address: 204
    GATE_COOKIE = 11  # ... a valid bypass cookie: 204
    GATE_CLOSED = 12  # the gate in maintenance, nothing lets it through: 403
    BYPASS = 13  # /.guardd/bypass/<secret>: set the cookie, 302 to /


class Persist(IntEnum):
    """What happens to the connection after the answer, and the header that says so."""

    KEEP = 0  # HTTP/1.1 persistent: no Connection header needed
    KEEP_10 = 1  # HTTP/1.0 that asked for keep-alive: "Connection: keep-alive"
    CLOSE = 2  # "Connection: close", then a graceful close


_CONNECTION_HEADER = {
    Persist.KEEP: b"",
    Persist.KEEP_10: b"Connection: keep-alive\r\n",
    Persist.CLOSE: b"Connection: close\r\n",
}


@dataclass(frozen=True)
class HttpSettings:
    """What the responder needs from the config, in the form requests are matched in."""

    scope: str
    policy: Policy
    health_path: bytes
    gate_path: bytes
    gate: GateRules
    api_prefixes: tuple[bytes, ...]
    page_status: int
    retry_after: int
    header_timeout: float
    # page_template's text, read when the config is loaded, never per request.
    template: str | None = None

    @classmethod
    def from_config(cls, config: Config, template: str | None) -> HttpSettings:
        """Settings from ``config.http``, with the template text already read."""
        http = config.http
        return cls(
            scope=http.scope,
            policy=http.policy,
            health_path=http.health_path.encode(),
            gate_path=http.gate_path.encode(),
            gate=GateRules.from_config(config.bypass, http.scope),
            api_prefixes=tuple(prefix.encode() for prefix in http.api_prefixes),
            page_status=http.page_status,
            retry_after=http.retry_after,
            header_timeout=http.header_timeout,
            template=template,
        )


@dataclass(frozen=True)
class Reply:
    """One answer before framing: status, type, body and its own extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- pure parts


def _json(obj: object) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


_OUTAGE: Page = outage_page()
_FIXED_REPLIES = {
    Kind.NOT_FOUND: Reply(404, TEXT, b"not found\n"),
    Kind.BAD_REQUEST: Reply(400, TEXT, b"bad request\n"),
    Kind.TOO_LARGE: Reply(431, TEXT, b"request header fields too large\n"),
    Kind.BAD_VERSION: Reply(505, TEXT, b"HTTP version not supported\n"),
    Kind.GATE_OPEN: Reply(204, "", b""),
}
# Which bypass let a request through, for nginx's auth_request_set and for logs.
_GATE_PASSES = {
    Kind.GATE_PATH: "path",
    Kind.GATE_ADDRESS: "address",
    Kind.GATE_COOKIE: "cookie",
}


def build_replies(
    view: ScopeView, settings: HttpSettings, *, retry_after: int, page: Page
) -> dict[Kind, Reply]:
    """Every answer for one scope state. Pure: ``page`` is the rendered maintenance page."""
    status = view.status
    maintenance = status.in_maintenance
    marker = (("Guard-Maintenance", status.scope),) if maintenance else ()
    retry = (("Retry-After", str(retry_after)),)
    vary = (("Vary", "Accept"),)

    health = health_answer(
        status,
        settings.policy,
        other_node_serves=view.other_node_serves,
        degraded=view.degraded,
    )
    replies = dict(_FIXED_REPLIES)
    for kind, why in _GATE_PASSES.items():
        replies[kind] = Reply(204, "", b"", (*marker, ("Guard-Bypass", why)))
    # nginx sends a 403 from the gate to the maintenance page (error_page 403).
    replies[Kind.GATE_CLOSED] = Reply(403, "", b"", marker)
    replies[Kind.HEALTH] = Reply(
        health.code,
        HEALTH_JSON,
        _json(health_body(status, health)),
        marker + (retry if health.retry_after else ()),
    )
    replies[Kind.STATUS] = Reply(
        200,
        JSON,
        _json(
            {
                "scope": status.scope,
                "state": status.state,
                "maintenance": maintenance,
                "reason": status.reason,
                "since": status.since,
                "until": status.until,
                "retry_after": retry_after if maintenance else None,
                "upcoming": [dict(window) for window in view.upcoming],
            }
        ),
        marker,
    )
    if maintenance:
        csp = (("Content-Security-Policy", page.csp),) if page.csp else ()
        replies[Kind.PAGE_HTML] = Reply(
            settings.page_status, HTML, page.html.encode(), marker + retry + vary + csp
        )
        replies[Kind.PAGE_JSON] = Reply(
            settings.page_status,
            JSON,
            _json(
                {
                    "maintenance": True,
                    "reason": status.reason,
                    "until": status.until,
                    "retry_after": retry_after,
                }
            ),
            marker + retry + vary,
        )
    else:
        # An outage must not look like planned work: no marker, no maintenance words.
        assert _OUTAGE.csp is not None
        replies[Kind.PAGE_HTML] = Reply(
            503, HTML, _OUTAGE.html.encode(), (*vary, ("Content-Security-Policy", _OUTAGE.csp))
        )
        replies[Kind.PAGE_JSON] = Reply(
            503, JSON, _json({"maintenance": False, "error": "temporarily unavailable"}), vary
        )
    return replies


def frame(reply: Reply, *, date: str, head_only: bool, persist: Persist) -> bytes:
    """The reply as wire bytes: status line, headers, blank line, body (unless HEAD)."""
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Status"
    lines = [f"HTTP/1.1 {reply.status} {phrase}", f"Date: {date}", "Server: guardd"]
    if reply.content_type:
        lines.append(f"Content-Type: {reply.content_type}")
    if reply.status != 204:  # RFC 9110 8.6: a 204 carries no Content-Length
        lines.append(f"Content-Length: {len(reply.body)}")
    lines += ["Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1") + _CONNECTION_HEADER[persist] + b"\r\n"
    return head if head_only else head + reply.body


def _accept_quality(accept: bytes, main: bytes, sub: bytes) -> tuple[float, int, int]:
    """(q, specificity, -position) of the most specific range in ``accept`` that
    matches ``main/sub`` (RFC 9110 12.5.1); (0, -1, 0) when none does."""
    best = (0.0, -1, 0)
    for position, item in enumerate(accept.split(b",")):
        media, _, params = item.partition(b";")
        kind, _, subtype = media.strip().lower().partition(b"/")
        if kind == main and subtype == sub:
            specificity = 2
        elif kind == main and subtype == b"*":
            specificity = 1
        elif kind == b"*" and subtype == b"*":
            specificity = 0
        else:
            continue
        quality = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    quality = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    quality = 0.0
        if specificity > best[1]:
            best = (quality, specificity, -position)
    return best


def prefers_json(accept: bytes) -> bool:
    """True when ``accept`` ranks application/json above text/html.

    Ties go to the more specific range, then the earlier one, then HTML: a browser
    (``text/html,...,*/*;q=0.8``) gets the page, ``fetch``/axios
    (``application/json, text/plain, */*``) get JSON.
    """
    json_rank = _accept_quality(accept, b"application", b"json")
    if json_rank[0] <= 0.0:
        return False
    return json_rank > _accept_quality(accept, b"text", b"html")


# --------------------------------------------------------------------------- answers


class Answers:
    """Wire bytes of every answer for one scope state, swapped whole on change.

    Renewed at most once a second (the Date header, and Retry-After counting down
    to ``until``); framed lazily per (kind, HEAD, persistence) and cached.
    """

    def __init__(self, view: ScopeView, settings: HttpSettings) -> None:
        self.view = view
        status = self.status = view.status
        self.maintenance = status.in_maintenance
        self.settings = settings
        self.until = until_epoch(status.until) if status.in_maintenance else None
        self.second = -1
        self.date = ""
        self.wire_cache: dict[int, bytes] = {}
        self.page_cache: tuple[int, Page] | None = None
        self.retry_after = -1
        self.replies: dict[Kind, Reply] = {}

    def _page(self, retry_after: int) -> Page:
        template = self.settings.template
        if self.page_cache is not None and (
            template is None or not uses_retry_after(template) or self.page_cache[0] == retry_after
        ):
            return self.page_cache[1]
        status = self.status
        if template is None:
            page = maintenance_page(
                reason=status.reason, until=status.until, retry_after=self.settings.retry_after
            )
        else:
            # The operator's page may load fonts or images: no CSP of ours on it.
            html = render_template(
                template, reason=status.reason, until=status.until, retry_after=retry_after
            )
            page = Page(html=html, csp=None)
        self.page_cache = (retry_after, page)
        return page

    def _renew(self, second: int) -> None:
        self.second = second
        self.date = formatdate(second, usegmt=True)
        self.wire_cache.clear()
        retry_after = retry_after_seconds(
            self.until, now=float(second), default=self.settings.retry_after
        )
        if retry_after != self.retry_after:
            self.retry_after = retry_after
            self.replies = build_replies(
                self.view, self.settings, retry_after=retry_after, page=self._page(retry_after)
            )

    def wire(self, kind: Kind, head_only: bool, persist: Persist, now: float) -> bytes:
        """The bytes to send for this answer at time ``now`` (Unix seconds)."""
        second = int(now)
        if second != self.second:
            self._renew(second)
        key = (kind << 3) | (persist << 1) | head_only
        data = self.wire_cache.get(key)
        if data is None:
            reply = self.replies[kind] if kind != Kind.BYPASS else self._bypass_reply()
            data = frame(reply, date=self.date, head_only=head_only, persist=persist)
            self.wire_cache[key] = data
        return data

    def _bypass_reply(self) -> Reply:
        # Built on demand and kept for the current second, like every answer: the
        # cookie's expiry only changes with the second.
        cookie = self.settings.gate.bypass_cookie(float(self.second))
        return Reply(
            302,
            TEXT,
            b"bypass cookie set\n",
            (
                ("Location", "/"),
                ("Set-Cookie", cookie),
                # The secret is in this URL: never hand it on as a Referer.
                ("Referrer-Policy", "no-referrer"),
            ),
        )


class HttpShared:
    """State shared by every connection of one responder; swapped, never mutated in place."""

    def __init__(self, settings: HttpSettings, view: ScopeView) -> None:
        self.settings = settings
        self.answers = Answers(view, settings)
        self.gate = Gate(settings.gate)
        self.accept_cache: dict[bytes, bool] = {}
        self.head_cache: dict[bytes, ParsedRequest] = {}
        self.connections: set[HttpConnection] = set()

    def publish(self, settings: HttpSettings, view: ScopeView) -> None:
        """New settings or state: one assignment swaps every answer at once."""
        if settings is not self.settings:
            self.gate = Gate(settings.gate)  # a reload forgets every gate decision
        self.settings = settings
        self.answers = Answers(view, settings)

    def wants_json(self, accept: bytes) -> bool:
        """prefers_json, remembered per distinct header value."""
        cached = self.accept_cache.get(accept)
        if cached is None:
            if len(self.accept_cache) >= ACCEPT_CACHE_SIZE:
                self.accept_cache.clear()
            cached = self.accept_cache[accept] = prefers_json(accept)
        return cached

    def close_all(self) -> None:
        """Close every open connection (shutdown: idle keep-alives must not hold it up)."""
        for connection in list(self.connections):
            connection.drop()


# --------------------------------------------------------------------------- protocol


class _Malformed(Exception):
    """The request cannot be parsed: answer with ``kind`` and close."""

    def __init__(self, kind: Kind) -> None:
        super().__init__(kind.name)
        self.kind = kind


class ParsedRequest(NamedTuple):
    """What routing needs from one request head."""

    path: bytes  # without the query
    head_only: bool  # HEAD: headers without the body
    persist: Persist
    accept: bytes | None
    body_length: int  # Content-Length to skip; -1: unknown (chunked), read no further
    fields: bytes  # the header lines, as sent: read again only by a gate request


# One match validates a whole request line: method SP target SP HTTP/d.d, no
# control characters or spaces in the target (RFC 9112 3).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
# One match validates every header line: token ":" value with no CR, NUL or LF
# inside. A folded line (leading whitespace) or a space before the colon fails:
# such leniency is what request smuggling feeds on.
_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\r?\n)*")
# The only headers routing reads, found in one pass over a lowercased copy of the
# header block (every value routing reads is case-insensitive anyway).
_WANTED_HEADERS = re.compile(
    rb"\n(connection|content-length|transfer-encoding|accept|expect):([^\r\n]*)"
)


def _any_case(name: bytes) -> bytes:
    """A regex matching ``name`` in any letter case, as character classes: several
    times faster than re.IGNORECASE, and the values keep their own case."""
    return b"".join(
        b"[%c%c]" % (c, c - 32) if 97 <= c <= 122 else re.escape(bytes([c])) for c in name
    )


# The headers the gate reads, whose values are case-sensitive (paths, cookies), so
# they are matched on the original bytes. Read only for a gate request during
# maintenance. The names' lengths tell them apart: 14, 15, 9 and 6.
_GATE_HEADERS = re.compile(
    rb"\n("
    + b"|".join(
        _any_case(n) for n in (b"x-original-uri", b"x-forwarded-for", b"x-real-ip", b"cookie")
    )
    + rb"):[ \t]*([^\r\n]*)"
)
_ORIGINAL_URI, _FORWARDED_FOR, _REAL_IP = 14, 15, 9
# Module-level aliases: an enum member looked up on its class costs ~0.1 us,
# several times per request on the hot path.
_KEEP, _KEEP_10, _CLOSE = Persist.KEEP, Persist.KEEP_10, Persist.CLOSE
_HEALTH, _STATUS, _PAGE_HTML, _PAGE_JSON, _NOT_FOUND = (
    Kind.HEALTH,
    Kind.STATUS,
    Kind.PAGE_HTML,
    Kind.PAGE_JSON,
    Kind.NOT_FOUND,
)
_GATE_OPEN, _BYPASS = Kind.GATE_OPEN, Kind.BYPASS
# The gate's verdict -> its answer.
_GATE_KINDS = {
    Verdict.DENY: Kind.GATE_CLOSED,
    Verdict.PATH: Kind.GATE_PATH,
    Verdict.ADDRESS: Kind.GATE_ADDRESS,
    Verdict.COOKIE: Kind.GATE_COOKIE,
}


class GateHeaders(NamedTuple):
    """What the gate reads from a request (None: the header is absent)."""

    original_uri: bytes | None
    forwarded_for: bytes | None
    real_ip: bytes | None
    cookie: bytes | None


def gate_headers(fields: bytes) -> GateHeaders:
    """The gate's four headers from a header block, values as sent.

    Repeated ``X-Forwarded-For`` headers are one list (RFC 9110 5.3), repeated
    ``Cookie`` headers one cookie string; of the single-valued ones the first wins.
    """
    original_uri = real_ip = None
    forwarded: list[bytes] = []
    cookies: list[bytes] = []
    for name, raw_value in _GATE_HEADERS.findall(b"\n" + fields):
        value = raw_value.rstrip(b" \t")
        size = len(name)
        if size == _FORWARDED_FOR:
            forwarded.append(value)
        elif size == _ORIGINAL_URI:
            original_uri = value if original_uri is None else original_uri
        elif size == _REAL_IP:
            real_ip = value if real_ip is None else real_ip
        else:
            cookies.append(value)
    return GateHeaders(
        original_uri,
        b",".join(forwarded) if forwarded else None,
        real_ip,
        b"; ".join(cookies) if cookies else None,
    )


def _target_path(target: bytes) -> bytes:
    """The path of an origin-form or absolute-form target, without the query."""
    if target[:1] == b"/":
        path = target
    elif target == b"*":
        return target
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise _Malformed(Kind.BAD_REQUEST)
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    query = path.find(b"?")
    return path[:query] if query >= 0 else path


def parse_head(head: bytes) -> ParsedRequest:
    """Parse a request head (without its final blank line). Raises _Malformed.

    Strict where leniency enables request smuggling: no whitespace before a header
    colon, no folded lines, no bare CR, no Content-Length with Transfer-Encoding.
    """
    line_end = head.find(b"\n")
    if line_end < 0:
        request_line, fields = head, b""
    else:
        request_line, fields = head[:line_end], head[line_end + 1 :] + b"\n"
    if request_line[-1:] == b"\r":
        request_line = request_line[:-1]
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _Malformed(Kind.BAD_REQUEST)
    method, target, major, minor = match.groups()
    if major != b"1":
        raise _Malformed(Kind.BAD_VERSION)
    modern = minor != b"0"  # HTTP/1.x, x > 1, is answered as 1.1 (RFC 9110 2.5)
    if fields and _HEADER_LINES.fullmatch(fields) is None:
        raise _Malformed(Kind.BAD_REQUEST)

    close = keep_alive = expect_continue = False
    content_length: int | None = None
    codings: list[bytes] = []
    accept: bytes | None = None
    for name, raw_value in _WANTED_HEADERS.findall(b"\n" + fields.lower()) if fields else ():
        value = raw_value.strip(b" \t")
        if name == b"accept":
            accept = value if accept is None else accept + b"," + value
        elif name == b"connection":
            tokens = [token.strip() for token in value.split(b",")]
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise _Malformed(Kind.BAD_REQUEST)
            if content_length is not None and content_length != int(value):
                raise _Malformed(Kind.BAD_REQUEST)
            content_length = int(value)
        elif name == b"transfer-encoding":
            codings += [c.strip() for c in value.split(b",") if c.strip()]
        else:  # expect
            expect_continue = value == b"100-continue"

    body_length = content_length or 0
    if codings:
        # RFC 9112 6.1/6.3: with Transfer-Encoding the length is only knowable when
        # chunked comes last; never together with Content-Length; not in HTTP/1.0.
        if content_length is not None or not modern or codings[-1] != b"chunked":
            raise _Malformed(Kind.BAD_REQUEST)
        body_length = -1
    if expect_continue and body_length:
        # The client may or may not send the body after our final answer: the only
        # safe framing is to stop reading requests on this connection.
        body_length = -1

    if body_length < 0 or close:
        persist = _CLOSE
    elif modern:
        persist = _KEEP
    else:
        persist = _KEEP_10 if keep_alive else _CLOSE
    return ParsedRequest(
        _target_path(target), method == b"HEAD", persist, accept, body_length, fields
    )


def _find_head_end(data: bytes, start: int) -> tuple[int, int]:
    """(end of the head, start of what follows) within MAX_HEAD of ``start``; (-1, -1)
    when no blank line is there yet. Accepts CRLF and bare LF line ends."""
    limit = start + MAX_HEAD
    crlf = data.find(b"\n\r\n", start, limit)
    search_end = crlf + 1 if crlf >= 0 else limit
    bare = data.find(b"\n\n", start, search_end)
    if bare >= 0:
        return bare, bare + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


class HttpConnection(asyncio.Protocol):
    """One client connection: parse heads, write prebuilt answers, discard bodies."""

    def __init__(self, shared: HttpShared, loop: asyncio.AbstractEventLoop) -> None:
        self.shared = shared
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        # Parsing: bytes of an unfinished head (or a backlog while the client does
        # not read), and how much of a request body is still to be skipped.
        self.buffer = b""
        self.body_left = 0
        # Flow control: the client is not reading our answers; stop parsing.
        self.paused = False
        # Lifetime: one timer per connection, pushed forward lazily. Until
        # ``deadline`` the client may finish its next head (or, lingering, hang up).
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.lingering = False
        # The TCP peer's address, looked up by the first gate request that needs it.
        self.peer: str | None = None

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.shared.connections.add(self)
        self._arm(self.loop.time() + self.shared.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered and half-closed: input is only drained
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        self._feed(data)

    def eof_received(self) -> bool:
        # The client is done sending; answers already written still go out, then
        # the transport closes (returning False tells asyncio to close it).
        return False

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.lingering:
            self.transport.resume_reading()
            if self.buffer:
                data, self.buffer = self.buffer, b""
                self._feed(data)

    # ------------------------------------------------------------------ requests

    def _feed(self, data: bytes) -> None:
        """Answer every complete request in ``data``; keep an unfinished head."""
        shared = self.shared
        answers = shared.answers
        head_cache = shared.head_cache
        now = time.time()
        out: list[bytes] = []
        pos = 0
        size = len(data)
        heads = 0
        pending = 0
        while pos < size:
            if self.body_left:
                skipped = min(self.body_left, size - pos)
                pos += skipped
                self.body_left -= skipped
                continue
            if self.paused:
                self.buffer = data[pos:]
                break
            # RFC 9112 2.2: empty lines before a request line are ignored.
            while pos < size and data[pos] in b"\r\n":
                pos += 1
            if pos == size:
                break
            end, after = _find_head_end(data, pos)
            if end < 0:
                if size - pos >= MAX_HEAD:
                    out.append(answers.wire(Kind.TOO_LARGE, False, _CLOSE, now))
                    self._finish(out)
                    return
                self.buffer = data[pos:]
                break
            head = data[pos:end]
            parsed = head_cache.get(head)
            if parsed is None:
                try:
                    parsed = parse_head(head)
                except _Malformed as err:
                    out.append(answers.wire(err.kind, False, _CLOSE, now))
                    self._finish(out)
                    return
                if len(head) <= HEAD_CACHE_MAX_BYTES:
                    if len(head_cache) >= HEAD_CACHE_SIZE:
                        head_cache.clear()
                    head_cache[head] = parsed
            path, head_only, persist, accept, body_length, fields = parsed
            pos = after
            heads += 1
            answer = answers.wire(self._route(path, accept, fields, now), head_only, persist, now)
            out.append(answer)
            if persist is _CLOSE:
                self._finish(out)
                return
            self.body_left = body_length
            pending += len(answer)
            if pending >= FLUSH_BYTES and self.transport is not None:
                self.transport.write(b"".join(out))  # may call pause_writing()
                out.clear()
                pending = 0
        if heads:
            # The next head is due within header_timeout; the timer that is already
            # armed fires early, sees the later deadline and re-arms (no per-request
            # timer churn).
            self.deadline = self.loop.time() + shared.settings.header_timeout
            if self.timer is None:
                self._arm(self.deadline)
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _route(self, path: bytes, accept: bytes | None, fields: bytes, now: float) -> Kind:
        shared = self.shared
        settings = shared.settings
        if path == settings.gate_path:
            # The hottest path behind nginx: while the scope is off, no work at all.
            if not shared.answers.maintenance:
                return _GATE_OPEN
            return self._gate(fields, now)
        if path == settings.health_path:
            return _HEALTH
        if path == STATUS_PATH:
            return _STATUS
        if path.startswith(BYPASS_PREFIX):
            # A wrong secret, or none configured, gets the very 404 of any other
            # /.guardd/ path: nothing tells an attacker which case it was.
            if path.startswith(BYPASS_PATH) and shared.gate.rules.signer.secret_matches(
                path[len(BYPASS_PATH) :]
            ):
                return _BYPASS
            return _NOT_FOUND
        if path.startswith(settings.api_prefixes) or (
            accept is not None and self.shared.wants_json(accept)
        ):
            return _PAGE_JSON
        return _PAGE_HTML

    def _gate(self, fields: bytes, now: float) -> Kind:
        """The gate's answer during maintenance."""
        original_uri, forwarded_for, real_ip, cookie = gate_headers(fields)
        peer = self.peer
        if peer is None and self.transport is not None:
            name = self.transport.get_extra_info("peername")
            peer = self.peer = str(name[0]) if isinstance(name, tuple) and name else None
        verdict = self.shared.gate.decide(
            original_uri=original_uri,
            peer=peer,
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            cookie=cookie,
            now=now,
        )
        return _GATE_KINDS[verdict]

    # ------------------------------------------------------------------ closing

    def _finish(self, out: list[bytes]) -> None:
        """Write the last answers, half-close, and drain input until the client leaves."""
        transport = self.transport
        if transport is None:
            return
        self.buffer = b""
        self.body_left = 0
        self.lingering = True
        transport.write(b"".join(out))
        if transport.can_write_eof():
            transport.write_eof()
        if self.paused:
            self.paused = False
            transport.resume_reading()  # drain, or the client's FIN is never seen
        self._arm(self.loop.time() + min(LINGER_SECONDS, self.shared.settings.header_timeout))

    def _arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self.timer is not None and self.timer.when() <= deadline:
            return  # fires early, sees the later deadline and re-arms itself
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        # An unfinished head, an idle keep-alive, or a client that never hung up.
        self.drop()

    def drop(self) -> None:
        """Close now, without waiting for anything."""
        transport = self.transport
        if transport is None:
            return
        if self.lingering or transport.get_write_buffer_size():
            # A client that would not hang up, or does not read what it asked for:
            # close() would wait for it for ever, a reset is all it gets.
            transport.abort()
        else:
            transport.close()
