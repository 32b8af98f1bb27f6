"""One HTTP connection (asyncio.Protocol): reads heads, discards bodies, writes prebuilt replies."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from guardd.answers.gate import BYPASS_PATH, Verdict
from guardd.answers.http.parse import (
    BANNER_PATH,
    BYPASS_PREFIX,
    FLUSH_BYTES,
    GUARDD_STATUS_PATH,
    HEAD_CACHE_MAX_BYTES,
    LINGER_SECONDS,
    MAX_HEAD,
    METRICS_PATH,
    STATUS_PATH,
    Kind,
    Malformed,
    Persist,
    find_head_end,
    gate_headers,
    parse_head,
)
from guardd.answers.http.replies import HttpShared
from guardd.answers.modes import stops_request

# Module-level aliases: an enum member looked up on its class costs ~0.1 us,
# several times per request on the hot path.
_CLOSE = Persist.CLOSE
_HEALTH, _STATUS, _PAGE_HTML, _PAGE_JSON, _NOT_FOUND = (
    Kind.HEALTH,
    Kind.STATUS,
    Kind.PAGE_HTML,
    Kind.PAGE_JSON,
    Kind.NOT_FOUND,
)
_GATE_OPEN, _BYPASS, _METRICS = Kind.GATE_OPEN, Kind.BYPASS, Kind.METRICS
# The gate's verdict -> its answer.
GATE_KINDS = {
    Verdict.DENY: Kind.GATE_CLOSED,
    Verdict.PATH: Kind.GATE_PATH,
    Verdict.ADDRESS: Kind.GATE_ADDRESS,
    Verdict.COOKIE: Kind.GATE_COOKIE,
}


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
        # Whether the peer is in metrics.allow (None: not asked yet).
        self.metrics_allowed: bool | None = None
        # /metrics is being rendered off the loop: later requests wait their turn.
        self.rendering = False

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        shared = self.shared
        shared.connections.add(self)
        self._arm(self.loop.time() + shared.settings.header_timeout)
        if shared.max_connections is not None and len(shared.connections) > shared.max_connections:
            shared.shed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered and half-closed: input is only drained
        if self.rendering:
            self.buffer += data  # reading is paused; whatever was in flight waits
            return
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
        if self.transport is not None and not self.lingering and not self.rendering:
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
        counts = shared.counts
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
            end, after = find_head_end(data, pos)
            if end < 0:
                if size - pos >= MAX_HEAD:
                    counts[Kind.TOO_LARGE] += 1
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
                except Malformed as err:
                    counts[err.kind] += 1
                    out.append(answers.wire(err.kind, False, _CLOSE, now))
                    self._finish(out)
                    return
                if len(head) <= HEAD_CACHE_MAX_BYTES:
                    head_cache.put(head, parsed)
            path, head_only, persist, accept, body_length, fields = parsed
            pos = after
            heads += 1
            kind = self._route(path, accept, fields, now)
            counts[kind] += 1  # guardd_http_requests_total: a list item, rendered on scrape
            if kind is _METRICS:
                # Rendered in a worker thread (10,000 scopes take most of a second):
                # answers so far go out now, the rest of the input waits for it.
                self.body_left = body_length
                self.buffer = data[pos:]
                self._render_metrics(out, head_only, persist)
                return
            answer = answers.wire(kind, head_only, persist, now)
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
        if path in (STATUS_PATH, GUARDD_STATUS_PATH):
            return self._status(fields, now)
        if path == BANNER_PATH:
            return Kind.BANNER
        if path == METRICS_PATH and self._metrics_allowed():
            return _METRICS
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

    def _render_metrics(self, out: list[bytes], head_only: bool, persist: Persist) -> None:
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(b"".join(out))
        self.deadline = self.loop.time() + self.shared.settings.header_timeout
        if self.timer is None:
            self._arm(self.deadline)
        self.rendering = True
        transport.pause_reading()
        task = self.loop.create_task(self._answer_metrics(head_only, persist))
        self.shared.tasks.add(task)
        task.add_done_callback(self.shared.tasks.discard)

    async def _answer_metrics(self, head_only: bool, persist: Persist) -> None:
        """Render /metrics off the loop, answer, then go on with what came after it."""
        body = await asyncio.to_thread(self.shared.render_metrics_body)
        self.rendering = False
        transport = self.transport
        if transport is None:
            return  # the client left (or was dropped) meanwhile
        answer = self.shared.metrics_wire(body, head_only, persist, time.time())
        if persist is _CLOSE:
            self._finish([answer])
            return
        transport.write(answer)
        if not self.paused:
            transport.resume_reading()
            if self.buffer:
                data, self.buffer = self.buffer, b""
                self._feed(data)

    def _peer(self) -> str | None:
        peer = self.peer
        if peer is None and self.transport is not None:
            name = self.transport.get_extra_info("peername")
            peer = self.peer = str(name[0]) if isinstance(name, tuple) and name else None
        return peer

    def _metrics_allowed(self) -> bool:
        """The peer is in metrics.allow (asked once per connection)."""
        allowed = self.metrics_allowed
        if allowed is None:
            allowed = self.metrics_allowed = self.shared.metrics_allowed(self._peer())
        return allowed

    def _gate(self, fields: bytes, now: float) -> Kind:
        """The gate's answer during maintenance."""
        original_uri, forwarded_for, real_ip, cookie, method = gate_headers(fields)
        modes = self.shared.answers.mode_rules
        if modes and not stops_request(modes, method, original_uri):
            return Kind.GATE_MODE  # only a mode is in force, and it spares this request
        peer = self._peer()
        verdict = self.shared.gate.decide(
            original_uri=original_uri,
            peer=peer,
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            cookie=cookie,
            now=now,
        )
        return GATE_KINDS[verdict]

    def _status(self, fields: bytes, now: float) -> Kind:
        """/maintenance.json, saying whether this client's cookie or address would pass
        the gate (the banner tells such visitors they see the site in maintenance)."""
        gate = self.shared.gate
        rules = gate.rules
        if not rules.cidrs and not (rules.signer.enabled and b"ookie" in fields):
            return _STATUS
        _, forwarded_for, real_ip, cookie, _ = gate_headers(fields)
        verdict = gate.decide(
            original_uri=None,
            peer=self._peer(),
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            cookie=cookie,
            now=now,
        )
        return _STATUS if verdict is Verdict.DENY else Kind.STATUS_BYPASS

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

    def idle(self) -> bool:
        """Between requests, nothing half-read or unsent: closing it loses nothing."""
        transport = self.transport
        return (
            transport is not None
            and not self.buffer
            and not self.body_left
            and not self.lingering
            and not transport.get_write_buffer_size()
        )

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
