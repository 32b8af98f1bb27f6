"""What guardd's log says about changes: job events and state lines (pure parts)."""

from __future__ import annotations

from guardd.core.state import ScopeStatus
from guardd.daemon.app import describe_change, job_changes


def test_job_changes_name_each_job_once_by_its_own_scope() -> None:
    """A job of shop holds default.run too: it is logged once, as shop's; a job of
    default alone as default's; ends likewise."""
    old = {"default": {1}, "shop": set()}
    new = {"default": {1, 2, 3}, "shop": {2}}
    assert job_changes(old, new) == [("started", 3, "default"), ("started", 2, "shop")]
    assert job_changes(new, old) == [("ended", 3, "default"), ("ended", 2, "shop")]
    assert job_changes(new, new) == []


def test_state_line_names_via_reason_until_by_note() -> None:
    """The state line carries everything the audit needs; off is just "off"."""
    status = ScopeStatus(
        "shop", "on", "2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z", "db", 0,
        overdue=True, via=None, by="ana@h", note="OPS-42",
    )  # fmt: skip
    assert describe_change(status) == (
        "on (reason: db; until 2026-12-01T10:00:00Z, overdue; by ana@h; note: OPS-42)"
    )
    via = ScopeStatus("blog", "draining", "t", None, None, 2, via="default")
    assert describe_change(via) == "draining (via default; jobs 2)"
    assert describe_change(ScopeStatus("x", "off", None, None, None, 0)) == "off"
