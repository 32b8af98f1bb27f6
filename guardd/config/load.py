"""Load the YAML configuration once into frozen, typed objects; all validation lives here.

Every error is one ConfigError naming the key path (``http.listen[0]``), what was
expected, and a "did you mean" for near-miss keys."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TypeVar, cast

from guardd.config.model import (
    BUILTIN_MODES,
    AgentConfig,
    BypassConfig,
    Config,
    ControlConfig,
    FleetConfig,
    HooksConfig,
    HttpConfig,
    ListenAddress,
    MetricsConfig,
    ModeConfig,
    RunConfig,
    ScopeConfig,
    parse_endpoint,
)
from guardd.core.choices import POLICIES, WITHDRAW_AS, Policy, WithdrawAs
from guardd.core.durations import check_duration, format_duration, parse_duration
from guardd.core.paths import (
    DEFAULT_SCOPE,
    default_lock_dir,
    default_runtime_dir,
    find_config_path,
    is_scope_name,
)
from guardd.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")  # a default: a value of the checked type, or None
C = TypeVar("C", bound=str)  # one of an allowed-value set (core.choices)
# Statuses whose answers never carry a body (RFC 9110 15.3.5, 15.3.6, 15.4.5; 1xx are
# below the allowed range): the maintenance page cannot be sent with them.
BODYLESS_STATUSES = (204, 205, 304)

_FLAG_AND_HOSTS = frozenset({"lock_file", "hosts"})

# A host name as clients send it in Host (any case, an optional final dot), or a
# wildcard for every name below a domain.
_HOST_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?"
)


def load_config(path: str | None = None) -> Config:
    """Load ``path``, else $GUARDD_CONFIG, else /etc/guardd/config.yaml, else built-ins.

    A file named by the caller or the environment must exist; only the implicit
    /etc/guardd/config.yaml may be absent.
    """
    chosen = find_config_path(path)
    if chosen is None:
        return build_config({}, source=None)
    try:
        with open(chosen, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{chosen}: is a directory, expected a YAML file") from None
    except OSError as err:
        raise ConfigError(f"{chosen}: cannot read: {err.strerror}") from None
    return parse_config_text(raw, source=chosen)


def parse_config_text(raw: bytes | str, *, source: str) -> Config:
    """Parse YAML text into a Config (pure apart from checks on named files)."""
    import yaml

    # libyaml's parser when PyYAML has it: the same documents, parsed ~10x faster
    # (a config with 10,000 scopes takes ~0.3 s instead of ~4 s).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(raw, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or ""
        if "nesting depth" in problem:
            # libyaml's limit; the same words as the pure-Python parser's RecursionError.
            problem = "nested too deeply"
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{source}: invalid YAML: {first_line}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{source}: not a text file: {err}") from None
    except RecursionError:
        # PyYAML builds nested collections recursively: "[[[[..." thousands deep
        # exhausts the stack before any key could be checked.
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings at the top level, got {_kind(data)}"
        )
    return build_config(data, source=source)


def build_config(data: Mapping[str, object], *, source: str | None) -> Config:
    """Validate a decoded YAML mapping and fill in defaults."""
    top = _Section(data, "", source)
    # A config file, even one that leaves the paths out, means the system paths for
    # every user: cron jobs and operators must meet at the same files.
    config_file = source is not None
    lock_dir = top.path("lock_dir", default=default_lock_dir(config_file=config_file))
    runtime_dir = top.path("runtime_dir", default=default_runtime_dir(config_file=config_file))
    node = top.string(
        "node",
        default=socket.gethostname(),
        pattern=r"[A-Za-z0-9_.-]{1,253}",
        expected="a host name (letters, digits, '.', '-', '_')",
    )
    poll_interval = top.duration("poll_interval", default=2.0, minimum=0.05)

    scopes = _scopes(top)
    control = _control(top, runtime_dir)
    http = _http(top, scopes)
    agent = _agent(top, scopes, http.scope)
    run_section = top.section("run")
    run = RunConfig(skip_code=run_section.integer("skip_code", default=0, low=0, high=255))
    run_section.finish()
    fleet = _fleet(top)
    bypass = _bypass(top)
    hooks = _hooks(top)
    metrics_section = top.section("metrics")
    metrics = MetricsConfig(
        allow=metrics_section.string_list("allow", default=MetricsConfig.allow, item_check=_cidr)
    )
    metrics_section.finish()
    top.finish()

    fleet_users = ["http.policy"] if http.policy == "fleet" else []
    fleet_users += [f"scopes.{s.name}.policy" for s in scopes.values() if s.policy == "fleet"]
    if fleet_users and not fleet.endpoints:
        raise ConfigError(
            _where(
                source,
                f"{fleet_users[0]}: 'fleet' needs fleet.endpoints "
                "(the etcd cluster to read the fleet's state from)",
            )
        )

    return Config(
        source=source,
        lock_dir=lock_dir,
        runtime_dir=runtime_dir,
        node=node,
        poll_interval=poll_interval,
        scopes=scopes,
        control=control,
        http=http,
        agent=agent,
        run=run,
        fleet=fleet,
        bypass=bypass,
        hooks=hooks,
        metrics=metrics,
    )


def _scopes(top: _Section) -> dict[str, ScopeConfig]:
    raw = top.raw("scopes")
    scopes: dict[str, ScopeConfig] = {DEFAULT_SCOPE: ScopeConfig(DEFAULT_SCOPE)}
    if raw is None:
        return scopes
    if isinstance(raw, list):
        # A bare list of names is the obvious thing to write; accept it.
        raw = dict.fromkeys(raw) if all(isinstance(n, str) for n in raw) else raw
    if not isinstance(raw, dict):
        raise top.error("scopes", "a mapping of scope names to settings", raw)
    claimed: dict[str, str] = {}  # host name -> the scope that claimed it first
    templates: dict[str, str] = {}  # page_template paths already checked
    for name, settings in raw.items():
        if not isinstance(name, str) or not is_scope_name(name):
            key = _Section({}, "scopes", top.source).key(str(name))
            raise ConfigError(
                _where(
                    top.source, f"{key}: expected a scope name matching [a-z0-9][a-z0-9_-]{{0,63}}"
                )
            )
        key = f"scopes.{name}"
        if settings is not None and not isinstance(settings, dict):
            raise top.error(key, "a mapping (or nothing)", settings)
        if not settings:
            scopes[name] = ScopeConfig(name=name)
            continue
        section = _Section(settings, key, top.source)
        lock_file = section.path("lock_file", default=None)
        listed = section.string_list("hosts", default=(), item_check=_host_name)
        hosts = tuple(dict.fromkeys(host.lower().rstrip(".") for host in listed))
        for index, written in enumerate(listed):
            host = written.lower().rstrip(".")
            other = claimed.setdefault(host, name)
            if other != name:
                raise ConfigError(
                    _where(
                        top.source,
                        f"{key}.hosts[{index}]: {host!r} is claimed by both scope "
                        f"{other!r} and scope {name!r} (a host name belongs to one scope)",
                    )
                )
        if settings.keys() <= _FLAG_AND_HOSTS:
            # The common case, 10,000 times over on a shared host: no overrides.
            scopes[name] = ScopeConfig(name=name, lock_file=lock_file, hosts=hosts)
            section.finish()
            continue
        modes = _modes(section)
        template_path = section.raw("page_template")
        if isinstance(template_path, str) and template_path in templates:
            page_template: str | None = template_path  # already found readable
        else:
            section.used.discard("page_template")
            page_template = section.readable_file("page_template")
            if page_template is not None:
                templates[page_template] = name
        bypass = _bypass(section) if section.raw("bypass") is not None else None
        scopes[name] = ScopeConfig(
            name=name,
            lock_file=lock_file,
            hosts=hosts,
            policy=cast("Policy | None", _optional(section, "policy", _policy)),
            page_status=_optional(section, "page_status", _page_status),
            retry_after=_optional(section, "retry_after", _retry_after),
            page_template=page_template,
            api_prefixes=_optional(section, "api_prefixes", _api_prefixes),
            withdraw_as=cast("WithdrawAs | None", _optional(section, "withdraw_as", _withdraw_as)),
            bypass=bypass,
            modes=modes,
        )
        section.finish()
    return scopes


def _optional(section: _Section, name: str, read: Callable[[_Section, str], T]) -> T | None:
    """A scope's override: None when absent (the global setting applies)."""
    if section.data.get(name) is None:
        section.used.add(name)
        return None
    return read(section, name)


