"""guardctl's human output for the audit fields: pure formatting of status replies and
watch events (overdue, via default, by, note)."""

from __future__ import annotations

import io
from typing import Any

from guardd.cli.ctl.output import format_event, format_status

REPLY: dict[str, dict[str, dict[str, Any]]] = {
    "scopes": {
        "default": {"state": "off", "since": None, "until": None, "reason": None, "jobs": 0},
        "shop": {
            "state": "on",
            "since": "2026-12-01T09:00:00Z",
            "until": "2026-12-01T10:00:00Z",
            "reason": "db upgrade",
            "jobs": 0,
            "overdue": True,
            "via": None,
            "by": "ana@web-1",
            "note": "OPS-42",
        },
        "blog": {
            "state": "draining",
            "since": "2026-12-01T09:30:00Z",
            "until": None,
            "reason": "host work",
            "jobs": 2,
            "overdue": False,
            "via": "default",
            "by": "bob@web-1",
            "note": None,
        },
    }
}


def test_status_table_marks_overdue_via_and_notes() -> None:
    """The table has BY; OVERDUE after the passed until; 'draining (via default)';
    notes below the table; a closing hint about overdue maintenance."""
    out = io.StringIO()
    format_status(REPLY, ["blog", "default", "shop"], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["SCOPE", "STATE", "SINCE", "UNTIL", "JOBS", "BY", "REASON"]
    assert "draining (via default)" in lines[1] and "bob@web-1" in lines[1]
    assert "2026-12-01T10:00:00Z OVERDUE" in lines[3] and "ana@web-1" in lines[3]
    assert "note (shop): OPS-42" in lines
    assert any(line.startswith("OVERDUE: ") for line in lines)


def test_watch_event_line() -> None:
    """A watch event line names the scope, state (with via), jobs, until (OVERDUE),
    reason, by and note."""
    line = format_event({"event": "state", "scope": "shop", **REPLY["scopes"]["shop"]})
    assert line == (
        "shop  on  jobs=0  until=2026-12-01T10:00:00Z OVERDUE  reason='db upgrade'  "
        "by=ana@web-1  note='OPS-42'"
    )
    via = format_event({"event": "state", "scope": "blog", **REPLY["scopes"]["blog"]})
    assert via.startswith("blog  draining (via default)  jobs=2")
    both = {**REPLY["scopes"]["blog"], "mode": "read-only"}
    assert format_event({"scope": "blog", **both}).startswith(
        "blog  draining (read-only, via default)"
    )
