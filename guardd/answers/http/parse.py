"""Pure HTTP/1.x request-head parsing: request line, the few headers guardd reads, Accept.

Nothing here does I/O; the connection protocol calls it once per distinct head."""

from __future__ import annotations

import logging
import re
from enum import IntEnum
from typing import NamedTuple

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
METRICS_PATH = b"/metrics"
# The same under the prefix proxies already send to guardd, and the banner script.
GUARDD_STATUS_PATH = b"/.guardd/maintenance.json"
BANNER_PATH = b"/.guardd/banner.js"
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
    GATE_MODE = 14  # the gate while only a mode is in force, a request it spares: 204
    BANNER = 15  # /.guardd/banner.js
    STATUS_BYPASS = 16  # /maintenance.json for a client that would pass the gate
    METRICS = 17  # /metrics from an address in metrics.allow: rendered per scrape


# guardd_http_requests_total{answer}: each Kind's label.
ANSWER_LABELS: dict[Kind, str] = {
    Kind.HEALTH: "health",
    Kind.STATUS: "maintenance_json",
    Kind.PAGE_HTML: "page",
    Kind.PAGE_JSON: "page_json",
    Kind.NOT_FOUND: "not_found",
    Kind.BAD_REQUEST: "bad_request",
    Kind.TOO_LARGE: "too_large",
    Kind.BAD_VERSION: "bad_version",
    Kind.GATE_OPEN: "gate_open",
    Kind.GATE_PATH: "gate_bypass_path",
    Kind.GATE_ADDRESS: "gate_bypass_address",
    Kind.GATE_COOKIE: "gate_bypass_cookie",
    Kind.GATE_CLOSED: "gate_closed",
    Kind.BYPASS: "bypass_cookie_set",
    Kind.GATE_MODE: "gate_mode_open",
    Kind.BANNER: "banner",
    Kind.STATUS_BYPASS: "maintenance_json_bypass",
    Kind.METRICS: "metrics",
}


class Persist(IntEnum):
    """What happens to the connection after the answer, and the header that says so."""

    KEEP = 0  # HTTP/1.1 persistent: no Connection header needed
    KEEP_10 = 1  # HTTP/1.0 that asked for keep-alive: "Connection: keep-alive"
    CLOSE = 2  # "Connection: close", then a graceful close


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


class Malformed(Exception):
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
        _any_case(n)
        for n in (
            b"x-original-uri",
            b"x-original-method",
            b"x-forwarded-for",
            b"x-real-ip",
            b"cookie",
        )
    )
    + rb"):[ \t]*([^\r\n]*)"
)
# Told apart by length: each of the five names has its own.
_ORIGINAL_URI, _ORIGINAL_METHOD, _FORWARDED_FOR, _REAL_IP = 14, 17, 15, 9
# Module-level aliases: an enum member looked up on its class costs ~0.1 us,
# several times per request on the hot path.
_KEEP, _KEEP_10, _CLOSE = Persist.KEEP, Persist.KEEP_10, Persist.CLOSE


class GateHeaders(NamedTuple):
    """What the gate reads from a request (None: the header is absent)."""

    original_uri: bytes | None
    forwarded_for: bytes | None
    real_ip: bytes | None
    cookie: bytes | None
    original_method: bytes | None = None


def gate_headers(fields: bytes) -> GateHeaders:
    """The gate's headers from a header block, values as sent.

    Repeated ``X-Forwarded-For`` headers are one list (RFC 9110 5.3), repeated
    ``Cookie`` headers one cookie string; of the single-valued ones the first wins.
    """
    original_uri = real_ip = original_method = None
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
        elif size == _ORIGINAL_METHOD:
            original_method = value if original_method is None else original_method
        else:
            cookies.append(value)
    return GateHeaders(
        original_uri,
        b",".join(forwarded) if forwarded else None,
        real_ip,
        b"; ".join(cookies) if cookies else None,
        original_method,
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
            raise Malformed(Kind.BAD_REQUEST)
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    query = path.find(b"?")
    return path[:query] if query >= 0 else path


def parse_head(head: bytes) -> ParsedRequest:
    """Parse a request head (without its final blank line). Raises Malformed.

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
        raise Malformed(Kind.BAD_REQUEST)
    method, target, major, minor = match.groups()
    if major != b"1":
        raise Malformed(Kind.BAD_VERSION)
    modern = minor != b"0"  # HTTP/1.x, x > 1, is answered as 1.1 (RFC 9110 2.5)
    if fields and _HEADER_LINES.fullmatch(fields) is None:
        raise Malformed(Kind.BAD_REQUEST)

    close = keep_alive = expect_continue = False
    content_length: int | None = None
    codings: list[bytes] | None = None  # None: no Transfer-Encoding field at all
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
                raise Malformed(Kind.BAD_REQUEST)
            if content_length is not None and content_length != int(value):
                raise Malformed(Kind.BAD_REQUEST)
            content_length = int(value)
        elif name == b"transfer-encoding":
            codings = (codings or []) + [c.strip() for c in value.split(b",") if c.strip()]
        else:  # expect
            expect_continue = value == b"100-continue"

    body_length = content_length or 0
    if codings is not None:
        # RFC 9112 6.1/6.3: with Transfer-Encoding the length is only knowable when
        # chunked comes last (so an empty field is malformed too); never together with
        # Content-Length; not in HTTP/1.0.
        if content_length is not None or not modern or codings[-1:] != [b"chunked"]:
            raise Malformed(Kind.BAD_REQUEST)
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


def find_head_end(data: bytes, start: int) -> tuple[int, int]:
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