def _policy(section: _Section, name: str) -> str:
    return section.choice(name, POLICIES, default="withdraw")


def _withdraw_as(section: _Section, name: str) -> str:
    return section.choice(name, WITHDRAW_AS, default="maint")


def _retry_after(section: _Section, name: str) -> int:
    return section.integer(name, default=300, low=0, high=10**9)


def _api_prefixes(section: _Section, name: str) -> tuple[str, ...]:
    return section.string_list(name, default=("/api/",), item_check=_url_path)


def _page_status(section: _Section, name: str) -> int:
    status = section.integer(name, default=503, low=200, high=599)
    if status in (204, 205, 304):
        raise section.error(section.key(name), "a status that carries a body", status)
    return status


def _host_name(value: str) -> str | None:
    if not _HOST_NAME.fullmatch(value):
        return "a host name (www.example.com) or a wildcard (*.example.com), without a port"
    return None


HTTP_METHOD = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}"


def _modes(scope: _Section) -> Mapping[str, ModeConfig]:
    """``scopes.<s>.modes``: the built-in ``read-only`` plus (or redefined by) config."""
    raw = scope.raw("modes")
    if raw is None:
        return BUILTIN_MODES
    if not isinstance(raw, dict):
        raise scope.error(scope.key("modes"), "a mapping of mode names to settings", raw)
    modes = dict(BUILTIN_MODES)
    for name, settings in raw.items():
        key = _Section({}, scope.key("modes"), scope.source).key(str(name))
        if not isinstance(name, str) or not is_scope_name(name):
            raise ConfigError(
                _where(
                    scope.source,
                    f"{key}: expected a mode name matching [a-z0-9][a-z0-9_-]{{0,63}}",
                )
            )
        if settings is not None and not isinstance(settings, dict):
            raise scope.error(key, "a mapping with methods and/or paths (or nothing)", settings)
        section = _Section(settings or {}, key, scope.source)
        methods = section.string_list("methods", default=(), item_check=_method)
        paths = section.string_list("paths", default=(), item_check=_regex)
        section.finish()
        modes[name] = ModeConfig(
            methods=tuple(m.upper() for m in methods)
            if section.data.get("methods") is not None
            else None,
            paths=paths if section.data.get("paths") is not None else None,
        )
    return MappingProxyType(modes)


