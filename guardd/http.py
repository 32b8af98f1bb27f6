"""The HTTP/1.x health responder and maintenance page: an ``asyncio.Protocol``.

Every answer is prebuilt as bytes when the scope's state changes (and renewed at
most once a second for ``Date`` and ``Retry-After``); a request costs parsing its
head and one dictionary look-up. Nothing here touches the disk.

Request bodies are never buffered: a ``Content-Length`` body is counted off as it
arrives and the connection stays usable; a chunked body (or one announced with
``Expect: 100-continue``) is answered, then the connection is half-closed and its
input discarded until the client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from enum import IntEnum
from http import HTTPStatus

from guardd.config import Config, Policy
from guardd.page import Page, maintenance_page, outage_page, render_template, uses_retry_after
from guardd.policy import health_answer, health_body, retry_after_seconds, until_epoch
from guardd.state import ScopeStatus

log = logging.getLogger(__name__)

# A request head (request line, headers, blank line) longer than this gets 431.
MAX_HEAD = 8192
# After an error or a body we will not read, how long the client may keep sending
# before the connection is cut: closing with unread input would send a TCP reset,
# which can destroy our answer before the client reads it.
LINGER_SECONDS = 5.0
# Distinct Accept headers remembered; browsers send a handful of them.
ACCEPT_CACHE_SIZE = 512
STATUS_PATH = b"/maintenance.json"
BYPASS_PREFIX = b"/.guardd/"

HTML = "text/html; charset=utf-8"
JSON = "application/json"
HEALTH_JSON = "application/health+json"
TEXT = "text/plain; charset=utf-8"

# Characters allowed in a method or header name (RFC 9110 "token"); translate()
# deletes them, so anything left over is invalid.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Kind(IntEnum):
    """Which prebuilt answer a request gets."""

    HEALTH = 0  # the health path, by policy
    STATUS = 1  # /maintenance.json
    PAGE_HTML = 2  # maintenance page, or the outage page when the scope is off
    PAGE_JSON = 3  # the same for API clients
    NOT_FOUND = 4  # /.guardd/...: the bypass is not configured
    BAD_REQUEST = 5  # malformed: 400, then close
    TOO_LARGE = 6  # head over MAX_HEAD: 431, then close
    BAD_VERSION = 7  # HTTP/2 and later spoken as text: 505, then close


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
_ERROR_KINDS = frozenset({Kind.BAD_REQUEST, Kind.TOO_LARGE, Kind.BAD_VERSION})


@dataclass(frozen=True)
class HttpSettings:
    """What the responder needs from the config, in the form requests are matched in."""

    scope: str
    policy: Policy
    health_path: bytes
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
}


def build_replies(
    status: ScopeStatus, settings: HttpSettings, *, retry_after: int, page: Page
) -> dict[Kind, Reply]:
    """Every answer for one scope state. Pure: ``page`` is the rendered maintenance page."""
    maintenance = status.in_maintenance
    marker = (("Guard-Maintenance", status.scope),) if maintenance else ()
    retry = (("Retry-After", str(retry_after)),)
    vary = (("Vary", "Accept"),)

    health = health_answer(status, settings.policy)
    replies = dict(_FIXED_REPLIES)
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
                "upcoming": [],
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
    lines = [
        f"HTTP/1.1 {reply.status} {phrase}",
        f"Date: {date}",
        "Server: guardd",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
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

    def __init__(self, status: ScopeStatus, settings: HttpSettings) -> None:
        self.status = status
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
                self.status, self.settings, retry_after=retry_after, page=self._page(retry_after)
            )

    def wire(self, kind: Kind, head_only: bool, persist: Persist, now: float) -> bytes:
        """The bytes to send for this answer at time ``now`` (Unix seconds)."""
        second = int(now)
        if second != self.second:
            self._renew(second)
        key = (kind << 3) | (persist << 1) | head_only
        data = self.wire_cache.get(key)
        if data is None:
            data = frame(self.replies[kind], date=self.date, head_only=head_only, persist=persist)
            self.wire_cache[key] = data
        return data


class HttpShared:
    """State shared by every connection of one responder; swapped, never mutated in place."""

    def __init__(self, settings: HttpSettings, status: ScopeStatus) -> None:
        self.settings = settings
        self.answers = Answers(status, settings)
        self.accept_cache: dict[bytes, bool] = {}
        self.connections: set[HttpConnection] = set()

    def publish(self, settings: HttpSettings, status: ScopeStatus) -> None:
        """New settings or state: one assignment swaps every answer at once."""
        self.settings = settings
        self.answers = Answers(status, settings)

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


@dataclass
class _Request:
    """What routing needs from one parsed request head."""

    path: bytes
    head_only: bool
    persist: Persist
    accept: bytes | None
    body_length: int  # Content-Length to discard; -1: unknown length (chunked)


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


def parse_head(head: bytes) -> _Request:
    """Parse a request head (without its final blank line). Raises _Malformed.

    Strict where leniency enables request smuggling: no whitespace before a header
    colon, no folded lines, no bare CR, no Content-Length with Transfer-Encoding.
    """
    if b"\x00" in head:
        raise _Malformed(Kind.BAD_REQUEST)
    lines = head.split(b"\n")
    request_line = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise _Malformed(Kind.BAD_REQUEST)
    method, target, version = parts
    if not method or method.translate(None, _TCHAR) or not target or b"\r" in request_line:
        raise _Malformed(Kind.BAD_REQUEST)
    if version == b"HTTP/1.1":
        modern = True
    elif version == b"HTTP/1.0":
        modern = False
    elif len(version) == 8 and version[:5] == b"HTTP/" and version[5:8:2].isdigit():
        if version[6:7] != b".":
            raise _Malformed(Kind.BAD_REQUEST)
        if version[5:6] != b"1":
            raise _Malformed(Kind.BAD_VERSION)
        modern = True  # HTTP/1.x, x > 1: answer as 1.1 (RFC 9110 2.5)
    else:
        raise _Malformed(Kind.BAD_REQUEST)

    close = keep_alive = expect_continue = False
    content_length: int | None = None
    codings: list[bytes] = []
    accept: bytes | None = None
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        name, sep, value = line.partition(b":")
        if not sep or not name or name.translate(None, _TCHAR) or b"\r" in value:
            raise _Malformed(Kind.BAD_REQUEST)
        lowered = name.lower()
        if lowered == b"connection":
            tokens = [token.strip() for token in value.lower().split(b",")]
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
        elif lowered == b"content-length":
            text = value.strip(b" \t")
            if not text.isdigit() or len(text) > 18:
                raise _Malformed(Kind.BAD_REQUEST)
            if content_length is not None and content_length != int(text):
                raise _Malformed(Kind.BAD_REQUEST)
            content_length = int(text)
        elif lowered == b"transfer-encoding":
            codings += [c.strip() for c in value.lower().split(b",") if c.strip()]
        elif lowered == b"accept":
            accept = value.strip(b" \t") if accept is None else accept + b"," + value
        elif lowered == b"expect":
            expect_continue = value.strip(b" \t").lower() == b"100-continue"

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
        persist = Persist.CLOSE
    elif modern:
        persist = Persist.KEEP
    else:
        persist = Persist.KEEP_10 if keep_alive else Persist.CLOSE
    return _Request(
        path=_target_path(target),
        head_only=method == b"HEAD",
        persist=persist,
        accept=accept,
        body_length=body_length,
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

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
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
        now = time.time()
        out: list[bytes] = []
        pos = 0
        size = len(data)
        heads = 0
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
                    out.append(answers.wire(Kind.TOO_LARGE, False, Persist.CLOSE, now))
                    self._finish(out)
                    return
                self.buffer = data[pos:]
                break
            try:
                request = parse_head(data[pos:end])
            except _Malformed as err:
                out.append(answers.wire(err.kind, False, Persist.CLOSE, now))
                self._finish(out)
                return
            pos = after
            heads += 1
            out.append(answers.wire(self._route(request), request.head_only, request.persist, now))
            if request.persist is Persist.CLOSE:
                self._finish(out)
                return
            self.body_left = request.body_length
        if heads:
            self._arm(self.loop.time() + shared.settings.header_timeout)
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _route(self, request: _Request) -> Kind:
        path = request.path
        settings = self.shared.settings
        if path == settings.health_path:
            return Kind.HEALTH
        if path == STATUS_PATH:
            return Kind.STATUS
        if path.startswith(BYPASS_PREFIX):
            # The bypass cookie comes with a later version: "no secret configured"
            # is a 404 in the SPEC.
            return Kind.NOT_FOUND
        if path.startswith(settings.api_prefixes) or (
            request.accept is not None and self.shared.wants_json(request.accept)
        ):
            return Kind.PAGE_JSON
        return Kind.PAGE_HTML

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
        if self.transport is None:
            return
        if self.lingering:
            self.transport.abort()  # it would not hang up: a reset is all it gets
        else:
            self.transport.close()


def scope_status(statuses: Mapping[str, ScopeStatus], scope: str) -> ScopeStatus:
    """The scope's status, or "off" before anything is known about it."""
    status = statuses.get(scope)
    if status is not None:
        return status
    return ScopeStatus(scope=scope, state="off", since=None, until=None, reason=None, jobs=0)
