"""The fleet's data on etcd: keys, node records, and the pure questions asked of them.

Keys under ``<prefix>``: ``/nodes/<node>`` (each guardd's record, under a lease),
``/members/<node>`` (no lease: the node has joined and not cleanly left, so a node
whose lease expired is still known) and ``/scopes/<scope>`` (a fleet flag, the
same JSON as a flag file). No etcd client
here: this module is pure, so the policy and the drain logic are tested without I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from guardd.core.choices import STATES
from guardd.core.paths import is_scope_name


@dataclass(frozen=True)
class NodeScope:
    """One scope as a node reports it."""

    state: str
    jobs: int
    revision: int | None  # the fleet flag's revision this node has applied (None: none)


@dataclass(frozen=True)
class NodeRecord:
    """What one guardd publishes about itself.

    ``instance`` tells one guardd process from another of the same name (a random id
    per start); ``host`` and ``pid`` name the holder when a second guardd asks for
    the same name. ``left``: the last record of a clean stop, put just before the
    lease is revoked, so that a waiter tells a clean leave from an expired lease.
    """

    node: str
    scopes: Mapping[str, NodeScope]
    instance: str = ""
    host: str = ""
    boot: str = ""  # the host's boot id: a pid means something only within one boot
    pid: int = 0
    left: bool = False

    def encode(self) -> bytes:
        """The JSON stored at the node's key."""
        obj: dict[str, object] = {
            "node": self.node,
            "scopes": {
                name: {"state": s.state, "jobs": s.jobs, "revision": s.revision}
                for name, s in sorted(self.scopes.items())
            },
            "instance": self.instance,
            "host": self.host,
            "boot": self.boot,
            "pid": self.pid,
        }
        if self.left:
            obj["left"] = True
        return json.dumps(obj, separators=(",", ":")).encode()

    def holder(self) -> str:
        """Who holds this node's name, for an operator."""
        where = f"pid {self.pid} on {self.host}" if self.host else "another guardd"
        return f"{where} (instance {self.instance or 'unknown'})"


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
        if state not in STATES:
            continue
        scopes[scope] = NodeScope(
            state=str(state),
            jobs=jobs if isinstance(jobs, int) and not isinstance(jobs, bool) else 0,
            revision=revision
            if isinstance(revision, int) and not isinstance(revision, bool)
            else None,
        )
    instance, host, pid, boot = (
        obj.get("instance"),
        obj.get("host"),
        obj.get("pid"),
        obj.get("boot"),
    )
    return NodeRecord(
        node=name,
        scopes=scopes,
        instance=instance if isinstance(instance, str) else "",
        host=host if isinstance(host, str) else "",
        boot=boot if isinstance(boot, str) else "",
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
        left=obj.get("left") is True,
    )


def node_key(prefix: str, node: str) -> bytes:
    """Where a node keeps its record."""
    return f"{prefix.rstrip('/')}/nodes/{node}".encode()


def member_key(prefix: str, node: str) -> bytes:
    """Where a node notes that it belongs to the fleet (until a clean leave)."""
    return f"{prefix.rstrip('/')}/members/{node}".encode()


def scope_key(prefix: str, scope: str) -> bytes:
    """Where a scope's fleet flag lives."""
    return f"{prefix.rstrip('/')}/scopes/{scope}".encode()


def parse_key(prefix: str, key: bytes) -> tuple[str, str] | None:
    """("node" | "member" | "scope", name) for a key under ``prefix``; None otherwise."""
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
    if kind == "members":
        return ("member", name)
    if kind == "scopes" and is_scope_name(name):
        return ("scope", name)
    return None


@dataclass
class FleetView:
    """The fleet as this node last saw it."""

    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    connected: bool = False
    ever_connected: bool = False

    def others_serving(
        self, scope: str, me: str, flipping: Mapping[str, int] | None = None
    ) -> bool | None:
        """Does another live node report ``scope`` off? None without any fleet view.

        ``flipping``: the fleet flags (scope -> revision) that put ``scope`` in
        maintenance here. A node that reports ``scope`` off but has not yet applied
        one of those flags is on its way into maintenance too: it does not count as
        serving. Else, when every node flips at once, each would withdraw because
        of the others' records from just before their flip, and none would serve
        (dark) until the records caught up.
        """
        if not self.ever_connected:
            return None
        for name, record in self.nodes.items():
            status = record.scopes.get(scope)
            if name == me or status is None or status.state != "off":
                continue
            if flipping and any(
                other is not None and (other.revision or 0) < revision
                for other, revision in (
                    (record.scopes.get(key), revision) for key, revision in flipping.items()
                )
            ):
                continue
            return True
        return False


def confirmed(record: NodeRecord, scope: str, revision: int) -> bool:
    """Has this node drained ``scope`` for the flag written at ``revision``?

    Yes when it does not have the scope, or reports it ``on`` with no job, counted
    at that revision or later (a node sets a scope's revision only with a job count
    started after it applied that flag).
    """
    status = record.scopes.get(scope)
    if status is None:
        return True
    return (
        status.state == "on"
        and status.jobs == 0
        and status.revision is not None
        and status.revision >= revision
    )


@dataclass
class DrainWait:
    """What ``guardctl on --fleet --wait`` knows, fed from a read at the flag's write
    and every change to the node keys after it. Pure: the CLI feeds it from etcd.

    Every node live when the flag was written is remembered, and so is every node
    that joins later. A node is done once it confirmed (for good: it drained, and the
    flag keeps it from starting jobs) or left cleanly (its last record said ``left``
    before its key went). A node whose key went without that is lost: cut off from
    etcd, it may still be starting jobs. A node that comes back is waited for again.
    """

    scope: str
    revision: int
    live: dict[str, NodeRecord] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)

    def seed(self, records: Iterable[NodeRecord], members: Iterable[str] = ()) -> None:
        """The nodes live when the flag was written, and the members (nodes that
        joined and never left cleanly): a member without a live key is lost from the
        start (its lease expired: cut off, it may be starting jobs)."""
        for record in records:
            self.put(record)
        for name in members:
            if name not in self.live:
                self.lost.add(name)

    def put(self, record: NodeRecord) -> None:
        """A node's key was written."""
        name = record.node
        self.lost.discard(name)
        if record.left:
            self.live.pop(name, None)
            self.left.add(name)
            return
        self.left.discard(name)
        self.live[name] = record
        if confirmed(record, self.scope, self.revision):
            self.confirmed.add(name)

    def delete(self, name: str) -> None:
        """A node's key went; lost unless its last record announced a clean leave."""
        if self.live.pop(name, None) is not None and name not in self.confirmed:
            self.lost.add(name)

    def pending(self) -> list[str]:
        """Live nodes that have not confirmed yet."""
        return sorted(name for name in self.live if name not in self.confirmed)

    def finished(self) -> bool:
        """Nothing more to learn: every node confirmed, left, or is lost."""
        return not self.pending()