def _method(value: str) -> str | None:
    return None if re.fullmatch(HTTP_METHOD, value) else "an HTTP method such as POST"


def _control(top: _Section, runtime_dir: str) -> ControlConfig:
    section = top.section("control")
    sock = section.path("socket", default=os.path.join(runtime_dir, "guardd.sock"))
    mode = section.file_mode("mode", default=0o660)
    group = section.string("group", default=None, expected="a group name or number")
    section.finish()
    return ControlConfig(socket=sock, mode=mode, group=group)


def _http(top: _Section, scopes: Mapping[str, ScopeConfig]) -> HttpConfig:
    section = top.section("http")
    defaults = HttpConfig()
    result = HttpConfig(
        listen=section.listen("listen", default=defaults.listen),
        scope=section.scope("scope", scopes, default=DEFAULT_SCOPE),
        policy=section.choice("policy", POLICIES, default="withdraw"),
        health_path=section.url_path("health_path", default=defaults.health_path),
        gate_path=section.url_path("gate_path", default=defaults.gate_path),
        page_status=section.body_status("page_status", default=503),
        retry_after=section.integer("retry_after", default=300, low=0, high=10**9),
        page_template=section.readable_file("page_template"),
        api_prefixes=section.string_list("api_prefixes", default=("/api/",), item_check=_url_path),
        header_timeout=section.duration("header_timeout", default=10.0, minimum=0.1),
    )
    section.finish()
    # The responder routes these paths before the page: none may shadow another.
    reserved = {"/maintenance.json": "the status document"}
    for key, path in (("health_path", result.health_path), ("gate_path", result.gate_path)):
        if path in reserved or path.startswith("/.guardd/"):
            what = reserved.get(path, "guardd's own /.guardd/ paths")
            raise ConfigError(_where(top.source, f"http.{key}: {path!r} is taken by {what}"))
    if result.gate_path == result.health_path:
        raise ConfigError(
            _where(top.source, f"http.gate_path: {result.gate_path!r} is also http.health_path")
        )
    return result


