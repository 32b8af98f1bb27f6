"""Lifecycle of the load-balancer answers: bind, serve, follow the state, reload, close.

The protocols live in guardd.answers (http/ and agent.py); this module defines the
daemon's ``StateListener`` protocol and turns them into StateListeners. Sockets are
bound (and listening) in ``start()`` but served only from the first ``update()``, so
that no client is ever answered from a state that was not yet read: early
connections wait in the kernel's backlog.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable
from typing import Protocol

from guardd.answers.agent import AgentConnection, AgentShared
from guardd.answers.http.connection import HttpConnection
from guardd.answers.http.replies import HttpSettings, HttpShared, MetricsRenderer
from guardd.config.model import Config, ListenAddress
from guardd.core.state import Snapshot
from guardd.errors import GuardError

log = logging.getLogger(__name__)

# Pending connections the kernel may queue (capped by net.core.somaxconn): a burst
# of visitors must not be refused while the loop is busy for a moment.
BACKLOG = 1024
# A page_template larger than this is not a maintenance page.
MAX_TEMPLATE_BYTES = 1024 * 1024

ProtocolFactory = Callable[[], asyncio.Protocol]


class StateListener(Protocol):
    """A part that answers from the state (HTTP responder, agent-check port)."""

    async def start(self) -> None:
        """Bind listeners."""

    def update(self, snapshot: Snapshot) -> None:
        """The state changed: rebuild prebuilt answers."""

    async def prepare(self, config: Config) -> None:
        """A reload brings a new valid config: read what answering from it needs
        (nothing is answered from it yet)."""

    def apply(self, snapshot: Snapshot) -> None:
        """Answer from the prepared config and ``snapshot`` from now on (synchronous:
        every answer is from the old config and state or from the new ones)."""

    async def rebind(self) -> None:
        """Bind the applied config's new addresses; close the ones it dropped."""

    async def close(self) -> None:
        """Stop serving."""

    def describe(self) -> str:
        """One line for the startup log: what it serves where."""


def connection_budget() -> int:
    """How many HTTP connections may be open at once: the open-files limit, less
    the descriptors open now (listeners, inotify, logs), less a reserve for what
    comes and goes (flag and /proc reads, hook pipes, control and agent clients)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    reserve = 64 + soft // 64
    return max(soft - in_use - reserve, 16)


def bind_sockets(address: ListenAddress) -> list[socket.socket]:
    """Listening, non-blocking sockets for one address; raises OSError.

    ``:PORT`` binds IPv6 (v6-only) and IPv4 separately, so each family works
    without the other, and a host without IPv6 still gets IPv4. A host name binds
    every address it resolves to.
    """
    if address.host == "":
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        candidates = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    bound: list[socket.socket] = []
    port = address.port
    try:
        for family, host in candidates:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as err:
                if address.host == "" and err.errno == errno.EAFNOSUPPORT:
                    continue  # no IPv6 in this kernel
                raise
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except OSError as err:
                sock.close()
                if (
                    address.host == ""
                    and family == socket.AF_INET6
                    and err.errno
                    in (
                        errno.EAFNOSUPPORT,
                        errno.EADDRNOTAVAIL,
                    )
                ):
                    continue  # IPv6 disabled on this host
                raise
            bound.append(sock)
            port = sock.getsockname()[1]  # ":0": the same port for both families
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _sockname(server: asyncio.Server) -> list[str]:
    names = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return names


class Endpoints:
    """The servers on one list of listen addresses, rebound on reload by difference."""

    def __init__(self, key: str, factory: ProtocolFactory) -> None:
        self.key = key  # the config key, for messages: "http.listen"
        self.factory = factory
        self.servers: dict[ListenAddress, list[asyncio.Server]] = {}
        self.serving = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def _bind(self, address: ListenAddress) -> list[asyncio.Server]:
        loop = asyncio.get_running_loop()
        sockets = bind_sockets(address)
        servers = []
        try:
            for sock in sockets:
                # backlog again here: asyncio calls listen() once more when it starts
                # serving, with its own default of 100 unless told otherwise.
                servers.append(
                    await loop.create_server(
                        self.factory, sock=sock, backlog=BACKLOG, start_serving=self.serving
                    )
                )
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return servers

    async def bind(self, addresses: tuple[ListenAddress, ...]) -> None:
        """Bind every address; a failure is one clear error naming the address."""
        await self._bind_missing(addresses, strict=True)

    async def _bind_missing(self, addresses: tuple[ListenAddress, ...], *, strict: bool) -> None:
        """Bind the addresses not bound yet; a failure raises GuardError if ``strict``,
        else is logged and skipped."""
        for index, address in enumerate(addresses):
            if address in self.servers:
                continue
            try:
                self.servers[address] = await self._bind(address)
            except OSError as err:
                problem = f"{self.key}[{index}]: cannot listen on {address}: "
                problem += err.strerror or str(err)
                if strict:
                    raise GuardError(problem) from None
                log.error("%s", problem)

    def start_serving(self) -> None:
        """Begin accepting (once the first state is known)."""
        if self.serving:
            return
        self.serving = True
        for servers in self.servers.values():
            for server in servers:
                task = asyncio.get_running_loop().create_task(server.start_serving())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def rebind(self, addresses: tuple[ListenAddress, ...]) -> None:
        """Follow a reload: keep unchanged addresses, close removed ones, bind new ones.

        A new address that cannot be bound is logged and skipped: the rest of the
        reload must still take effect.
        """
        for address in [a for a in self.servers if a not in addresses]:
            for server in self.servers.pop(address):
                server.close()
        await self._bind_missing(addresses, strict=False)

    def stop(self) -> list[asyncio.Server]:
        """Stop accepting on every address; return the servers to wait for."""
        servers = [server for group in self.servers.values() for server in group]
        self.servers = {}
        for server in servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        return servers

    def names(self) -> list[str]:
        """Bound addresses as ``host:port`` (the real port when 0 was asked for)."""
        return [name for group in self.servers.values() for s in group for name in _sockname(s)]


class _Responder:
    """What both responders share: their endpoints, closing, and the startup line."""

    off = "off"  # the startup line without addresses

    def __init__(self, key: str, factory: ProtocolFactory, close_all: Callable[[], None]) -> None:
        self.endpoints = Endpoints(key, factory)
        self._close_all = close_all

    async def close(self) -> None:
        """Stop accepting, cut open connections, then wait for the servers.

        In that order: since Python 3.12 ``wait_closed()`` also waits for every open
        connection, and an idle keep-alive would hold shutdown up until its timeout.
        """
        servers = self.endpoints.stop()
        self._close_all()
        for server in servers:
            await server.wait_closed()

    def describe(self) -> str:
        names = self.endpoints.names()
        return self.serving(", ".join(names)) if names else self.off

    def serving(self, where: str) -> str:
        """The startup line while bound to ``where``."""
        raise NotImplementedError


async def read_template(path: str) -> str:
    """page_template's text, read off the event loop; raises GuardError."""

    def read() -> str:
        with open(path, "rb") as stream:
            data = stream.read(MAX_TEMPLATE_BYTES + 1)
        if len(data) > MAX_TEMPLATE_BYTES:
            raise GuardError(f"http.page_template: {path} is larger than 1 MiB")
        return data.decode("utf-8", errors="replace")

    try:
        return await asyncio.to_thread(read)
    except OSError as err:
        raise GuardError(f"http.page_template: cannot read {path}: {err.strerror}") from None


