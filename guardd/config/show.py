"""The effective configuration as plain data for ``--check-config``, secrets masked."""

from __future__ import annotations

from typing import Any

from guardd.config.model import Config, ListenAddress
from guardd.core.durations import format_duration


def describe(config: Config) -> dict[str, Any]:
    """The effective config as plain data, secrets masked (for --check-config)."""

    def addresses(items: tuple[ListenAddress, ...]) -> list[str]:
        return [str(item) for item in items]

    return {
        "source": config.source or "(built-in defaults)",
        "lock_dir": config.lock_dir,
        "runtime_dir": config.runtime_dir,
        "node": config.node,
        "poll_interval": format_duration(config.poll_interval)
        if config.poll_interval >= 1
        else config.poll_interval,
        "scopes": {name: {"flag": config.flag_path(name)} for name in sorted(config.scopes)},
        "control": {
            "socket": config.control.socket,
            "mode": f"0{config.control.mode:o}",
            "group": config.control.group,
        },
        "http": {
            "listen": addresses(config.http.listen),
            "scope": config.http.scope,
            "policy": config.http.policy,
            "health_path": config.http.health_path,
            "gate_path": config.http.gate_path,
            "page_status": config.http.page_status,
            "retry_after": config.http.retry_after,
            "page_template": config.http.page_template,
            "api_prefixes": list(config.http.api_prefixes),
            "header_timeout": format_duration(config.http.header_timeout),
        },
        "agent": {
            "listen": addresses(config.agent.listen),
            "scope": config.agent.scope,
            "withdraw_as": config.agent.withdraw_as,
        },
        "metrics": {"allow": list(config.metrics.allow)},
        "run": {"skip_code": config.run.skip_code},
        "fleet": {
            "endpoints": list(config.fleet.endpoints),
            "prefix": config.fleet.prefix,
            "lease_ttl": format_duration(config.fleet.lease_ttl),
        },
        "bypass": {
            "paths": list(config.bypass.paths),
            "cidrs": list(config.bypass.cidrs),
            "trusted_proxies": list(config.bypass.trusted_proxies),
            "secret": "********" if config.bypass.secret else None,
            "secret_file": config.bypass.secret_file,
            "cookie_ttl": format_duration(config.bypass.cookie_ttl),
            "insecure_cookie": config.bypass.insecure_cookie,
        },
        "hooks": {
            "on_enter": [list(cmd) for cmd in config.hooks.on_enter],
            "on_exit": [list(cmd) for cmd in config.hooks.on_exit],
            "timeout": format_duration(config.hooks.timeout),
        },
    }
