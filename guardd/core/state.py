"""Scope states computed from flags and job counts. Pure: the callers do the I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from guardd.core.choices import State
from guardd.core.durations import parse_time
from guardd.core.flag import FlagInfo
from guardd.core.paths import DEFAULT_SCOPE
from guardd.core.switch import in_force

# Why a scope is on when its own flag is absent: host-wide maintenance.
Via = Literal["default"]


@dataclass(frozen=True)
class ScopeStatus:
    """Everything the SPEC's five status fields say about one scope."""

    scope: str
    state: State
    since: str | None
    until: str | None
    reason: str | None
    jobs: int
    # Partial maintenance in force (SPEC "modes"): the modes' names; empty while
    # off or in full maintenance (which beats any mode).
    modes: tuple[str, ...] = ()
    # ``until`` has passed and the flag is still there.
    overdue: bool = False
    # "default": on only because ``default`` is (the scope's own flag is absent).
    via: Via | None = None
    # Who wrote the flag in force, and the operators' internal note (never public).
    by: str | None = None
    note: str | None = None

    @property
    def in_maintenance(self) -> bool:
        """Draining counts: the flag is present, users must see the page."""
        return self.state != "off"

    @property
    def mode(self) -> str | None:
        """The mode in force as one name ("read-only", or "a+b" for two), None for full."""
        return "+".join(self.modes) if self.modes else None

    @property
    def partial(self) -> bool:
        """In maintenance for some requests only: health stays 200 (warn)."""
        return bool(self.modes)

    def fields(self) -> dict[str, object]:
        """The status reply's fields: the SPEC's five, then mode, overdue, via, by, note.

        For the control socket only (status, watch): ``note`` is internal text.
        """
        return {
            "state": self.state,
            "since": self.since,
            "until": self.until,
            "reason": self.reason,
            "jobs": self.jobs,
            "mode": self.mode,
            "overdue": self.overdue,
            "via": self.via,
            "by": self.by,
            "note": self.note,
        }


@lru_cache(maxsize=4096)
def until_epoch(until: str | None) -> float | None:
    """The Unix time of an RFC 3339 ``until``, or None when absent or unreadable.

    Cached: every publish asks again for every scope in maintenance."""
    if until is None:
        return None
    try:
        return parse_time(until).timestamp()
    except (ValueError, OverflowError):
        return None


def is_overdue(until: str | None, now: float) -> bool:
    """True once the expected end ``until`` has passed."""
    end = until_epoch(until)
    return end is not None and end <= now


def modes_in_force(flags: Iterable[FlagInfo | None], known: Collection[str]) -> tuple[str, ...]:
    """The partial modes the present ``flags`` put in force; () is full maintenance.

    Each flag in force applies: a flag without a mode, or naming a mode the scope
    does not know (fail safe), is full maintenance and beats any mode; two modes
    block what either matches.
    """
    modes: set[str] = set()
    for flag in flags:
        if flag is None:
            continue
        if flag.mode is None or flag.mode not in known:
            return ()
        modes.add(flag.mode)
    return tuple(sorted(modes))


def scope_status(
    scope: str,
    *,
    flags: Sequence[tuple[str, FlagInfo]],
    jobs: int,
    known_modes: Collection[str] = (),
    now: float = 0.0,
) -> ScopeStatus:
    """One scope's status from the flags in force for it, as (scope, flag) pairs
    (switch.in_force: its own, then default's; none: off). The first is the one whose
    reason and times are shown; each one's mode applies.

    ``now`` (Unix time) decides ``overdue``; 0 never makes a scope overdue.
    """
    source, flag = flags[0] if flags else (scope, None)
    if flag is None:
        return ScopeStatus(scope=scope, state="off", since=None, until=None, reason=None, jobs=jobs)
    return ScopeStatus(
        scope=scope,
        state="draining" if jobs > 0 else "on",
        since=flag.since,
        until=flag.until,
        reason=flag.reason,
        jobs=jobs,
        modes=modes_in_force((each for _, each in flags), known_modes),
        overdue=now > 0 and is_overdue(flag.until, now),
        via="default" if source != scope else None,
        by=flag.by,
        note=flag.note,
    )


