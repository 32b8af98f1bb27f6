"""guardd's side of the fleet: register this node, mirror fleet flags, keep a fleet view.

The fleet flag of a scope is mirrored into ``<lock_dir>/<scope>.fleet.lock`` so that
guard-run stays file-only; the daemon reads the mirror like any flag. While etcd is
unreachable the last view is frozen (no node is presumed dead), answers say
``warn``, and the agent reconnects with backoff, logging once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
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
    member_key,
    node_key,
    parse_key,
)

log = logging.getLogger(__name__)

BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
FLIP_GRACE = 1.0  # a node that has not applied a fleet flag yet is still flipping
FOLLOW_DELAY = 0.8 * FLIP_GRACE  # entering maintenance by a fleet flag: read then
CLAIM_POLL = 0.25  # while another holder's key is still there
PUBLISH_MIN_INTERVAL = 0.05  # coalesce bursts of local changes into one put


class NodeNameTaken(Exception):
    """Another live guardd holds this node's name in etcd."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as stream:
            return stream.read().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's process, alive
    return True


class FleetAgent:
    """Runs as one task on the daemon's loop for as long as fleet mode is on."""

    def __init__(
        self,
        *,
        config: Config,
        statuses: Callable[[], Mapping[str, ScopeStatus]],
        counted_revisions: Callable[[], Mapping[str, int]],
        mirror_written: Callable[[str], Awaitable[None]],
        view_changed: Callable[[], None],
    ) -> None:
        self.config = config
        self.prefix = config.fleet.prefix.rstrip("/")
        self.statuses = statuses
        self.counted_revisions = counted_revisions
        self.mirror_written = mirror_written
        self.view_changed = view_changed
        self.view = FleetView()
        self.fleet_flags: dict[str, bytes | None] = {}  # scope -> value (None: absent)
        self.applied: dict[str, int] = {}  # scope -> fleet flag revision applied locally
        self.flag_revisions: dict[str, int] = {}  # scope -> revision of fleet_flags[scope]
        self.flag_seen: dict[str, float] = {}  # scope -> monotonic time that revision came
        self.grace: dict[str, float] = {}  # node -> monotonic time it may be dropped
        self.dirty = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.etcd: Etcd | None = None
        self.lease: Any = None
        self.in_outage = False
        self.last_record: bytes | None = None
        self.registered = False  # this session's record is in etcd under self.lease
        # Other nodes' records matter only to the `fleet` policy, and to it only while
        # this node is in maintenance (in service it answers "up" whoever else
        # serves). Without that the watch covers the fleet flags alone, so a flip
        # costs each node O(1), not O(nodes): see _follower.
        self.follow_nodes = config.http.policy == "fleet"
        self.need_nodes = asyncio.Event()
        self.nodes_fresh = False  # following the other nodes' records right now
        self.applying = 0  # flags being applied: their records go out once, counted
        self.view_update: asyncio.Handle | None = None
        self.instance = uuid.uuid4().hex[:16]
        self.host = socket.gethostname()
        self.boot = _boot_id()
        # The first session's outcome, for the daemon's start: None once the node's
        # name is ours (or etcd did not answer: guardd starts without it); else who
        # holds the name.
        self.first_outcome: asyncio.Future[str | None] | None = None
        self.refused: str | None = None  # the holder while this node refuses fleet mode
        self.connected_once = asyncio.Event()  # etcd answered (a lease was granted)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting in the background (guardd is READY without etcd)."""
        loop = asyncio.get_running_loop()
        self.first_outcome = loop.create_future()
        self.task = loop.create_task(self._run())

    def _first(self, outcome: str | None) -> None:
        if self.first_outcome is not None and not self.first_outcome.done():
            self.first_outcome.set_result(outcome)

    async def close(self) -> None:
        """Clean stop: delete this node's key at once (revoke its lease)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.etcd is not None and self.lease is not None and self.registered:
            with contextlib.suppress(EtcdUnavailable, TimeoutError):
                await asyncio.wait_for(self._leave(self.etcd), 2.0)
        if self.etcd is not None:
            await self.etcd.close()

    async def _leave(self, etcd: Etcd) -> None:
        """A last record saying ``left`` (so that a waiting ``on --fleet --wait``
        tells a clean stop from an expired lease), then the lease goes, and the key."""
        record = replace(self.record(), scopes={}, left=True)
        await etcd.put(node_key(self.prefix, self.config.node), record.encode(), lease=self.lease)
        await etcd.delete(member_key(self.prefix, self.config.node))
        await etcd.revoke(self.lease)

    def flipping(self, scope: str) -> dict[str, int]:
        """The fleet flags on here that put ``scope`` in maintenance (its own and
        ``default``'s) and arrived within FLIP_GRACE, with their revisions: every node
        is flipping to them, so one that has not applied them yet is no reason to
        withdraw. After FLIP_GRACE such a node counts as serving again (cut off from
        etcd, it does serve): the grace bounds the time the page may hide it."""
        now = time.monotonic()
        # Under the fleet policy the grace lasts until this node follows the other
        # nodes' records again (its read may be slow: an etcd election): until then
        # what it holds of them is from before the flip, and trusting that after
        # the grace would make every node withdraw at once.
        stale = self.follow_nodes and not self.nodes_fresh
        return {
            key: self.flag_revisions[key]
            for key in (scope, "default")
            if self.fleet_flags.get(key) is not None
            and key in self.flag_revisions
            and (stale or now - self.flag_seen.get(key, 0.0) <= FLIP_GRACE)
        }

    def _flag_just_came(self) -> bool:
        now = time.monotonic()
        return any(
            self.fleet_flags.get(key) is not None and now - seen <= FLIP_GRACE
            for key, seen in self.flag_seen.items()
        )

    def local_changed(self) -> None:
        """The daemon's statuses changed: republish this node's record (after the
        flag being applied, if any, has been counted: one put per flip)."""
        if self.follow_nodes:
            self.need_nodes.set()
        if not self.applying:
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
            except NodeNameTaken as err:
                self._first(str(err))
                if self.refused != str(err):
                    log.error(
                        "node %s is held by another live guardd, %s: refusing fleet mode "
                        "(retrying with backoff)",
                        self.config.node,
                        err,
                    )
                    self.refused = str(err)
                if self.view.connected:
                    self.view.connected = False
                    self.view_changed()
            except EtcdUnavailable as err:
                self._first(None)
                if not self.in_outage:
                    log.error("etcd unreachable, keeping the last fleet view: %s", err)
                    self.in_outage = True
                if self.view.connected:
                    self.view.connected = False
                    self.view_changed()
            except Exception:
                self._first(None)
                log.exception("fleet session failed; reconnecting")
            if self.etcd is not None:
                await self.etcd.close()
            self.lease = None
            self.registered = False
            self.last_record = None
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
        self.connected_once.set()
        await self._claim()
        await self.etcd.put(
            member_key(self.prefix, self.config.node),
            json.dumps({"instance": self.instance, "host": self.host}).encode(),
        )
        if self.refused is not None:
            log.info("node %s is this guardd's again: fleet mode on", self.config.node)
            self.refused = None
        self._first(None)
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
        tasks.append(asyncio.create_task(self._follower(revision)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise what ended the session
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim(self) -> None:
        """Make this node's key ours: created only where absent, under our lease.

        Held by this process's previous session: taken over. Held by a guardd that
        died on this very host (same boot, its pid gone; a quick restart after
        SIGKILL): its lease is revoked at once. Held otherwise: wait up to one
        lease_ttl (plus a second) for a dead holder's lease to expire; a holder that
        keeps its lease alive is live, and this guardd refuses fleet mode.
        """
        assert self.etcd is not None
        key = node_key(self.prefix, self.config.node)
        deadline: float | None = None
        for _ in range(10_000):  # bounded: ends by the deadline long before
            data = self.record().encode()
            held = await self.etcd.create(key, data, lease=self.lease)
            if held is None:
                self.registered = True
                self.last_record = data
                return
            holder = decode_node(self.config.node, held.value) or NodeRecord(self.config.node, {})
            if holder.instance == self.instance:
                await self.etcd.put(key, data, lease=self.lease)
                self.registered = True
                self.last_record = data
                return
            if (
                held.lease
                and holder.host == self.host
                and holder.boot
                and holder.boot == self.boot
                and holder.pid > 0
                and not _pid_alive(holder.pid)
            ):
                log.info(
                    "node %s was held by pid %d, gone: taking the name over",
                    self.config.node,
                    holder.pid,
                )
                await self.etcd.revoke_id(held.lease)
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.config.fleet.lease_ttl + 1.0
                log.warning(
                    "node %s is held by %s: waiting up to %.0fs for its lease to expire",
                    self.config.node,
                    holder.holder(),
                    deadline - now,
                )
            if now >= deadline:
                raise NodeNameTaken(holder.holder())
            await asyncio.sleep(CLAIM_POLL)
            await self.etcd.refresh(self.lease)
        raise NodeNameTaken(holder.holder())

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
        watched = self.prefix + "/scopes/"
        async for event in self.etcd.watch_prefix(watched.encode(), start_revision=start_revision):
            parsed = parse_key(self.prefix, event.key)
            if parsed is not None and parsed[0] == "scope" and parsed[1] in self.config.scopes:
                await self._apply_flag(parsed[1], event.value, event.revision)

    def _in_maintenance(self) -> bool:
        """Whether to follow the other nodes' records now (fleet policy only; every
        node re-reads them each lease_ttl all the same, for /metrics and the view
        an outage freezes)."""
        return self.follow_nodes and any(
            status.in_maintenance for status in self.statuses().values()
        )

    async def _follower(self, revision: int) -> None:
        """Follow the other nodes' records while this node is in maintenance (the
        `fleet` policy): a read of them all, then a watch from that read on.

        Entering maintenance by a fleet flag, the read waits FOLLOW_DELAY (within
        FLIP_GRACE, while every node counts as flipping anyway), so that it finds
        the fleet's records already flipped: one read of N records instead of N
        events, per node. Back in service the watch stops.
        """
        assert self.etcd is not None
        following: asyncio.Task[None] | None = None
        read_at = revision  # the session's first read filled the view
        self.nodes_fresh = False
        try:
            while True:
                wanted = self._in_maintenance()
                if wanted and following is None:
                    if self._flag_just_came():
                        await asyncio.sleep(FOLLOW_DELAY)
                    if read_at < 0:
                        read_at = await self._read_nodes()
                    following = asyncio.create_task(self._watch_nodes(read_at + 1))
                    self.nodes_fresh = True
                    self._view_changed_soon()
                elif not wanted and following is not None:
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    following = None
                    self.nodes_fresh = False
                if not wanted:
                    read_at = -1  # the view goes stale: read again when it is wanted
                self.need_nodes.clear()
                need: asyncio.Future[Any] = asyncio.ensure_future(self.need_nodes.wait())
                waiters: set[asyncio.Future[Any]] = {need}
                if following is not None:
                    waiters.add(following)
                try:
                    # In service, a read every lease_ttl keeps the view no staler than
                    # the leases it rests on (it is what an etcd outage freezes).
                    done, _ = await asyncio.wait(
                        waiters,
                        timeout=None if following is not None else self.config.fleet.lease_ttl,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    need.cancel()
                if following is not None and following.done():
                    following.result()  # the watch ended: so does the session
                if not done and following is None:
                    await self._read_nodes()
        finally:
            self.nodes_fresh = False
            if following is not None:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)

    async def _read_nodes(self) -> int:
        """Every node's record now; returns the read's revision."""
        assert self.etcd is not None
        kvs, revision = await self.etcd.get_prefix((self.prefix + "/nodes/").encode())
        nodes: dict[str, NodeRecord] = {}
        for kv in kvs:
            parsed = parse_key(self.prefix, kv.key)
            if parsed is not None and parsed[0] == "node":
                record = decode_node(parsed[1], kv.value)
                if record is not None:
                    nodes[parsed[1]] = record
        for name in self.grace:  # kept after an outage until their grace ends
            if name not in nodes and name in self.view.nodes:
                nodes[name] = self.view.nodes[name]
        self.view.nodes = nodes
        self._view_changed_soon()
        return revision

    async def _watch_nodes(self, start_revision: int) -> None:
        assert self.etcd is not None
        watched = (self.prefix + "/nodes/").encode()
        async for event in self.etcd.watch_prefix(watched, start_revision=start_revision):
            parsed = parse_key(self.prefix, event.key)
            if parsed is None or parsed[0] != "node":
                continue
            name = parsed[1]
            self.grace.pop(name, None)
            if event.value is None:
                if self.view.nodes.pop(name, None) is not None:
                    self._view_changed_soon()
            else:
                record = decode_node(name, event.value)
                if record is not None and self.view.nodes.get(name) != record:
                    self.view.nodes[name] = record
                    self._view_changed_soon()

    def _view_changed_soon(self) -> None:
        """Tell the daemon once per burst of node events (a flip of N nodes brings N
        records to each node: one snapshot for them all, not one per record)."""
        if self.view_update is None:
            self.view_update = asyncio.get_running_loop().call_soon(self._view_changed_now)

    def _view_changed_now(self) -> None:
        self.view_update = None
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
        self.registered = True
        self.last_record = data
        self.view.nodes[self.config.node] = record

    def record(self) -> NodeRecord:
        """This node's record from the daemon's statuses.

        Each scope's revision is the fleet flag's revision that was applied (mirrored
        and read) before the job count behind ``state`` and ``jobs`` began: a record
        never claims a revision with a job count from before the flag arrived.
        """
        counted = self.counted_revisions()
        return NodeRecord(
            node=self.config.node,
            scopes={
                scope: NodeScope(state=status.state, jobs=status.jobs, revision=counted.get(scope))
                for scope, status in self.statuses().items()
            },
            instance=self.instance,
            host=self.host,
            boot=self.boot,
            pid=os.getpid(),
        )

    # ------------------------------------------------------------------ mirror

    async def _apply_flag(self, scope: str, value: bytes | None, revision: int) -> None:
        """Mirror a fleet flag into its file, let the daemon re-read it, note the revision."""
        self.fleet_flags[scope] = value
        if self.flag_revisions.get(scope) != revision:
            self.flag_revisions[scope] = revision  # known (not yet applied: see flipping)
            self.flag_seen[scope] = time.monotonic()
            asyncio.get_running_loop().call_later(FLIP_GRACE + 0.01, self.view_changed)
        await self._sync_mirror(scope)
        self.applied[scope] = revision  # on disk now: job counts from here on see it
        self.applying += 1
        try:
            await self.mirror_written(scope)
        finally:
            self.applying -= 1
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
