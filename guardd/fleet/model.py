"""The fleet's data on etcd: keys, node records, and the pure questions asked of them.

Keys under ``<prefix>``: ``/nodes/<node>`` (each guardd's record, under a lease) and
``/scopes/<scope>`` (a fleet flag, the same JSON as a flag file). No etcd client
here: this module is pure, so the policy and the drain logic are tested without I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from guardd.core.paths import is_scope_name


@dataclass(frozen=True)
class NodeScope:
    """One scope as a node reports it."""

    state: str
    jobs: int
    revision: int | None  # the fleet flag's revision this node has applied (None: none)


@dataclass(frozen=True)
class NodeRecord:
    """What one guardd publishes about itself."""

    node: str
    scopes: Mapping[str, NodeScope]

    def encode(self) -> bytes:
        """The JSON stored at the node's key."""
        return json.dumps(
            {
                "node": self.node,
                "scopes": {
                    name: {"state": s.state, "jobs": s.jobs, "revision": s.revision}
                    for name, s in sorted(self.scopes.items())
                },
            },
            separators=(",", ":"),
        ).encode()


def decode_node(name: str, data: bytes) -> NodeRecord | None:
    """A node record from etcd, or None when it is not one (never raises)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    scopes_obj = obj.get("scopes") if isinstance(obj, dict) else None
    if not isinstance(scopes_obj, dict):
        return None
    scopes = {}
    for scope, item in scopes_obj.items():
        if not isinstance(item, dict) or not isinstance(scope, str):
            continue
        state = item.get("state")
        jobs = item.get("jobs")
        revision = item.get("revision")
        if state not in ("off", "draining", "on"):
            continue
        scopes[scope] = NodeScope(
            state=str(state),
            jobs=jobs if isinstance(jobs, int) and not isinstance(jobs, bool) else 0,
            revision=revision
            if isinstance(revision, int) and not isinstance(revision, bool)
            else None,
        )
    return NodeRecord(node=name, scopes=scopes)


def node_key(prefix: str, node: str) -> bytes:
    """Where a node keeps its record."""
    return f"{prefix.rstrip('/')}/nodes/{node}".encode()


def scope_key(prefix: str, scope: str) -> bytes:
    """Where a scope's fleet flag lives."""
    return f"{prefix.rstrip('/')}/scopes/{scope}".encode()


def parse_key(prefix: str, key: bytes) -> tuple[str, str] | None:
    """("node", name) or ("scope", name) for a key under ``prefix``; None otherwise."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    base = prefix.rstrip("/") + "/"
    if not text.startswith(base):
        return None
    kind, _, name = text[len(base) :].partition("/")
    if not name or "/" in name:
        return None
    if kind == "nodes":
        return ("node", name)
    if kind == "scopes" and is_scope_name(name):
        return ("scope", name)
    return None


@dataclass
class FleetView:
    """The fleet as this node last saw it."""

    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    connected: bool = False
    ever_connected: bool = False

    def others_serving(self, scope: str, me: str) -> bool | None:
        """Does another live node report ``scope`` off? None without any fleet view."""
        if not self.ever_connected:
            return None
        return any(
            name != me and record.scopes.get(scope, NodeScope("off", 0, None)).state == "off"
            for name, record in self.nodes.items()
            if scope in record.scopes
        )


def pending_nodes(nodes: Iterable[NodeRecord], scope: str, revision: int) -> list[str]:
    """Nodes that have not yet reported ``scope`` on at ``revision`` or later.

    ``guardctl on --fleet --wait`` waits for this list to be empty.
    """
    pending = []
    for record in nodes:
        status = record.scopes.get(scope)
        if status is None:
            continue  # the node does not have that scope: nothing to drain there
        if (
            status.state != "on"
            or status.jobs != 0
            or status.revision is None
            or status.revision < revision
        ):
            pending.append(record.node)
    return sorted(pending)