def all_statuses(
    flags: Mapping[str, FlagInfo | None],
    jobs: Mapping[str, int],
    known_modes: Mapping[str, Collection[str]] | None = None,
    *,
    now: float = 0.0,
) -> dict[str, ScopeStatus]:
    """Every scope's status from what its own files say (None: none present), its
    job count and the names of its modes (none known: every mode is full
    maintenance). ``default`` puts every scope on: switch.in_force decides.

    ``now`` (Unix time) decides which scopes are overdue (0: none is).
    """
    return {
        scope: scope_status(
            scope,
            flags=in_force(flags, scope),
            jobs=jobs.get(scope, 0),
            known_modes=(known_modes or {}).get(scope, ()),
            now=now,
        )
        for scope in sorted(flags)
    }


def next_overdue(statuses: Mapping[str, ScopeStatus], now: float) -> float | None:
    """The earliest ``until`` after ``now`` among scopes in maintenance (when the next
    scope turns overdue), or None."""
    ends = [
        end
        for status in statuses.values()
        if status.in_maintenance and not status.overdue
        for end in [until_epoch(status.until)]
        if end is not None and end > now
    ]
    return min(ends, default=None)


def summary(statuses: Mapping[str, ScopeStatus]) -> str:
    """One line for systemd's STATUS=: what is in maintenance, and jobs left."""
    return busy_summary([s for s in statuses.values() if s.in_maintenance], len(statuses))


def busy_summary(busy: Iterable[ScopeStatus], total: int) -> str:
    """``summary`` from the scopes in maintenance alone (in scope order) and the
    number of scopes: what a daemon keeping the busy ones apart passes."""
    busy = sorted(busy, key=lambda status: status.scope)
    if not busy:
        return f"all {total} scope(s) in service"
    parts = []
    for status in busy:
        text = f"{status.scope} {status.state}"
        if status.mode is not None:
            text += f" ({status.mode})"
        if status.state == "draining":
            text += f" ({status.jobs} job{'s' if status.jobs != 1 else ''})"
        if status.overdue:
            text += " OVERDUE"
        parts.append(text)
    return "maintenance: " + ", ".join(parts)


@dataclass(frozen=True)
class ScopeView:
    """Everything one scope's load-balancer answers depend on."""

    status: ScopeStatus
    upcoming: tuple[Mapping[str, object], ...] = ()
    # Fleet policy input: another live node reports this scope off (None: no fleet view).
    other_node_serves: bool | None = None
    # Fleet mode without etcd: a health answer that would be "pass" says "warn".
    degraded: bool = False


@dataclass(frozen=True)
class Snapshot:
    """What guardd publishes to its responders on every change."""

    statuses: Mapping[str, ScopeStatus]
    upcoming: tuple[Mapping[str, object], ...] = ()
    others_serving: Mapping[str, bool] | None = None
    fleet_degraded: bool = False
    # The scopes whose status may differ from the previous snapshot's (None: any).
    # Responders rebuild the answers of these scopes only.
    changed: frozenset[str] | None = None

    def view(self, scope: str) -> ScopeView:
        """The view of one scope (off before anything is known about it).

        Upcoming windows of ``default`` are shown for every scope: they affect all.
        """
        status = self.statuses.get(scope) or ScopeStatus(
            scope=scope, state="off", since=None, until=None, reason=None, jobs=0
        )
        return ScopeView(
            status=status,
            upcoming=tuple(w for w in self.upcoming if w.get("scope") in (scope, DEFAULT_SCOPE)),
            other_node_serves=None
            if self.others_serving is None
            else self.others_serving.get(scope, False),
            degraded=self.fleet_degraded,
        )
