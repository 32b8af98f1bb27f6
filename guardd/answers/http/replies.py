"""Every HTTP answer prebuilt as bytes per scope state and swapped on change."""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from importlib.resources import files
from typing import NamedTuple, Protocol

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
from guardd.core.state import ScopeView, Snapshot, until_epoch

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
class ScopeSettings:
    """What one scope's answers depend on: the global settings with its overrides."""

    scope: str
    policy: Policy
    gate: GateRules
    api_prefixes: tuple[bytes, ...]
    page_status: int
    retry_after: int
    # page_template's text, read when the config is loaded, never per request.
    template: str | None = None
    # The scope's partial-maintenance modes, compiled (SPEC "modes").
    modes: Mapping[str, ModeRule] = field(default_factory=dict)


def _scope_prefix(path: bytes) -> bytes:
    """``path`` + "/", before a scope name; a path of "/" names no scope (the NUL
    byte never starts a request path: the parser rejects control characters)."""
    stem = path.rstrip(b"/")
    return stem + b"/" if stem else b"\x00"


class HttpSettings:
    """What the responder needs from the config, in the form requests are matched in.

    Immutable once built (a reload builds new settings). Per-scope settings are made
    on first use, so 10,000 scopes cost nothing until their sites are asked for.
    """

    def __init__(self, config: Config, templates: Mapping[str, str]) -> None:
        http = config.http
        self.config = config
        self.templates = templates  # page_template path -> text (read off the loop)
        self.scope = http.scope
        self.health_path = http.health_path.encode()
        self.gate_path = http.gate_path.encode()
        # "<health_path>/<scope>" and "<gate_path>/<scope>": the scope named in the path.
        self.health_prefix = _scope_prefix(self.health_path)
        self.gate_prefix = _scope_prefix(self.gate_path)
        self.header_timeout = http.header_timeout
        # metrics.allow: who gets /metrics (others get the ordinary answer for the path).
        self.metrics_allow = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in config.metrics.allow
        )
        self.scope_names: dict[bytes, str] = {name.encode(): name for name in config.scopes}
        # Host -> scope: exact names, and the domain of each "*.domain" wildcard.
        self.hosts: dict[bytes, str] = {}
        self.wildcards: dict[bytes, str] = {}
        for name, scope in config.scopes.items():
            for host in scope.hosts:
                if host.startswith("*."):
                    self.wildcards[host[2:].encode()] = name
                else:
                    self.hosts[host.encode()] = name
        self.by_host = bool(self.hosts or self.wildcards)
        self._base_gate = GateRules.from_config(config.bypass, http.scope)
        self._scopes: dict[str, ScopeSettings] = {}

    @classmethod
    def from_config(cls, config: Config, template: str | None) -> HttpSettings:
        """Settings from ``config``, with ``http.page_template``'s text already read."""
        path = config.http.page_template
        return cls(config, {path: template} if path is not None and template is not None else {})

    def scope_of_host(self, host: bytes | None) -> str:
        """The scope whose ``hosts`` claim ``host`` (lowercase, no port), else
        ``http.scope``. Exact names first, then the longest wildcard: each a dict
        lookup per label of the name, whatever the number of scopes."""
        if host is None or not self.by_host:
            return self.scope
        scope = self.hosts.get(host)
        if scope is not None:
            return scope
        wildcards = self.wildcards
        if wildcards:
            dot = host.find(b".")
            while dot >= 0:
                host = host[dot + 1 :]
                scope = wildcards.get(host)
                if scope is not None:
                    return scope
                dot = host.find(b".")
        return self.scope

    def for_scope(self, scope: str) -> ScopeSettings:
        """The settings of one configured scope (made once, on first use)."""
        made = self._scopes.get(scope)
        if made is None:
            made = self._scopes[scope] = self._make(scope)
        return made

    def _make(self, scope: str) -> ScopeSettings:
        config = self.config
        http = config.http
        own = config.scopes[scope]
        if own.bypass is not None:
            gate = GateRules.from_config(own.bypass, scope)
        else:
            gate = replace(self._base_gate, scope=scope)  # compiled once, bound per scope
        template_path = own.page_template if own.page_template is not None else http.page_template
        prefixes = own.api_prefixes if own.api_prefixes is not None else http.api_prefixes
        return ScopeSettings(
            scope=scope,
            policy=config.scope_policy(scope),
            gate=gate,
            api_prefixes=tuple(prefix.encode() for prefix in prefixes),
            page_status=own.page_status if own.page_status is not None else http.page_status,
            retry_after=own.retry_after if own.retry_after is not None else http.retry_after,
            template=self.templates.get(template_path) if template_path is not None else None,
            modes=compile_modes(own.modes),
        )


