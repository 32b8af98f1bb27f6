"""Pure load-balancer policy: health answers, agent lines, Retry-After arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.answers.policy import (
    AGENT_IN_SERVICE,
    agent_line,
    health_answer,
    health_body,
    retry_after_seconds,
    withdraws,
)
from guardd.core.choices import Policy, State, WithdrawAs
from guardd.core.state import ScopeStatus, until_epoch


def status(state: State, reason: str | None = "work", until: str | None = None) -> ScopeStatus:
    return ScopeStatus(
        scope="shop",
        state=state,
        since=None if state == "off" else "2026-01-01T00:00:00Z",
        until=until,
        reason=None if state == "off" else reason,
        jobs=2 if state == "draining" else 0,
    )


@pytest.mark.parametrize(
    ("state", "policy", "expected"),
    [
        ("off", "withdraw", (200, "pass", False, False)),
        ("off", "stay", (200, "pass", False, False)),
        ("draining", "withdraw", (503, "fail", True, True)),
        ("on", "withdraw", (503, "fail", True, True)),
        ("draining", "stay", (200, "warn", True, False)),
        ("on", "stay", (200, "warn", True, False)),
    ],
)
def test_health_answer_table(
    state: State, policy: Policy, expected: tuple[int, str, bool, bool]
) -> None:
    """Every (state, policy) pair maps to the SPEC's code, health status, marker, Retry-After."""
    answer = health_answer(status(state), policy)
    assert (answer.code, answer.status, answer.maintenance, answer.retry_after) == expected


def test_fleet_policy_without_fleet_view_acts_as_withdraw() -> None:
    """`fleet` without a fleet view answers as `withdraw`; with one, by other nodes."""
    assert health_answer(status("on"), "fleet").code == 503
    assert health_answer(status("on"), "fleet", other_node_serves=True).code == 503
    assert health_answer(status("on"), "fleet", other_node_serves=False).code == 200
    assert not withdraws(status("off"), "fleet", other_node_serves=True)


def test_health_body_fields() -> None:
    """The health+json body names the scope, state, mode, reason, since, until and
    overdue."""
    current = status("on", reason="disk", until="2030-01-01T00:00:00Z")
    body = health_body(current, health_answer(current, "withdraw"))
    assert body == {
        "status": "fail",
        "output": "in maintenance (on): disk",
        "scope": "shop",
        "state": "on",
        "maintenance": True,
        "mode": None,
        "reason": "disk",
        "since": "2026-01-01T00:00:00Z",
        "until": "2030-01-01T00:00:00Z",
        "overdue": False,
    }
    assert "output" not in health_body(status("off"), health_answer(status("off"), "withdraw"))


@pytest.mark.parametrize(
    ("state", "policy", "withdraw_as", "line"),
    [
        ("off", "withdraw", "maint", "up ready 100%\n"),
        ("on", "withdraw", "maint", "maint #work\n"),
        ("draining", "withdraw", "drain", "drain #work\n"),
        ("on", "withdraw", "down", "down #work\n"),
        ("on", "stay", "maint", "up ready 100%\n"),
        ("on", "fleet", "maint", "maint #work\n"),
    ],
)
def test_agent_line_table(state: State, policy: Policy, withdraw_as: WithdrawAs, line: str) -> None:
    """Agent replies by state, policy and withdraw_as, as in the SPEC."""
    assert agent_line(status(state), policy, withdraw_as) == line


def test_agent_line_without_reason() -> None:
    """No reason: the bare word, without a dangling `#`."""
    assert agent_line(status("on", reason=None), "withdraw", "maint") == "maint\n"


@given(st.text())
def test_agent_line_is_always_one_line(reason: str) -> None:
    """Whatever the reason holds, the agent line has one \\n, at its end, and no CR/NUL."""
    line = agent_line(status("on", reason=reason), "withdraw", "maint")
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert "\r" not in line
    assert "\x00" not in line
    assert line.startswith("maint")
    assert line != AGENT_IN_SERVICE + "\n"


def test_retry_after_seconds() -> None:
    """Seconds to `until`, rounded up; the configured default without one or once passed."""
    assert retry_after_seconds(None, now=1000.0, default=300) == 300
    assert retry_after_seconds(1100.0, now=1000.0, default=300) == 100
    assert retry_after_seconds(1000.2, now=1000.0, default=300) == 1
    assert retry_after_seconds(1000.0, now=1000.0, default=300) == 300
    assert retry_after_seconds(900.0, now=1000.0, default=7) == 7


def test_until_epoch() -> None:
    """RFC 3339 `until` becomes a Unix time; absent or unreadable gives None."""
    assert until_epoch("1970-01-01T00:01:40Z") == 100.0
    assert until_epoch(None) is None
    assert until_epoch("soon") is None
