"""Which transitions fire hooks (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from guardd.core.flag import FlagInfo
from guardd.core.state import all_statuses
from guardd.daemon.hooks import transitions

FLAG = FlagInfo(reason="r", until=None, since="2026-11-21T23:00:00Z", by=None)


def kinds(
    old_flags: Mapping[str, FlagInfo | None],
    new_flags: Mapping[str, FlagInfo | None],
    old_jobs: dict[str, int] | None = None,
    new_jobs: dict[str, int] | None = None,
) -> list[tuple[str, str, str]]:
    old = all_statuses(old_flags, old_jobs or {})
    new = all_statuses(new_flags, new_jobs or {})
    return [
        (c.kind, c.status.scope, c.status.state)
        for c in transitions(old, new, old_flags, new_flags)
    ]


def test_own_flag_on_and_off_fire_enter_and_exit() -> None:
    """A scope's own flag appearing fires on_enter; its removal fires on_exit."""
    off = {"default": None, "shop": None}
    on = {"default": None, "shop": FLAG}
    assert kinds(off, on) == [("on_enter", "shop", "on")]
    assert kinds(off, on, new_jobs={"shop": 1}) == [("on_enter", "shop", "draining")]
    assert kinds(on, off) == [("on_exit", "shop", "off")]


def test_draining_to_on_fires_nothing() -> None:
    """The end of a drain is not a new transition."""
    on = {"default": None, "shop": FLAG}
    assert kinds(on, on, old_jobs={"shop": 1}) == []


def test_scopes_turned_on_by_default_fire_only_defaults_hooks() -> None:
    """default's flag turns every scope on, but only default's own hooks fire."""
    off = {"default": None, "shop": None}
    host = {"default": FLAG, "shop": None}
    assert kinds(off, host) == [("on_enter", "default", "on")]
    assert kinds(host, off) == [("on_exit", "default", "off")]


def test_new_scopes_fire_nothing() -> None:
    """States found at start or after a reload fire no hooks."""
    assert transitions({}, all_statuses({"shop": FLAG}, {}), {}, {"shop": FLAG}) == []
