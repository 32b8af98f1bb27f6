"""Scope states from flags and job counts."""

from __future__ import annotations

from datetime import UTC, datetime

from guardd.core.flag import FlagInfo
from guardd.core.state import all_statuses, next_overdue, summary

ON = FlagInfo(reason="host work", until=None, since="2026-11-21T23:00:00Z", by=None)
SHOP = FlagInfo(
    reason="shop work", until="2026-11-22T00:00:00Z", since="2026-11-21T23:30:00Z", by=None
)


def test_off_draining_on() -> None:
    """No flag: off; flag with jobs: draining; flag without jobs: on."""
    statuses = all_statuses({"default": None, "a": SHOP, "b": SHOP}, {"a": 2, "b": 0, "default": 2})
    assert [statuses[s].state for s in ("default", "a", "b")] == ["off", "draining", "on"]
    assert statuses["a"].jobs == 2


def test_default_puts_every_scope_on_with_its_reason() -> None:
    """default's flag turns every scope on; a scope's own flag wins for the details."""
    statuses = all_statuses({"default": ON, "a": None, "b": SHOP}, {})
    assert statuses["a"].state == "on" and statuses["a"].reason == "host work"
    assert statuses["b"].reason == "shop work"
    assert statuses["b"].until == "2026-11-22T00:00:00Z"


def test_named_scopes_are_independent() -> None:
    """One named scope's flag does not touch another."""
    statuses = all_statuses({"default": None, "a": SHOP, "b": None}, {})
    assert statuses["b"].state == "off"


def test_summary_line() -> None:
    """The STATUS= line names the scopes in maintenance and jobs left."""
    assert summary(all_statuses({"default": None}, {})) == "all 1 scope(s) in service"
    line = summary(all_statuses({"default": None, "a": SHOP}, {"a": 1}))
    assert line == "maintenance: a draining (1 job)"


def test_overdue_via_by_note() -> None:
    """until passed (with the flag there): overdue, and the STATUS= line says so; a scope
    on only through default says via default; by and note come from the flag in force."""
    noted = FlagInfo(
        reason="r", until="2026-11-22T00:00:00Z", since="2026-11-21T23:00:00Z", by="ana@h", note="n"
    )
    before = datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 11, 22, 0, 0, 0, tzinfo=UTC).timestamp()
    assert not all_statuses({"default": None, "a": noted}, {}, now=before)["a"].overdue
    statuses = all_statuses({"default": ON, "a": noted, "b": None}, {}, now=after)
    assert statuses["a"].overdue and (statuses["a"].by, statuses["a"].note) == ("ana@h", "n")
    assert statuses["a"].via is None and statuses["b"].via == "default"
    assert statuses["default"].via is None and not statuses["b"].overdue
    assert "a on OVERDUE" in summary(statuses)
    assert next_overdue(all_statuses({"a": noted}, {}, now=before), before) == after
    assert next_overdue(statuses, after) is None


def test_off_scope_is_never_overdue_or_via() -> None:
    """An off scope has no overdue, via, by or note, whatever the clock says."""
    status = all_statuses({"default": None, "a": None}, {}, now=1e12)["a"]
    assert (status.overdue, status.via, status.by, status.note) == (False, None, None, None)
