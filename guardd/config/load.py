"""Load the YAML configuration once into frozen, typed objects; all validation lives here.

Every error is one ConfigError naming the key path (``http.listen[0]``), what was
expected, and a "did you mean" for near-miss keys."""

from __future__ import annotations

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
    MetricsConfig,
    ModeConfig,
    RunConfig,
    ScopeConfig,
    parse_endpoint,
)
from guardd.config.section import (
    Section,
    kind,
    url_path_problem,
    where,
)
from guardd.core.choices import POLICIES, WITHDRAW_AS, Policy, WithdrawAs
from guardd.core.paths import (
    DEFAULT_SCOPE,
    default_lock_dir,
    default_runtime_dir,
    find_config_path,
    is_scope_name,
)
from guardd.errors import ConfigError

T = TypeVar("T")

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
            f"{source}: expected a mapping of settings at the top level, got {kind(data)}"
        )
    return build_config(data, source=source)


def build_config(data: Mapping[str, object], *, source: str | None) -> Config:
    """Validate a decoded YAML mapping and fill in defaults."""
    top = Section(data, "", source)
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
            where(
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


def _scopes(top: Section) -> dict[str, ScopeConfig]:
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
            key = Section({}, "scopes", top.source).key(str(name))
            raise ConfigError(
                where(
                    top.source, f"{key}: expected a scope name matching [a-z0-9][a-z0-9_-]{{0,63}}"
                )
            )
        key = f"scopes.{name}"
        if settings is not None and not isinstance(settings, dict):
            raise top.error(key, "a mapping (or nothing)", settings)
        if not settings:
            scopes[name] = ScopeConfig(name=name)
            continue
        section = Section(settings, key, top.source)
        lock_file = section.path("lock_file", default=None)
        listed = section.string_list("hosts", default=(), item_check=_host_name)
        hosts = tuple(dict.fromkeys(host.lower().rstrip(".") for host in listed))
        for index, written in enumerate(listed):
            host = written.lower().rstrip(".")
            other = claimed.setdefault(host, name)
            if other != name:
                raise ConfigError(
                    where(
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


def _optional(section: Section, name: str, read: Callable[[Section, str], T]) -> T | None:
    """A scope's override: None when absent (the global setting applies)."""
    if section.data.get(name) is None:
        section.used.add(name)
        return None
    return read(section, name)


def _policy(section: Section, name: str) -> str:
    return section.choice(name, POLICIES, default="withdraw")


def _withdraw_as(section: Section, name: str) -> str:
    return section.choice(name, WITHDRAW_AS, default="maint")


def _retry_after(section: Section, name: str) -> int:
    return section.integer(name, default=300, low=0, high=10**9)


def _api_prefixes(section: Section, name: str) -> tuple[str, ...]:
    return section.string_list(name, default=("/api/",), item_check=url_path_problem)


def _page_status(section: Section, name: str) -> int:
    status = section.integer(name, default=503, low=200, high=599)
    if status in (204, 205, 304):
        raise section.error(section.key(name), "a status that carries a body", status)
    return status


def _host_name(value: str) -> str | None:
    if not _HOST_NAME.fullmatch(value):
        return "a host name (www.example.com) or a wildcard (*.example.com), without a port"
    return None


HTTP_METHOD = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}"


def _modes(scope: Section) -> Mapping[str, ModeConfig]:
    """``scopes.<s>.modes``: the built-in ``read-only`` plus (or redefined by) config."""
    raw = scope.raw("modes")
    if raw is None:
        return BUILTIN_MODES
    if not isinstance(raw, dict):
        raise scope.error(scope.key("modes"), "a mapping of mode names to settings", raw)
    modes = dict(BUILTIN_MODES)
    for name, settings in raw.items():
        key = Section({}, scope.key("modes"), scope.source).key(str(name))
        if not isinstance(name, str) or not is_scope_name(name):
            raise ConfigError(
                where(
                    scope.source,
                    f"{key}: expected a mode name matching [a-z0-9][a-z0-9_-]{{0,63}}",
                )
            )
        if settings is not None and not isinstance(settings, dict):
            raise scope.error(key, "a mapping with methods and/or paths (or nothing)", settings)
        section = Section(settings or {}, key, scope.source)
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


def _control(top: Section, runtime_dir: str) -> ControlConfig:
    section = top.section("control")
    sock = section.path("socket", default=os.path.join(runtime_dir, "guardd.sock"))
    mode = section.file_mode("mode", default=0o660)
    group = section.string("group", default=None, expected="a group name or number")
    section.finish()
    return ControlConfig(socket=sock, mode=mode, group=group)


def _http(top: Section, scopes: Mapping[str, ScopeConfig]) -> HttpConfig:
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
        api_prefixes=section.string_list(
            "api_prefixes", default=("/api/",), item_check=url_path_problem
        ),
        header_timeout=section.duration("header_timeout", default=10.0, minimum=0.1),
    )
    section.finish()
    # The responder routes these paths before the page: none may shadow another.
    reserved = {"/maintenance.json": "the status document"}
    for key, path in (("health_path", result.health_path), ("gate_path", result.gate_path)):
        if path in reserved or path.startswith("/.guardd/"):
            what = reserved.get(path, "guardd's own /.guardd/ paths")
            raise ConfigError(where(top.source, f"http.{key}: {path!r} is taken by {what}"))
    if result.gate_path == result.health_path:
        raise ConfigError(
            where(top.source, f"http.gate_path: {result.gate_path!r} is also http.health_path")
        )
    return result


def _agent(top: Section, scopes: Mapping[str, ScopeConfig], http_scope: str) -> AgentConfig:
    section = top.section("agent")
    result = AgentConfig(
        listen=section.listen("listen", default=()),
        named_listen=section.listen("named_listen", default=()),
        scope=section.scope("scope", scopes, default=http_scope),
        withdraw_as=section.choice("withdraw_as", WITHDRAW_AS, default="maint"),
    )
    section.finish()
    return result


def _fleet(top: Section) -> FleetConfig:
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


def _bypass(top: Section) -> BypassConfig:
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
            where(
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
            where(
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
            where(source, f"{key}.secret_file: cannot read {path}: {reason}")
        ) from None
    _check_secret(secret, f"{key}.secret_file ({path})", source)
    return replace(bypass, secret=secret)


def _hooks(top: Section) -> HooksConfig:
    section = top.section("hooks")
    result = HooksConfig(
        on_enter=section.commands("on_enter"),
        on_exit=section.commands("on_exit"),
        timeout=section.duration("timeout", default=30.0, minimum=0.1),
    )
    section.finish()
    return result


# --------------------------------------------------------------------------- value checks


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
