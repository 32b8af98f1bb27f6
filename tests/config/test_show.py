"""config/show.py: --check-config's view, derived from the dataclass fields, secrets masked."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from guardd.config.load import parse_config_text
from guardd.config.model import Config
from guardd.config.show import MASK, describe

CONFIG = """
poll_interval: 0.25
control: {mode: "0640"}
http: {listen: ["127.0.0.1:8089", "[::1]:8089"], header_timeout: 0.5}
fleet: {lease_ttl: 90}
bypass: {secret: "0123456789abcdef-long-enough", cookie_ttl: 1h30m}
hooks: {on_enter: [["/bin/echo", "on"]]}
scopes: {shop: {lock_file: /srv/shop/down, modes: {checkout: {paths: ["/checkout"]}}}}
"""


def test_every_field_of_every_section_is_shown() -> None:
    """Each Config field and each field of each section appears: a new key shows by itself."""
    shown: dict[str, Any] = describe(parse_config_text(CONFIG, source="/etc/guardd/config.yaml"))
    assert list(shown) == [f.name for f in fields(Config)]
    config = parse_config_text(CONFIG, source="x")
    for item in fields(Config):
        section = getattr(config, item.name)
        if hasattr(section, "__dataclass_fields__"):
            assert list(shown[item.name]) == [f.name for f in fields(section)]


def test_values_are_shown_as_an_operator_writes_them() -> None:
    """Durations, fractions, modes, addresses, commands; the secret masked; effective flags."""
    shown: dict[str, Any] = describe(parse_config_text(CONFIG, source="/etc/guardd/config.yaml"))
    assert shown["source"] == "/etc/guardd/config.yaml"
    assert shown["poll_interval"] == 0.25
    assert shown["control"]["mode"] == "0640"
    assert shown["http"]["listen"] == ["127.0.0.1:8089", "[::1]:8089"]
    assert shown["http"]["header_timeout"] == 0.5  # not "0s"
    assert shown["http"]["api_prefixes"] == ["/api/"]
    assert shown["fleet"]["lease_ttl"] == "1m30s"
    assert shown["bypass"]["secret"] == MASK
    assert shown["bypass"]["cookie_ttl"] == "1h30m"
    assert shown["hooks"]["on_enter"] == [["/bin/echo", "on"]]
    assert shown["scopes"]["shop"] == {
        "flag": "/srv/shop/down",
        "modes": {
            "read-only": {"methods": ["POST", "PUT", "PATCH", "DELETE"], "paths": None},
            "checkout": {"methods": None, "paths": ["/checkout"]},
        },
    }
    assert shown["scopes"]["default"]["modes"]["read-only"]["methods"] == [
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    ]
    assert "0123456789abcdef" not in repr(shown)


def test_built_in_defaults() -> None:
    """Without a file: the source says so and no secret is shown as set."""
    shown: dict[str, Any] = describe(replace(parse_config_text("", source="x"), source=None))
    assert shown["source"] == "(built-in defaults)"
    assert shown["bypass"]["secret"] is None
