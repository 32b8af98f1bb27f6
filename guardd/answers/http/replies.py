"""Every HTTP answer prebuilt as bytes per scope state and swapped on change."""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from importlib.resources import files
from typing import Protocol

from guardd.answers.cache import BoundedCache
from guardd.answers.gate import Gate, GateRules
from guardd.answers.http.parse import (
    ACCEPT_CACHE_SIZE,
    ANSWER_LABELS,
    HEAD_CACHE_SIZE,
    HEALTH_JSON,
    HTML,
    JSON,
    TEXT,
    Kind,
    ParsedRequest,
    Persist,
    prefers_json,
)
from guardd.answers.modes import ModeRule, compile_modes, paused_text
from guardd.answers.page import (
    Page,
    maintenance_page,
    outage_page,
    render_template,
    uses_retry_after,
)
from guardd.answers.policy import health_answer, health_body, retry_after_seconds
from guardd.config.model import Config
from guardd.core.choices import Policy
from guardd.core.state import ScopeView, until_epoch

log = logging.getLogger(__name__)

_CONNECTION_HEADER = {
    Persist.KEEP: b"",
    Persist.KEEP_10: b"Connection: keep-alive\r\n",
    Persist.CLOSE: b"Connection: close\r\n",
}


class OpenConnection(Protocol):
    """What the responder needs of a live connection (HttpConnection): when its time
    is up, whether it is idle, and to drop it."""

    deadline: float

    def idle(self) -> bool:
        """Waiting for a next request (or for its first byte), nothing in flight."""

    def drop(self) -> None:
        """Close at once, whatever is pending."""


