"""guardd's side of the fleet: register this node, mirror fleet flags, keep a fleet view.

The fleet flag of a scope is mirrored into ``<lock_dir>/<scope>.fleet.lock`` so that
guard-run stays file-only; the daemon reads the mirror like any flag. While etcd is
unreachable the last view is frozen (no node is presumed dead), answers say
``warn``, and the agent reconnects with backoff, logging once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from guardd.config.model import Config
from guardd.core.flag import parse_flag_content, read_flag, remove_flag, write_flag
from guardd.core.paths import fleet_flag_path
from guardd.core.state import ScopeStatus
from guardd.fleet.etcd import Etcd, EtcdUnavailable, KeyValue
from guardd.fleet.model import (
    FleetView,
    NodeRecord,
    NodeScope,
    decode_node,
    node_key,
    parse_key,
)

log = logging.getLogger(__name__)

BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
PUBLISH_MIN_INTERVAL = 0.05  # coalesce bursts of local changes into one put


class FleetAgent:
    """Runs as one task on the daemon's loop for as long as fleet mode is on."""

    def __init__(
        self,
        *,
        config: Config,
        statuses: Callable[[], Mapping[str, ScopeStatus]],
        mirror_written: Callable[[str], Awaitable[None]],
        view_changed: Callable[[], None],
    ) -> None:
        self.config = config
        self.prefix = config.fleet.prefix.rstrip("/")
        self.statuses = statuses
        self.mirror_written = mirror_written
        self.view_changed = view_changed
        self.view = FleetView()
        self.fleet_flags: dict[str, bytes | None] = {}  # scope -> value (None: absent)
        self.applied: dict[str, int] = {}  # scope -> fleet flag revision applied locally
        self.grace: dict[str, float] = {}  # node -> monotonic time it may be dropped
        self.dirty = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.etcd: Etcd | None = None
        self.lease: Any = None
        self.in_outage = False
        self.last_record: bytes | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting in the background (guardd is READY without etcd)."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Clean stop: delete this node's key at once (revoke its lease)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.etcd is not None and self.lease is not None:
            with contextlib.suppress(EtcdUnavailable, TimeoutError):
                await asyncio.wait_for(self.etcd.revoke(self.lease), 2.0)
        if self.etcd is not None:
            await self.etcd.close()

    def local_changed(self) -> None:
        """The daemon's statuses changed: republish this node's record."""
        self.dirty.set()

    def mirror_touched(self, scope: str) -> None:
        """The mirror file changed on disk: restore it if it no longer matches etcd."""
        if scope in self.fleet_flags:
            asyncio.get_running_loop().create_task(self._sync_mirror(scope))

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        delay = BACKOFF_START
        while True:
            try:
                await self._session()
            except EtcdUnavailable as err:
                if not self.in_outage:
                    log.error("etcd unreachable, keeping the last fleet view: %s", err)
                    self.in_outage = True
                if self.view.connected:
                    self.view.connected = False
                    self.view_changed()
            except Exception:
                log.exception("fleet session failed; reconnecting")
            if self.etcd is not None:
                await self.etcd.close()
            self.lease = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            if self.view.connected:  # a session that got going resets the backoff
                delay = BACKOFF_START

    async def _session(self) -> None:
        self.etcd = Etcd(
            self.config.fleet.endpoints, timeout=max(1.0, self.config.fleet.lease_ttl / 3)
        )
        await self.etcd.connect()
        ttl = max(2, round(self.config.fleet.lease_ttl))
        self.lease = await self.etcd.grant(ttl)
        kvs, revision = await self.etcd.get_prefix((self.prefix + "/").encode())
        await self._load(kvs, revision)
        await self._publish()
        if self.in_outage:
            log.info("etcd reachable again")
        self.in_outage = False
        self.view.connected = True
        self.view.ever_connected = True
        self.view_changed()
        tasks = [
            asyncio.create_task(self._keepalive(ttl)),
            asyncio.create_task(self._watch(revision + 1)),
            asyncio.create_task(self._publisher()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise what ended the session
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self, kvs: list[KeyValue], revision: int) -> None:
        """Apply a full read: fleet flags of our scopes, and every node's record."""
        flags: dict[str, bytes | None] = dict.fromkeys(self.config.scopes)
        nodes: dict[str, NodeRecord] = {}
        for kv in kvs:
            parsed = parse_key(self.prefix, kv.key)
            if parsed is None:
                continue
            kind, name = parsed
            if kind == "scope" and name in flags:
                flags[name] = kv.value
            elif kind == "node":
                record = decode_node(name, kv.value)
                if record is not None:
                    nodes[name] = record
        # Nodes we knew that are missing now may only have lost their lease during
        # the outage: keep them for one lease_ttl before believing they are gone.
        deadline = time.monotonic() + self.config.fleet.lease_ttl
        for name, record in self.view.nodes.items():
            if name not in nodes and name != self.config.node:
                nodes[name] = record
                self.grace[name] = deadline
        if self.grace:
            asyncio.get_running_loop().call_later(
                self.config.fleet.lease_ttl + 0.05, self._prune_grace
            )
        self.view.nodes = nodes
        for scope, value in flags.items():
            await self._apply_flag(scope, value, revision)

    def _prune_grace(self) -> None:
        now = time.monotonic()
        expired = [name for name, deadline in self.grace.items() if deadline <= now]
        for name in expired:
            del self.grace[name]
            self.view.nodes.pop(name, None)
        if expired:
            self.view_changed()

    async def _watch(self, start_revision: int) -> None:
        assert self.etcd is not None
        async for event in self.etcd.watch_prefix(
            (self.prefix + "/").encode(), start_revision=start_revision
        ):
            parsed = parse_key(self.prefix, event.key)
            if parsed is None:
                continue
            kind, name = parsed
            if kind == "scope":
                if name in self.config.scopes:
                    await self._apply_flag(name, event.value, event.revision)
                continue
            self.grace.pop(name, None)
            if event.value is None:
                if self.view.nodes.pop(name, None) is not None:
                    self.view_changed()
            else:
                record = decode_node(name, event.value)
                if record is not None and self.view.nodes.get(name) != record:
                    self.view.nodes[name] = record
                    self.view_changed()

    async def _keepalive(self, ttl: int) -> None:
        assert self.etcd is not None
        while True:
            await asyncio.sleep(ttl / 3)
            await asyncio.wait_for(self.etcd.refresh(self.lease), ttl / 3)

    async def _publisher(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            await self._publish()
            await asyncio.sleep(PUBLISH_MIN_INTERVAL)

    async def _publish(self) -> None:
        """Put this node's record (only when it changed)."""
        assert self.etcd is not None
        record = self.record()
        data = record.encode()
        if data == self.last_record:
            return
        await self.etcd.put(node_key(self.prefix, self.config.node), data, lease=self.lease)
        self.last_record = data
        self.view.nodes[self.config.node] = record

    def record(self) -> NodeRecord:
        """This node's record from the daemon's statuses and applied revisions."""
        return NodeRecord(
            node=self.config.node,
            scopes={
                scope: NodeScope(
                    state=status.state, jobs=status.jobs, revision=self.applied.get(scope)
                )
                for scope, status in self.statuses().items()
            },
        )

    # ------------------------------------------------------------------ mirror

    async def _apply_flag(self, scope: str, value: bytes | None, revision: int) -> None:
        """Mirror a fleet flag into its file, let the daemon re-read it, note the revision."""
        self.fleet_flags[scope] = value
        await self._sync_mirror(scope)
        await self.mirror_written(scope)
        if self.applied.get(scope) != revision:
            self.applied[scope] = revision
            self.dirty.set()

    async def _sync_mirror(self, scope: str) -> None:
        value = self.fleet_flags.get(scope)
        path = fleet_flag_path(self.config.lock_dir, scope)
        try:
            await asyncio.to_thread(_write_mirror, path, value)
        except OSError as err:
            log.error("cannot mirror the fleet flag of %s into %s: %s", scope, path, err.strerror)


def _write_mirror(path: str, value: bytes | None) -> None:
    """Make the mirror file match the fleet flag (no write when it already does)."""
    if value is None:
        remove_flag(path)
        return
    wanted = parse_flag_content(value, mtime=time.time())
    current = read_flag(path)
    if current is not None and (current.reason, current.until, current.by) == (
        wanted.reason,
        wanted.until,
        wanted.by,
    ):
        return
    write_flag(path, wanted)
