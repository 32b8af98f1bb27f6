"""The configuration model: frozen, typed dataclasses (allowed values: core.choices)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from guardd.core.choices import Policy, WithdrawAs
from guardd.core.paths import (
    DEFAULT_SCOPE,
    RunView,
    flag_path,
)


@dataclass(frozen=True)
class ListenAddress:
    """One address to bind: ``host`` is "" for all addresses."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ModeConfig:
    """A partial maintenance: only requests with a method in ``methods`` and a path
    matching one of ``paths`` (regular expressions from the start of the normalised
    path) are in maintenance. None matches every request."""

    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None


# Every scope has it; config may redefine it (SPEC, "Partial maintenance").
READ_ONLY = "read-only"
BUILTIN_MODES: Mapping[str, ModeConfig] = MappingProxyType(
    {READ_ONLY: ModeConfig(methods=("POST", "PUT", "PATCH", "DELETE"))}
)


@dataclass(frozen=True)
class ScopeConfig:
    """A named scope, the flag file that drives it, its partial-maintenance modes,
    and its own answers' settings.

    Every override left as None falls back to the global setting (``http.*``,
    ``agent.withdraw_as``, ``bypass``); the ``Config.scope_*`` methods resolve it.
    """

    name: str
    lock_file: str | None = None
    # Host names (lowercase, no port) whose requests this scope answers: exact
    # names and "*.example.com" wildcards.
    hosts: tuple[str, ...] = ()
    policy: Policy | None = None
    page_status: int | None = None
    retry_after: int | None = None
    page_template: str | None = None
    api_prefixes: tuple[str, ...] | None = None
    withdraw_as: WithdrawAs | None = None
    bypass: BypassConfig | None = None
    modes: Mapping[str, ModeConfig] = field(default_factory=lambda: BUILTIN_MODES)


@dataclass(frozen=True)
class ControlConfig:
    """The control socket: where, and who may connect."""

    socket: str
    mode: int = field(default=0o660, metadata={"octal": True})  # shown as 0660
    group: str | None = None


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP health responder and maintenance page."""

    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 8089),)
    scope: str = DEFAULT_SCOPE
    policy: Policy = "withdraw"
    health_path: str = "/healthz"
    gate_path: str = "/gate"
    page_status: int = 503
    retry_after: int = 300
    page_template: str | None = None
    api_prefixes: tuple[str, ...] = ("/api/",)
    header_timeout: float = 10.0


@dataclass(frozen=True)
class AgentConfig:
    """The HAProxy agent-check responder."""

    listen: tuple[ListenAddress, ...] = ()
    # Ports where HAProxy first names the scope (agent-send "shop\\n").
    named_listen: tuple[ListenAddress, ...] = ()
    scope: str = DEFAULT_SCOPE
    withdraw_as: WithdrawAs = "maint"


@dataclass(frozen=True)
class MetricsConfig:
    """Who may read ``/metrics`` on the HTTP listener (others get the ordinary answer)."""

    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class RunConfig:
    """guard-run defaults."""

    skip_code: int = 0


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://127.0.0.1:2379``, ``127.0.0.1:2379``, ``[::1]:2379`` -> (host, port)."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{endpoint!r} is not an etcd endpoint (http://HOST:PORT)")
    return host, int(port)


@dataclass(frozen=True)
class FleetConfig:
    """Many hosts, one switch, on etcd."""

    endpoints: tuple[str, ...] = ()
    prefix: str = "/guardd"
    lease_ttl: float = 10.0


@dataclass(frozen=True)
class BypassConfig:
    """Who and what passes the gate while the scope is in maintenance."""

    paths: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    # A file holding the secret, read by guardd only (at start and on reload), so the
    # config itself can stay world-readable for every user's guard-run.
    secret_file: str | None = None
    cookie_ttl: float = 12 * 3600.0
    insecure_cookie: bool = False


@dataclass(frozen=True)
class HooksConfig:
    """Commands run when a scope enters or leaves maintenance."""

    on_enter: tuple[tuple[str, ...], ...] = ()
    on_exit: tuple[tuple[str, ...], ...] = ()
    timeout: float = 30.0


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    source: str | None
    lock_dir: str
    runtime_dir: str
    node: str
    poll_interval: float
    scopes: Mapping[str, ScopeConfig]
    control: ControlConfig
    http: HttpConfig
    agent: AgentConfig
    run: RunConfig
    fleet: FleetConfig
    bypass: BypassConfig
    hooks: HooksConfig
    metrics: MetricsConfig = MetricsConfig()

    def flag_path(self, scope: str) -> str:
        """The file whose existence puts ``scope`` in maintenance."""
        own = self.scopes[scope].lock_file
        return own if own is not None else flag_path(self.lock_dir, scope)

    def scope_policy(self, scope: str) -> Policy:
        """The scope's health and agent policy (its own, else ``http.policy``)."""
        own = self.scopes[scope].policy
        return own if own is not None else self.http.policy

    def scope_withdraw_as(self, scope: str) -> WithdrawAs:
        """What the agent says for the scope in maintenance (its own, else the global)."""
        own = self.scopes[scope].withdraw_as
        return own if own is not None else self.agent.withdraw_as

    def scope_bypass(self, scope: str) -> BypassConfig:
        """The scope's whole ``bypass`` section (its own replaces the global one)."""
        own = self.scopes[scope].bypass
        return own if own is not None else self.bypass

    def known_modes(self) -> dict[str, tuple[str, ...]]:
        """Every scope's mode names (what a flag's ``mode`` may name)."""
        return {name: tuple(scope.modes) for name, scope in self.scopes.items()}

    def require_scope(self, scope: str) -> str:
        """Return ``scope`` if configured, else a usage error naming the known scopes."""
        if scope in self.scopes:
            return scope
        from guardd.errors import UsageError

        known = ", ".join(sorted(self.scopes))
        raise UsageError(f"unknown scope {scope!r} (configured scopes: {known})")

    def run_view(self) -> RunView:
        """The subset guard-run needs (what the config cache stores), and what the one
        switch rule (core/switch.py) reads for guardd and guardctl too."""
        return RunView(
            lock_dir=self.lock_dir,
            runtime_dir=self.runtime_dir,
            scope_flags={name: self.flag_path(name) for name in self.scopes},
            skip_code=self.run.skip_code,
            fleet_mirrors=bool(self.fleet.endpoints),
        )


# --------------------------------------------------------------------------- loading