def _agent(top: _Section, scopes: Mapping[str, ScopeConfig], http_scope: str) -> AgentConfig:
    section = top.section("agent")
    result = AgentConfig(
        listen=section.listen("listen", default=()),
        named_listen=section.listen("named_listen", default=()),
        scope=section.scope("scope", scopes, default=http_scope),
        withdraw_as=section.choice("withdraw_as", WITHDRAW_AS, default="maint"),
    )
    section.finish()
    return result


def _fleet(top: _Section) -> FleetConfig:
    section = top.section("fleet")
    result = FleetConfig(
        endpoints=section.string_list("endpoints", default=(), item_check=_endpoint),
        prefix=section.string(
            "prefix",
            default="/guardd",
            pattern=r"/[^\s]*",
            expected="a key prefix starting with '/'",
        )
        or "/guardd",
        lease_ttl=section.duration("lease_ttl", default=10.0, minimum=2.0),
    )
    section.finish()
    return result


def _bypass(top: _Section) -> BypassConfig:
    section = top.section("bypass")
    result = BypassConfig(
        paths=section.string_list("paths", default=(), item_check=_regex),
        cidrs=section.string_list("cidrs", default=(), item_check=_cidr),
        trusted_proxies=section.string_list("trusted_proxies", default=(), item_check=_cidr),
        secret=section.string("secret", default=None, expected="a secret string"),
        secret_file=section.path("secret_file", default=None),
        cookie_ttl=section.duration("cookie_ttl", default=12 * 3600.0, minimum=1.0),
        insecure_cookie=section.boolean("insecure_cookie", default=False),
    )
    section.finish()
    if result.secret is not None and result.secret_file is not None:
        raise ConfigError(
            _where(
                top.source,
                f"{section.key('secret_file')}: give {section.key('secret')} or secret_file, "
                "not both",
            )
        )
    _check_secret(result.secret, section.key("secret"), top.source)
    return result


def _check_secret(secret: str | None, key: str, source: str | None) -> None:
    if secret is not None and len(secret) < 16:
        raise ConfigError(
            _where(
                source,
                f"{key}: expected at least 16 characters "
                "(it is the only thing between the public and the site)",
            )
        )


def resolve_secrets(config: Config) -> Config:
    """Read every ``bypass.secret_file`` (global and per scope) into its ``secret``
    (guardd only; guard-run never needs the secret, and may not be allowed to read it)."""
    bypass = _resolve_secret(config.bypass, "bypass", config.source)
    scopes: dict[str, ScopeConfig] | None = None
    for name, scope in config.scopes.items():
        if scope.bypass is not None and scope.bypass.secret_file is not None:
            scopes = dict(config.scopes) if scopes is None else scopes
            own = _resolve_secret(scope.bypass, f"scopes.{name}.bypass", config.source)
            scopes[name] = replace(scope, bypass=own)
    if bypass is config.bypass and scopes is None:
        return config
    return replace(config, bypass=bypass, scopes=scopes if scopes is not None else config.scopes)


def _resolve_secret(bypass: BypassConfig, key: str, source: str | None) -> BypassConfig:
    path = bypass.secret_file
    if path is None:
        return bypass
    try:
        with open(path, encoding="utf-8") as stream:
            secret = stream.read(4096).strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(
            _where(source, f"{key}.secret_file: cannot read {path}: {reason}")
        ) from None
    _check_secret(secret, f"{key}.secret_file ({path})", source)
    return replace(bypass, secret=secret)


def _hooks(top: _Section) -> HooksConfig:
    section = top.section("hooks")
    result = HooksConfig(
        on_enter=section.commands("on_enter"),
        on_exit=section.commands("on_exit"),
        timeout=section.duration("timeout", default=30.0, minimum=0.1),
    )
    section.finish()
    return result


# --------------------------------------------------------------------------- value checks


def _url_path(value: str) -> str | None:
    if not value.startswith("/") or any(c.isspace() for c in value):
        return "a URL path starting with '/'"
    return None


def _endpoint(value: str) -> str | None:
    try:
        parse_endpoint(value)
    except ValueError:
        return "an etcd endpoint such as http://127.0.0.1:2379"
    return None