def _deadline(connection: OpenConnection) -> float:
    return connection.deadline


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
    # The scope's partial-maintenance modes, compiled (SPEC "modes").
    modes: Mapping[str, ModeRule] = field(default_factory=dict)
    # metrics.allow: who gets /metrics (others get the ordinary answer for the path).
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

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
            modes=compile_modes(config.scopes[http.scope].modes),
            metrics_allow=tuple(
                ipaddress.ip_network(cidr, strict=False) for cidr in config.metrics.allow
            ),
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
# Served as is to every site; cached by browsers for a minute (SPEC "Banner").
_BANNER = Reply(
    200,
    "text/javascript; charset=utf-8",
    files("guardd.answers").joinpath("assets/banner.js").read_bytes(),
    (("Cache-Control", "max-age=60"),),
)
_FIXED_REPLIES = {
    Kind.NOT_FOUND: Reply(404, TEXT, b"not found\n"),
    Kind.BAD_REQUEST: Reply(400, TEXT, b"bad request\n"),
    Kind.TOO_LARGE: Reply(431, TEXT, b"request header fields too large\n"),
    Kind.BAD_VERSION: Reply(505, TEXT, b"HTTP version not supported\n"),
    Kind.GATE_OPEN: Reply(204, "", b""),
    Kind.BANNER: _BANNER,
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
    mode = status.mode
    paused = paused_text(mode) if mode is not None else None
    if mode is not None:
        # A request the mode in force spares goes through, saying which mode is on.
        replies[Kind.GATE_MODE] = Reply(204, "", b"", (*marker, ("Guard-Mode", mode)))
    replies[Kind.HEALTH] = Reply(
        health.code,
        HEALTH_JSON,
        _json(health_body(status, health)),
        marker + (retry if health.retry_after else ()),
    )
    document = {
        "scope": status.scope,
        "state": status.state,
        "maintenance": maintenance,
        "mode": mode,
        "reason": status.reason,
        "since": status.since,
        "until": status.until,
        "overdue": status.overdue,
        "retry_after": retry_after if maintenance else None,
        "upcoming": [dict(window) for window in view.upcoming],
        "bypass": False,
    }
    replies[Kind.STATUS] = Reply(200, JSON, _json(document), marker)
    # The same for a client whose cookie or address would pass the gate (banners).
    replies[Kind.STATUS_BYPASS] = Reply(200, JSON, _json({**document, "bypass": True}), marker)
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
                    "mode": mode,
                    "paused": paused,
                    "reason": status.reason,
                    "until": status.until,
                    "overdue": status.overdue,
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
    if not any(name == "Cache-Control" for name, _ in reply.headers):
        lines.append("Cache-Control: no-store")
    lines.append("X-Content-Type-Options: nosniff")
    lines += [f"{name}: {value}" for name, value in reply.headers]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1") + _CONNECTION_HEADER[persist] + b"\r\n"
    return head if head_only else head + reply.body


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
        # The modes in force, compiled; () in full maintenance or when a mode in
        # force is not in these settings (a reload between the two: fail safe).
        rules = tuple(settings.modes.get(name) for name in status.modes)
        self.mode_rules: tuple[ModeRule, ...] = (
            tuple(rule for rule in rules if rule is not None) if None not in rules else ()
        )

    def _page(self, retry_after: int) -> Page:
        template = self.settings.template
        if self.page_cache is not None and (
            template is None or not uses_retry_after(template) or self.page_cache[0] == retry_after
        ):
            return self.page_cache[1]
        status = self.status
        paused = paused_text(status.mode) if status.mode is not None else None
        if template is None:
            page = maintenance_page(
                reason=status.reason,
                until=status.until,
                retry_after=self.settings.retry_after,
                paused=paused,
                overdue=status.overdue,
            )
        else:
            # The operator's page may load fonts or images: no CSP of ours on it.
            # In a mode, {reason} says what is paused too.
            reason = status.reason
            if paused is not None:
                reason = f"{paused}: {reason}" if reason else paused
            html = render_template(
                template,
                reason=reason,
                until=status.until,
                retry_after=retry_after,
                overdue=status.overdue,
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


# Prometheus text exposition, version 0.0.4.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricsRenderer = Callable[[], bytes]


def peer_allowed(
    peer: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """True when ``peer`` (an address as the socket gives it) is in one of ``networks``.

    An IPv4 client on a dual-stack socket (``::ffff:127.0.0.1``) counts as its IPv4
    address."""
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


# Connections closed at once when over max_connections: a burst sheds in batches.
SHED_SLACK = 8
SHED_LOG_INTERVAL = 60.0  # seconds between two log lines about it


class HttpShared:
    """State shared by every connection of one responder; swapped, never mutated in place."""

    def __init__(
        self,
        settings: HttpSettings,
        view: ScopeView,
        *,
        counts: list[int] | None = None,
        render_metrics: MetricsRenderer | None = None,
    ) -> None:
        self.settings = settings
        self.answers = Answers(view, settings)
        self.gate = Gate(settings.gate)
        self.accept_cache: BoundedCache[bytes, bool] = BoundedCache(ACCEPT_CACHE_SIZE)
        self.head_cache: BoundedCache[bytes, ParsedRequest] = BoundedCache(HEAD_CACHE_SIZE)
        self.connections: set[OpenConnection] = set()
        # Open connections allowed before the oldest idle ones are closed (None: no
        # limit): what the open-files limit leaves after guardd's own descriptors.
        self.max_connections: int | None = None
        self.shed_count = 0  # connections closed to stay under it, for the log
        self.shed_logged = -SHED_LOG_INTERVAL
        # Requests answered, per Kind: one list item bumped per request (next to
        # free), read only when /metrics is scraped.
        self.counts = counts if counts is not None else [0] * len(ANSWER_LABELS)
        self.render_metrics = render_metrics
        # /metrics renderings in flight (kept referenced until done).
        self.tasks: set[asyncio.Task[None]] = set()

    def metrics_allowed(self, peer: str | None) -> bool:
        """``peer`` may read /metrics (and there is something to render)."""
        return self.render_metrics is not None and peer_allowed(peer, self.settings.metrics_allow)

    def render_metrics_body(self) -> bytes | None:
        """The exposition text (worker thread); None when rendering failed."""
        assert self.render_metrics is not None
        try:
            return self.render_metrics()
        except Exception:
            log.exception("rendering /metrics failed")
            return None

    def metrics_wire(
        self, body: bytes | None, head_only: bool, persist: Persist, now: float
    ) -> bytes:
        """The /metrics answer around a rendered ``body`` (None: 500)."""
        if body is None:
            reply = Reply(500, TEXT, b"metrics unavailable; see guardd's log\n")
        else:
            reply = Reply(200, METRICS_TYPE, body)
        return frame(
            reply, date=formatdate(int(now), usegmt=True), head_only=head_only, persist=persist
        )

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
            cached = self.accept_cache.put(accept, prefers_json(accept))
        return cached

    def shed(self, newcomer: OpenConnection) -> None:
        """Over max_connections: close the connections idle longest (answered keep-
        alives, or never a byte sent), then if need be the oldest others, so that the
        newcomer (a fresh health probe, say) is served and descriptors stay free for
        reading flags. Never the newcomer itself."""
        assert self.max_connections is not None
        excess = len(self.connections) - self.max_connections + SHED_SLACK
        others = [c for c in self.connections if c is not newcomer]
        idle = [c for c in others if c.idle()]
        victims = heapq.nsmallest(excess, idle, key=_deadline)
        if len(victims) < excess:
            busy = [c for c in others if not c.idle()]
            victims += heapq.nsmallest(excess - len(victims), busy, key=_deadline)
        for connection in victims:
            connection.drop()
        self.shed_count += len(victims)
        now = time.monotonic()
        if now >= self.shed_logged + SHED_LOG_INTERVAL:
            self.shed_logged = now
            log.warning(
                "%d HTTP connections open, the most the open-files limit leaves room "
                "for: closed %d, idle ones first (%d so far)",
                len(self.connections),
                len(victims),
                self.shed_count,
            )

    def close_all(self) -> None:
        """Close every open connection (shutdown: idle keep-alives must not hold it up)."""
        for connection in list(self.connections):
            connection.drop()


# --------------------------------------------------------------------------- protocol
