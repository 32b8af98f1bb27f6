"""The allowed-value sets, each defined once: a Literal for the type checker and its
tuple (``get_args``) for config validation, record checks and CLI choices.

guard-run cannot afford ``typing`` at start: it keeps its own tuple of ``WhenOn``
values, typed against the Literal here and checked equal to ``WHEN_ON`` by a test.
"""

from __future__ import annotations

from typing import Literal, get_args

# A scope's state: off, on with guarded jobs still running, on and drained.
State = Literal["off", "draining", "on"]
# What the HTTP health answer says while the scope is on (http.policy).
Policy = Literal["withdraw", "stay", "fleet"]
# What the agent-check port tells HAProxy while the scope is on (agent.withdraw_as).
WithdrawAs = Literal["maint", "drain", "down"]
# What guard-run does when the scope is on (--when-on).
WhenOn = Literal["skip", "wait", "fail"]
# What ``guardctl on --wait`` does to jobs still running at the timeout (--then).
Then = Literal["wait", "term", "kill"]

STATES: tuple[State, ...] = get_args(State)
POLICIES: tuple[Policy, ...] = get_args(Policy)
WITHDRAW_AS: tuple[WithdrawAs, ...] = get_args(WithdrawAs)
WHEN_ON: tuple[WhenOn, ...] = get_args(WhenOn)
THEN: tuple[Then, ...] = get_args(Then)