def _regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as err:
        return f"a regular expression ({err})"
    return None


def _cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "an IPv4 or IPv6 address or network (10.0.0.0/8, 2001:db8::/32)"
    return None


def parse_listen(value: str) -> ListenAddress:
    """``HOST:PORT``, ``[V6ADDR]:PORT`` or ``:PORT``; raises ValueError."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected [V6ADDR]:PORT")
        host, port_text = text[1:close], text[close + 2 :]
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT, [V6ADDR]:PORT or :PORT")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets: [V6ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return ListenAddress(host=host, port=int(port_text))


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        shown = str(value) if not isinstance(value, int) or abs(value) < 10**40 else "huge"
        return f"a number ({shown})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _where(source: str | None, message: str) -> str:
    return f"{source}: {message}" if source else message


class _Section:
    """One mapping being read: tracks which keys were used, to reject the rest."""

    def __init__(self, data: object, prefix: str, source: str | None) -> None:
        self.data: Mapping[object, object] = data if isinstance(data, dict) else {}
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        shown = name if name.isprintable() and name.strip() == name and name else repr(name)
        return f"{self.prefix}.{shown}" if self.prefix else shown

    def error(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(_where(self.source, f"{key}: expected {expected}, got {_kind(value)}"))

    def raw(self, name: str) -> object:
        self.used.add(name)
        return self.data.get(name)

    def section(self, name: str) -> _Section:
        value = self.raw(name)
        if value is not None and not isinstance(value, dict):
            raise self.error(self.key(name), "a mapping", value)
        return _Section(value or {}, self.key(name), self.source)

    def finish(self) -> None:
        """Reject unknown keys, suggesting the nearest known one."""
        known = sorted(self.used)
        for name in self.data:
            if name in self.used:
                continue
            key = self.key(str(name))
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
            options = ", ".join(known)
            raise ConfigError(
                _where(self.source, f"{key}: unknown key{hint}; known keys here: {options}")
            )

    def _typed(self, name: str, default: D, check: Callable[[object], T]) -> T | D:
        value = self.raw(name)
        if value is None:
            return default
        return check(value)

    def string(
        self, name: str, *, default: D, expected: str = "text", pattern: str | None = None
    ) -> str | D:
        def check(value: object) -> str:
            if isinstance(value, int) and not isinstance(value, bool) and name == "group":
                return str(value)
            if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
                raise self.error(self.key(name), expected, value)
            return value

        return self._typed(name, default, check)

    def path(self, name: str, *, default: D) -> str | D:
        def check(value: object) -> str:
            if not isinstance(value, str) or not value.startswith("/"):
                raise self.error(self.key(name), "an absolute path", value)
            return os.path.normpath(value)

        return self._typed(name, default, check)

    def readable_file(self, name: str) -> str | None:
        def check(value: object) -> str:
            if not isinstance(value, str) or not value.startswith("/"):
                raise self.error(self.key(name), "an absolute path to an HTML file", value)
            try:
                with open(value, "rb") as stream:
                    stream.read(1)
            except OSError as err:
                raise ConfigError(
                    _where(self.source, f"{self.key(name)}: cannot read {value}: {err.strerror}")
                ) from None
            return value

        return self._typed(name, None, check)

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        def check(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise self.error(self.key(name), f"a whole number from {low} to {high}", value)
            return value

        return self._typed(name, default, check)

    def body_status(self, name: str, *, default: int) -> int:
        """An HTTP status whose answer carries a body (the page): 200-599 except 204,
        205 and 304, which must not have one (a body would desync keep-alive)."""

        def check(value: object) -> int:
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 200 <= value <= 599
                or value in BODYLESS_STATUSES
            ):
                raise self.error(
                    self.key(name),
                    "a whole number from 200 to 599 for a status that carries a body "
                    "(not 204, 205 or 304)",
                    value,
                )
            return value

        return self._typed(name, default, check)

    def boolean(self, name: str, *, default: bool) -> bool:
        def check(value: object) -> bool:
            if not isinstance(value, bool):
                raise self.error(self.key(name), "true or false", value)
            return value

        return self._typed(name, default, check)

    def duration(self, name: str, *, default: float, minimum: float) -> float:
        def check(value: object) -> float:
            expected = (
                f"a duration of at least {format_duration(minimum) if minimum >= 1 else minimum}"
                " and at most 100 years (45, 30s, 10m, 2h, 1h30m)"
            )
            if isinstance(value, bool):
                raise self.error(self.key(name), expected, value)
            try:
                if isinstance(value, int | float):
                    # YAML's .nan, .inf and 400-digit integers are numbers too.
                    seconds = check_duration(float(value), value)
                elif isinstance(value, str):
                    seconds = parse_duration(value)
                else:
                    raise self.error(self.key(name), expected, value)
            except (ValueError, OverflowError):
                raise self.error(self.key(name), expected, value) from None
            if seconds < minimum:
                raise self.error(self.key(name), expected, value)
            return seconds

        return self._typed(name, default, check)

    def file_mode(self, name: str, *, default: int) -> int:
        def check(value: object) -> int:
            expected = "a file mode such as 0660 (octal)"
            if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
                mode = int(value.replace("o", ""), 8)
            elif isinstance(value, int) and not isinstance(value, bool):
                mode = value
            else:
                raise self.error(self.key(name), expected, value)
            if not 0 <= mode <= 0o777:
                raise self.error(self.key(name), expected, value)
            return mode

        return self._typed(name, default, check)

    def choice(self, name: str, allowed: tuple[C, ...], *, default: C) -> C:
        def check(value: object) -> C:
            if value not in allowed:
                options = ", ".join(allowed)
                close = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    _where(
                        self.source,
                        f"{self.key(name)}: expected one of {options}, got {_kind(value)}{hint}",
                    )
                )
            return allowed[allowed.index(value)]  # the allowed member itself, typed C

        return self._typed(name, default, check)

    def scope(self, name: str, scopes: Mapping[str, ScopeConfig], *, default: str) -> str:
        def check(value: object) -> str:
            if not isinstance(value, str) or value not in scopes:
                known = ", ".join(sorted(scopes))
                raise self.error(self.key(name), f"a configured scope ({known})", value)
            return value

        return self._typed(name, default, check)

    def url_path(self, name: str, *, default: str) -> str:
        def check(value: object) -> str:
            problem = _url_path(value) if isinstance(value, str) else "a URL path"
            if problem:
                raise self.error(self.key(name), problem, value)
            return str(value)

        return self._typed(name, default, check)

    def string_list(
        self,
        name: str,
        *,
        default: tuple[str, ...],
        item_check: Callable[[str], str | None] | None = None,
    ) -> tuple[str, ...]:
        def check(value: object) -> tuple[str, ...]:
            if not isinstance(value, list):
                raise self.error(self.key(name), "a list", value)
            items = []
            for index, item in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if not isinstance(item, str):
                    raise self.error(key, "text", item)
                problem = item_check(item) if item_check else None
                if problem:
                    raise self.error(key, problem, item)
                items.append(item)
            return tuple(items)

        return self._typed(name, default, check)

    def listen(self, name: str, *, default: tuple[ListenAddress, ...]) -> tuple[ListenAddress, ...]:
        def check(value: object) -> tuple[ListenAddress, ...]:
            if isinstance(value, str):
                value = [value]  # one address written without a list
            if not isinstance(value, list):
                raise self.error(self.key(name), "a list of HOST:PORT addresses", value)
            addresses = []
            for index, item in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if not isinstance(item, str):
                    raise self.error(key, "HOST:PORT, [V6ADDR]:PORT or :PORT", item)
                try:
                    addresses.append(parse_listen(item))
                except ValueError as err:
                    raise ConfigError(_where(self.source, f"{key}: {err}, got {item!r}")) from None
            return tuple(addresses)

        return self._typed(name, default, check)

    def commands(self, name: str) -> tuple[tuple[str, ...], ...]:
        def check(value: object) -> tuple[tuple[str, ...], ...]:
            expected = "a list of commands, each a list of strings (argv, no shell)"
            if not isinstance(value, list):
                raise self.error(self.key(name), expected, value)
            result = []
            for index, command in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if (
                    not isinstance(command, list)
                    or not command
                    or not all(isinstance(arg, str) for arg in command)
                ):
                    raise self.error(key, "a command as a non-empty list of strings", command)
                result.append(tuple(command))
            return tuple(result)

        return self._typed(name, (), check)


# --------------------------------------------------------------------------- showing