class HttpListener(_Responder):
    """The HTTP health responder and maintenance page, as a daemon StateListener."""

    off = "HTTP responder off"

    def __init__(
        self,
        config: Config,
        *,
        counts: list[int] | None = None,
        render_metrics: MetricsRenderer | None = None,
    ) -> None:
        self.config = config
        self.snapshot = Snapshot(statuses={})
        settings = HttpSettings.from_config(config, None)
        self.shared = HttpShared(
            settings,
            self.snapshot.view(settings.scope),
            counts=counts,
            render_metrics=render_metrics,
        )
        self.pending: tuple[Config, HttpSettings] | None = None  # a reload's, until applied
        loop_getter = asyncio.get_running_loop
        super().__init__(
            "http.listen",
            lambda: HttpConnection(self.shared, loop_getter()),
            self.shared.close_all,
        )

    async def _settings(self, config: Config, *, strict: bool) -> HttpSettings:
        template = None
        path = config.http.page_template
        if path is not None and config.http.listen:
            try:
                template = await read_template(path)
            except GuardError as err:
                if strict:
                    raise
                log.error("%s; serving the built-in page", err.message)
        return HttpSettings.from_config(config, template)

    async def start(self) -> None:
        settings = await self._settings(self.config, strict=True)
        self.shared.publish(settings, self.snapshot.view(settings.scope))
        await self.endpoints.bind(self.config.http.listen)
        self.shared.max_connections = connection_budget()

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        settings = self.shared.settings
        view = snapshot.view(settings.scope)
        if view != self.shared.answers.view:
            self.shared.publish(settings, view)
        self.endpoints.start_serving()

    async def prepare(self, config: Config) -> None:
        self.pending = (config, await self._settings(config, strict=False))

    def apply(self, snapshot: Snapshot) -> None:
        assert self.pending is not None
        self.config, settings = self.pending
        self.pending = None
        self.snapshot = snapshot
        self.shared.publish(settings, snapshot.view(settings.scope))

    async def rebind(self) -> None:
        await self.endpoints.rebind(self.config.http.listen)

    def serving(self, where: str) -> str:
        http = self.config.http
        return f"HTTP on {where} (scope {http.scope}, policy {http.policy})"


class AgentListener(_Responder):
    """The HAProxy agent-check port, as a daemon StateListener."""

    off = "agent-check off"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.snapshot = Snapshot(statuses={})
        self.shared = AgentShared()
        self.pending: Config | None = None  # a reload's, until applied
        loop_getter = asyncio.get_running_loop
        super().__init__(
            "agent.listen",
            lambda: AgentConnection(self.shared, loop_getter()),
            self.shared.close_all,
        )

    def _publish(self) -> None:
        config = self.config
        view = self.snapshot.view(config.agent.scope)
        self.shared.publish(view, config.http.policy, config.agent.withdraw_as)

    async def start(self) -> None:
        self._publish()
        await self.endpoints.bind(self.config.agent.listen)

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._publish()
        self.endpoints.start_serving()

    async def prepare(self, config: Config) -> None:
        self.pending = config

    def apply(self, snapshot: Snapshot) -> None:
        assert self.pending is not None
        self.config, self.pending = self.pending, None
        self.snapshot = snapshot
        self._publish()

    async def rebind(self) -> None:
        await self.endpoints.rebind(self.config.agent.listen)

    def serving(self, where: str) -> str:
        agent = self.config.agent
        return f"agent-check on {where} (scope {agent.scope}, maintenance: {agent.withdraw_as})"


def make_listeners(
    config: Config,
    *,
    counts: list[int] | None = None,
    render_metrics: MetricsRenderer | None = None,
) -> list[StateListener]:
    """Both responders, always: one with no addresses binds nothing and says "off",
    and a reload that adds addresses turns it on. ``counts`` (requests per answer
    kind) and ``render_metrics`` serve /metrics on the HTTP listener."""
    return [
        HttpListener(config, counts=counts, render_metrics=render_metrics),
        AgentListener(config),
    ]
