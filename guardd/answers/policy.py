"""Pure answers for load balancers: (scope status, policy) -> health answer, agent line.

No I/O and no clock of its own: callers pass ``now`` so that the HTTP responder can
cache what these functions return for a whole second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from guardd.core.choices import Policy, WithdrawAs
from guardd.core.state import ScopeStatus

HealthStatus = Literal["pass", "warn", "fail"]

# What HAProxy's agent-check reads as "fully in service" (state, admin state, weight).
AGENT_IN_SERVICE = "up ready 100%"
# HAProxy shows the text after '#' on its stats page; a short one is all it needs.
MAX_AGENT_REASON_CHARS = 200


@dataclass(frozen=True)
class HealthAnswer:
    """What the health path answers: HTTP status plus the health+json fields."""

    code: int
    status: HealthStatus
    # The node is in maintenance (draining or on): the answer carries Guard-Maintenance.
    maintenance: bool
    # Only 503 answers carry Retry-After: a 200 asks nobody to come back later.
    retry_after: bool
    output: str | None


def withdraws(status: ScopeStatus, policy: Policy, *, other_node_serves: bool | None) -> bool:
    """True when the node should leave the load balancer's pool.

    ``fleet`` withdraws only while another node serves; without a fleet view
    (``other_node_serves`` is None) it behaves as ``withdraw``, as the SPEC says.
    """
    if not status.in_maintenance:
        return False
    if status.partial:
        return False  # a node serving most requests stays in the pool (SPEC, modes)
    if policy == "stay":
        return False
    if policy == "fleet" and other_node_serves is not None:
        return other_node_serves
    return True


def health_answer(
    status: ScopeStatus,
    policy: Policy,
    *,
    other_node_serves: bool | None = None,
    degraded: bool = False,
) -> HealthAnswer:
    """The health path's answer for ``status`` under ``policy``.

    ``degraded`` (fleet mode with etcd unreachable) turns a "pass" into "warn": the
    answer still routes traffic, but the fleet view it rests on may be stale.
    """
    if not status.in_maintenance:
        if degraded:
            return HealthAnswer(
                code=200,
                status="warn",
                maintenance=False,
                retry_after=False,
                output="fleet view is stale: etcd unreachable",
            )
        return HealthAnswer(
            code=200, status="pass", maintenance=False, retry_after=False, output=None
        )
    mode = f", mode {status.mode}" if status.partial else ""
    output = f"in maintenance ({status.state}{mode})" + (
        f": {status.reason}" if status.reason else ""
    )
    if withdraws(status, policy, other_node_serves=other_node_serves):
        return HealthAnswer(
            code=503, status="fail", maintenance=True, retry_after=True, output=output
        )
    # Staying in the pool while in maintenance: healthy for routing, worth a look.
    return HealthAnswer(code=200, status="warn", maintenance=True, retry_after=False, output=output)


def health_body(status: ScopeStatus, answer: HealthAnswer) -> dict[str, object]:
    """The application/health+json document (draft-inadarei-api-health-check)."""
    body: dict[str, object] = {"status": answer.status}
    if answer.output is not None:
        body["output"] = answer.output
    body.update(
        {
            "scope": status.scope,
            "state": status.state,
            "maintenance": status.in_maintenance,
            "mode": status.mode,
            "reason": status.reason,
            "since": status.since,
            "until": status.until,
            "overdue": status.overdue,
        }
    )
    return body


def one_line(text: str, *, limit: int) -> str:
    """``text`` with every control character (CR, LF, NUL, DEL...) turned into a space.

    Reasons are cleaned when a flag is read; this is the last line of defence for
    anything that ends up in a header or an agent line.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:limit].strip()


def agent_line(
    status: ScopeStatus,
    policy: Policy,
    withdraw_as: WithdrawAs,
    *,
    other_node_serves: bool | None = None,
) -> str:
    """The HAProxy agent-check reply, ending in exactly one ``\\n``.

    HAProxy ignores a reply without a line end and stops reading at the first CR
    or LF, so the reason is flattened to one line.
    """
    if not withdraws(status, policy, other_node_serves=other_node_serves):
        return AGENT_IN_SERVICE + "\n"
    reason = one_line(status.reason or "", limit=MAX_AGENT_REASON_CHARS)
    return f"{withdraw_as} #{reason}\n" if reason else f"{withdraw_as}\n"


def retry_after_seconds(until: float | None, *, now: float, default: int) -> int:
    """Seconds to the expected end, rounded up; ``default`` without one or once it passed.

    An expected end in the past means the work overran: the operator's configured
    estimate is then a better hint than "0", which would invite a storm of retries.
    """
    if until is None:
        return default
    remaining = until - now
    if remaining <= 0:
        return default
    return max(1, math.ceil(remaining))
