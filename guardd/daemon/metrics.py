"""``/metrics``: guardd's state in the Prometheus text exposition format.

The exposition (escaping, HELP/TYPE lines, the standard ``process_*`` metrics) is
prometheus-client's; the values are read from the daemon only when a scrape comes:
nothing on the request path but one list item bumped per HTTP request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardd import __version__
from guardd.answers.http.parse import ANSWER_LABELS, Kind
from guardd.core.state import ScopeStatus, until_epoch
from guardd.fleet.model import FleetView

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

STATES = ("off", "draining", "on")
# The mode label of full maintenance (a partial mode is named by its own name).
FULL_MODE = "full"


@dataclass
class MetricsSource:
    """Where the values come from: callables into the running daemon."""

    statuses: Callable[[], Mapping[str, ScopeStatus]]
    transitions: Callable[[], Mapping[tuple[str, str], int]]
    fleet: Callable[[], FleetView | None]
    http_counts: list[int]


def scope_mode(status: ScopeStatus) -> str | None:
    """The mode in force for a scope in maintenance: ``full``, or the partial mode
    ("read-only", "a+b" for two); None while off."""
    if not status.in_maintenance:
        return None
    return status.mode or FULL_MODE


class GuarddCollector:
    """A prometheus-client collector that reads the daemon at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """Every guardd series, built from the state as it is now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        statuses = self.source.statuses()
        maintenance = GaugeMetricFamily(
            "guardd_scope_maintenance",
            "1 while the scope is in maintenance (draining or on), else 0.",
            labels=["scope"],
        )
        state = GaugeMetricFamily(
            "guardd_scope_state", "The scope's state, one-hot.", labels=["scope", "state"]
        )
        mode = GaugeMetricFamily(
            "guardd_scope_mode",
            "1 for the maintenance mode in force (full: everything; else the partial "
            "mode's name); full is 0 while the scope is off.",
            labels=["scope", "mode"],
        )
        jobs = GaugeMetricFamily(
            "guardd_scope_jobs", "Guarded jobs running in the scope.", labels=["scope"]
        )
        since = GaugeMetricFamily(
            "guardd_scope_since_timestamp_seconds",
            "Unix time maintenance began (scopes in maintenance only).",
            labels=["scope"],
        )
        overdue = GaugeMetricFamily(
            "guardd_scope_overdue",
            "1 when the expected end (until) has passed and maintenance is still on.",
            labels=["scope"],
        )
        for name, status in statuses.items():
            maintenance.add_metric([name], 1.0 if status.in_maintenance else 0.0)
            for value in STATES:
                state.add_metric([name, value], 1.0 if status.state == value else 0.0)
            in_force = scope_mode(status)
            mode.add_metric([name, FULL_MODE], 1.0 if in_force == FULL_MODE else 0.0)
            if in_force is not None and in_force != FULL_MODE:
                mode.add_metric([name, in_force], 1.0)
            jobs.add_metric([name], float(status.jobs))
            began = until_epoch(status.since) if status.in_maintenance else None
            if began is not None:
                since.add_metric([name], began)
            overdue.add_metric([name], 1.0 if status.overdue else 0.0)
        yield from (maintenance, state, mode, jobs, since, overdue)

        transitions = CounterMetricFamily(
            "guardd_scope_transitions",
            "State changes of the scope since guardd started, by the state entered.",
            labels=["scope", "to"],
        )
        for (name, to), count in sorted(self.source.transitions().items()):
            transitions.add_metric([name, to], float(count))
        yield transitions

        requests = CounterMetricFamily(
            "guardd_http_requests",
            "HTTP requests answered, by the kind of answer.",
            labels=["answer"],
        )
        counts = self.source.http_counts
        for kind, label in ANSWER_LABELS.items():
            requests.add_metric([label], float(counts[kind]))
        yield requests

        view = self.source.fleet()
        connected = GaugeMetricFamily(
            "guardd_fleet_connected",
            "1 while guardd is connected to etcd (fleet mode), else 0.",
        )
        connected.add_metric([], 1.0 if view is not None and view.connected else 0.0)
        yield connected
        nodes = GaugeMetricFamily(
            "guardd_fleet_nodes",
            "Live nodes of the fleet reporting the scope in each state (fleet mode).",
            labels=["scope", "state"],
        )
        if view is not None:
            tally: dict[tuple[str, str], int] = {}
            for record in dict(view.nodes).values():  # a copy: the loop may change it
                for name, node_scope in record.scopes.items():
                    key = (name, node_scope.state)
                    tally[key] = tally.get(key, 0) + 1
            for name in sorted({name for name, _ in tally} | set(statuses)):
                for value in STATES:
                    nodes.add_metric([name, value], float(tally.get((name, value), 0)))
        yield nodes

        build = GaugeMetricFamily(
            "guardd_build_info", "guardd's version (always 1).", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build


class Metrics:
    """The registry behind /metrics: guardd's collector and the process_* metrics.

    prometheus-client is imported on the first scrape, not at start.
    """

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self.registry: CollectorRegistry | None = None

    def render(self) -> bytes:
        """The exposition text of every metric, as of now."""
        from prometheus_client import generate_latest

        if self.registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=registry)
            registry.register(GuarddCollector(self.source))
            self.registry = registry
        data: bytes = generate_latest(self.registry)
        return data


def new_counts() -> list[int]:
    """Requests per answer kind, indexed by Kind."""
    return [0] * (max(Kind) + 1)