class Routed(NamedTuple):
    """A request head as routed: remembered per distinct head until the settings change."""

    scope: str
    kind: Kind  # Kind.GATE: asked of the gate per request
    head_only: bool
    persist: Persist
    body_length: int
    fields: bytes


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
_OUTAGE_HTML = _OUTAGE.html.encode()  # one copy for every scope that is off
_OUTAGE_JSON = _json({"maintenance": False, "error": "temporarily unavailable"})
# Served as is to every site; cached by browsers for a minute (SPEC "Banner").
_BANNER = Reply(
    200,
    "text/javascript; charset=utf-8",
    files("guardd.answers").joinpath("assets/banner.js").read_bytes(),
    (("Cache-Control", "max-age=60"),),
)
_FIXED_REPLIES = {
    Kind.UNKNOWN_SCOPE: Reply(
        404,
        JSON,
        _json({"error": {"code": "unknown_scope", "message": "no such scope is configured"}}),
    ),
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
    view: ScopeView, settings: ScopeSettings, *, retry_after: int, page: Page
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
            503, HTML, _OUTAGE_HTML, (*vary, ("Content-Security-Policy", _OUTAGE.csp))
        )
        replies[Kind.PAGE_JSON] = Reply(503, JSON, _OUTAGE_JSON, vary)
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

    builds = 0  # Answers made since start (tests: a flip rebuilds one scope only)

    def __init__(self, view: ScopeView, settings: ScopeSettings) -> None:
        Answers.builds += 1
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
    """State shared by every connection of one responder.

    One ``Answers`` per scope, made on the first request for it and dropped when
    that scope's state changes: a flip of one scope rebuilds only its answers.
    """

    def __init__(
        self,
        settings: HttpSettings,
        snapshot: Snapshot,
        *,
        counts: list[int] | None = None,
        render_metrics: MetricsRenderer | None = None,
    ) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.answers: dict[str, Answers] = {}
        self.gates: dict[str, Gate] = {}
        self.accept_cache: BoundedCache[bytes, bool] = BoundedCache(ACCEPT_CACHE_SIZE)
        # Request heads already parsed and routed (routing depends on the settings).
        self.head_cache: BoundedCache[bytes, Routed] = BoundedCache(HEAD_CACHE_SIZE)
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

    def answers_for(self, scope: str) -> Answers:
        """The current answers of a configured scope."""
        answers = self.answers.get(scope)
        if answers is None:
            answers = self.answers[scope] = Answers(
                self.snapshot.view(scope), self.settings.for_scope(scope)
            )
        return answers

    def gate_for(self, scope: str) -> Gate:
        """The gate of a configured scope, with its memory of past decisions."""
        gate = self.gates.get(scope)
        if gate is None:
            gate = self.gates[scope] = Gate(self.settings.for_scope(scope).gate)
        return gate

    def publish(
        self, settings: HttpSettings, snapshot: Snapshot, changed: Collection[str] | None
    ) -> None:
        """New settings or state. ``changed``: the scopes whose state may differ (None:
        any). Answers of other scopes stay as they are, byte for byte."""
        old = self.snapshot
        self.snapshot = snapshot
        if settings is not self.settings:
            self.settings = settings
            self.gates = {}  # a reload forgets every gate decision
            self.answers = {}
            self.head_cache = BoundedCache(HEAD_CACHE_SIZE)
            return
        if (
            changed is None
            or snapshot.upcoming != old.upcoming
            or snapshot.others_serving != old.others_serving
            or snapshot.fleet_degraded != old.fleet_degraded
        ):
            # Something every scope shows changed: each is rebuilt on its next request.
            self.answers = {}
            return
        answers = self.answers
        for scope in changed:
            current = answers.get(scope)
            if current is not None and current.view != snapshot.view(scope):
                del answers[scope]

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
