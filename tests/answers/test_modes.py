"""Partial maintenance: config, flag, state, policy and the mode matcher (pure parts)."""

from __future__ import annotations

import pytest

from guardd.answers.modes import ModeRule, compile_modes, paused_text, stops_request
from guardd.answers.policy import agent_line, health_answer
from guardd.config.load import build_config
from guardd.config.model import BUILTIN_MODES, ModeConfig
from guardd.core.choices import POLICIES, Policy
from guardd.core.flag import INVALID_MODE, FlagInfo, parse_flag_content
from guardd.core.state import all_statuses, modes_in_force
from guardd.errors import ConfigError


def flag(mode: str | None = None) -> FlagInfo:
    return FlagInfo(reason="r", until=None, since="2026-01-01T00:00:00Z", by=None, mode=mode)


def test_every_scope_has_read_only_and_config_adds_modes() -> None:
    """read-only is built in; a scope's modes add to it; a missing key matches all."""
    config = build_config(
        {"scopes": {"shop": {"modes": {"checkout": {"paths": ["/checkout", "/cart/pay"]}}}}},
        source=None,
    )
    shop = config.scopes["shop"].modes
    assert set(shop) == {"read-only", "checkout"}
    assert shop["read-only"].methods == ("POST", "PUT", "PATCH", "DELETE")
    assert shop["checkout"] == ModeConfig(methods=None, paths=("/checkout", "/cart/pay"))
    assert config.scopes["default"].modes is BUILTIN_MODES


def test_config_may_redefine_read_only() -> None:
    """A scope may redefine the built-in read-only mode (methods upper-cased)."""
    config = build_config(
        {"scopes": {"wiki": {"modes": {"read-only": {"methods": ["post", "DELETE"]}}}}},
        source=None,
    )
    assert config.scopes["wiki"].modes["read-only"].methods == ("POST", "DELETE")


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        ({"Bad Name": {}}, "scopes.shop.modes.Bad Name: expected a mode name"),
        ({"x": {"methods": ["GET /"]}}, "scopes.shop.modes.x.methods[0]: expected an HTTP method"),
        ({"x": {"paths": ["(["]}}, "scopes.shop.modes.x.paths[0]: expected a regular expression"),
        ({"x": {"method": ["POST"]}}, "did you mean 'scopes.shop.modes.x.methods'"),
        (["read-only"], "scopes.shop.modes: expected a mapping"),
    ],
)
def test_bad_modes_are_config_errors(modes: object, message: str) -> None:
    """Every malformed mode is one ConfigError naming the key path."""
    with pytest.raises(ConfigError) as err:
        build_config({"scopes": {"shop": {"modes": modes}}}, source=None)
    assert message in str(err.value)


def test_flag_mode_is_read_and_odd_values_fail_safe() -> None:
    """A flag's mode is read; a non-text mode names no mode (full maintenance)."""
    assert parse_flag_content(b'{"mode": "read-only"}', mtime=0).mode == "read-only"
    assert parse_flag_content(b'{"reason": "x"}', mtime=0).mode is None
    assert parse_flag_content(b'{"mode": 3}', mtime=0).mode == INVALID_MODE
    assert parse_flag_content(b"read-only", mtime=0).mode is None  # plain text: a reason


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([flag("read-only")], ("read-only",)),
        ([flag("read-only"), None], ("read-only",)),
        ([flag(None)], ()),  # no mode: full maintenance
        ([flag("read-only"), flag(None)], ()),  # full beats a mode
        ([flag("nope")], ()),  # unknown mode: full (fail safe)
        ([flag(INVALID_MODE)], ()),
        ([flag("read-only"), flag("checkout")], ("checkout", "read-only")),
    ],
)
def test_modes_in_force(flags: list[FlagInfo | None], expected: tuple[str, ...]) -> None:
    """Each flag in force applies: full beats a mode, two modes add up."""
    assert modes_in_force(flags, {"read-only", "checkout"}) == expected


def test_default_and_scope_flags_combine() -> None:
    """default in read-only and shop in checkout: shop has both modes, blog only one."""
    known = {"default": ("read-only",), "shop": ("read-only", "checkout"), "blog": ("read-only",)}
    statuses = all_statuses(
        {"default": flag("read-only"), "shop": flag("checkout"), "blog": None}, {}, known
    )
    assert statuses["shop"].modes == ("checkout", "read-only")
    assert statuses["shop"].mode == "checkout+read-only"
    assert statuses["blog"].mode == "read-only"
    assert statuses["default"].fields()["mode"] == "read-only"


@pytest.mark.parametrize("policy", POLICIES)
def test_health_and_agent_stay_in_pool_in_a_mode(policy: Policy) -> None:
    """In a mode, health is 200 warn and the agent says up ready under every policy."""
    status = all_statuses({"default": flag("read-only")}, {}, {"default": ("read-only",)})[
        "default"
    ]
    answer = health_answer(status, policy, other_node_serves=True)
    assert (answer.code, answer.status, answer.maintenance) == (200, "warn", True)
    assert "mode read-only" in (answer.output or "")
    assert agent_line(status, policy, "maint", other_node_serves=True) == "up ready 100%\n"
    full = all_statuses({"default": flag(None)}, {}, {"default": ("read-only",)})["default"]
    if policy == "withdraw":
        assert health_answer(full, "withdraw").code == 503


def test_read_only_stops_writes_only() -> None:
    """read-only stops POST/PUT/PATCH/DELETE (any case); GET and HEAD pass."""
    rule = compile_modes(BUILTIN_MODES)["read-only"]
    for method in (b"POST", b"PUT", b"PATCH", b"DELETE", b"post"):
        assert rule.stops(method, b"/anything")
    for method in (b"GET", b"HEAD", b"OPTIONS"):
        assert not rule.stops(method, b"/anything")


def test_unknown_method_and_ambiguous_path_fail_safe() -> None:
    """No method passed on, or an ambiguous path, counts as matching."""
    read_only = compile_modes(BUILTIN_MODES)["read-only"]
    assert read_only.stops(None, b"/")
    checkout = ModeRule.from_config("checkout", ModeConfig(paths=("/checkout",)))
    assert checkout.stops(b"GET", b"/checkout/pay")
    assert checkout.stops(b"GET", b"/a/../checkout")  # normalised first
    assert checkout.stops(b"GET", b"/x/..%2Fcheckout")  # ambiguous: stopped
    # Slashes merged before ".." (nginx) give /checkout, RFC 3986 /x/checkout: stopped.
    assert checkout.stops(b"GET", b"/x//../checkout")
    assert not checkout.stops(b"GET", b"/products/checkout")
    assert not checkout.stops(None, b"/products")  # no methods named: method irrelevant


def test_two_modes_block_what_either_matches() -> None:
    """stops_request is true when any mode in force matches."""
    rules = compile_modes(
        {**BUILTIN_MODES, "checkout": ModeConfig(methods=("GET",), paths=("/checkout",))}
    )
    both = [rules["read-only"], rules["checkout"]]
    assert stops_request(both, b"POST", b"/products")
    assert stops_request(both, b"GET", b"/checkout")
    assert not stops_request(both, b"GET", b"/products")


def test_paused_text() -> None:
    """The page says what is paused."""
    assert paused_text("read-only") == "Saving changes is paused"
    assert paused_text("checkout") == "Checkout is paused"
    assert paused_text("sign-up+checkout") == "Sign up and checkout is paused"
