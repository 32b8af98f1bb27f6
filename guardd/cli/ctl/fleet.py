"""guardctl's fleet commands: straight to etcd, no daemon needed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

from guardd.cli.ctl.output import print_table
from guardd.config.model import Config
from guardd.core.flag import FlagInfo, parse_flag_content
from guardd.errors import GuardError, Unreachable, UsageError
from guardd.fleet.etcd import Etcd, EtcdUnavailable, KeyValue
from guardd.fleet.model import (
    DrainWait,
    NodeRecord,
    decode_node,
    member_key,
    parse_key,
    scope_key,
)

POLL_INTERVAL = 0.1
RETRY_FOR = 5.0  # seconds: longer than an etcd leader election, short for an operator
T = TypeVar("T")


def _require_fleet(config: Config) -> None:
    if not config.fleet.endpoints:
        raise UsageError("--fleet needs fleet.endpoints in the config (the etcd cluster)")


def _run(operation: Callable[[Etcd], Awaitable[T]], config: Config) -> T:
    """Run one fleet operation; etcd trouble becomes exit 4.

    Operations are idempotent (puts of the same flag, deletes, reads), so a failure
    is retried on the next endpoint until RETRY_FOR has passed: a cluster that just
    lost its leader answers "request timed out" until it has elected a new one.
    """

    async def body() -> T:
        deadline = time.monotonic() + RETRY_FOR
        etcd = Etcd(config.fleet.endpoints, timeout=3.0)
        try:
            while True:
                try:
                    await etcd.connect()
                    return await operation(etcd)
                except EtcdUnavailable:
                    await etcd.close()
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await etcd.close()

    try:
        return asyncio.run(body())
    except EtcdUnavailable as err:
        raise Unreachable(f"etcd is not reachable: {err}") from None


@dataclass(frozen=True)
class Written:
    """A fleet flag's write: its revision, the nodes live then, and the members
    (every node that joined and has not left cleanly, live or not)."""

    revision: int
    live: list[NodeRecord]
    members: list[str]


def fleet_on(*, config: Config, scope: str, info: FlagInfo) -> Written:
    """Write the fleet flag, reading the nodes and members in the same transaction."""
    _require_fleet(config)
    value = json.dumps(info.to_json_obj(), ensure_ascii=False).encode()
    base = config.fleet.prefix.rstrip("/")

    async def op(etcd: Etcd) -> Written:
        revision, kvs = await etcd.put_and_read(
            scope_key(config.fleet.prefix, scope),
            value,
            [f"{base}/nodes/".encode(), f"{base}/members/".encode()],
        )
        nodes, members, _ = _sort_keys(config.fleet.prefix, kvs)
        return Written(revision, list(nodes.values()), sorted(members))

    return _run(op, config)


def _nodes_prefix(prefix: str) -> bytes:
    return (prefix.rstrip("/") + "/nodes/").encode()


def _sort_keys(
    prefix: str, kvs: list[KeyValue]
) -> tuple[dict[str, NodeRecord], set[str], dict[str, FlagInfo]]:
    """Node records, member names and fleet flags among ``kvs``."""
    nodes: dict[str, NodeRecord] = {}
    members: set[str] = set()
    flags: dict[str, FlagInfo] = {}
    leaving: set[str] = set()
    for kv in kvs:
        parsed = parse_key(prefix, kv.key)
        if parsed is None:
            continue
        kind, name = parsed
        if kind == "node":
            record = decode_node(name, kv.value)
            if record is not None and record.left:
                leaving.add(name)  # a clean stop in progress: its member key goes next
            elif record is not None:
                nodes[name] = record
        elif kind == "member":
            members.add(name)
        else:
            flags[name] = parse_flag_content(kv.value, mtime=time.time())
    return nodes, members - leaving, flags


def fleet_off(*, config: Config, scope: str) -> bool:
    """Delete the fleet flag; True if it was there."""
    _require_fleet(config)

    async def op(etcd: Etcd) -> bool:
        key = scope_key(config.fleet.prefix, scope)
        kvs, _ = await etcd.get_prefix(key)
        present = any(kv.key == key for kv in kvs)
        await etcd.delete(key)
        return present

    return _run(op, config)


async def _read_fleet(
    etcd: Etcd, prefix: str
) -> tuple[dict[str, NodeRecord], set[str], dict[str, FlagInfo]]:
    kvs, _ = await etcd.get_prefix((prefix.rstrip("/") + "/").encode())
    return _sort_keys(prefix, kvs)


@dataclass(frozen=True)
class WaitResult:
    """How ``on --fleet --wait`` ended: drained when both lists are empty."""

    pending: list[str]  # live nodes that had not confirmed at the timeout
    lost: list[str]  # nodes whose lease expired without confirming


def fleet_wait(
    *,
    config: Config,
    scope: str,
    written: Written,
    timeout: float | None,
    on_progress: Callable[[list[str]], None],
) -> WaitResult:
    """Wait until every node live at the flag's write (and every one joining later)
    has reported ``scope`` on at that revision or later, or left cleanly. A member
    without a live key at the write is lost from the start.

    Follows every change to the node keys from the flag's write on (an etcd watch,
    resumed after the last revision seen when a connection breaks), so a node
    whose lease expires in between is seen to go without a clean leave: lost. Ends
    at once when only lost nodes are left (nothing more to learn), else at the
    timeout.
    """
    _require_fleet(config)
    revision = written.revision
    wait = DrainWait(scope=scope, revision=revision)
    wait.seed(written.live, written.members)
    prefix = _nodes_prefix(config.fleet.prefix)

    async def body() -> WaitResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: list[str] | None = None
        seen = revision
        etcd = Etcd(config.fleet.endpoints, timeout=3.0)
        failing_since: float | None = None

        def report() -> bool:
            nonlocal last
            pending = wait.pending()
            if pending != last:
                on_progress(pending)
                last = pending
            return wait.finished()

        try:
            while not report():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        async for event in etcd.watch_prefix(prefix, start_revision=seen + 1):
                            failing_since = None
                            seen = max(seen, event.revision)
                            parsed = parse_key(config.fleet.prefix, event.key)
                            if parsed is None or parsed[0] != "node":
                                continue
                            if event.value is None:
                                wait.delete(parsed[1])
                            else:
                                record = decode_node(parsed[1], event.value)
                                if record is not None:
                                    wait.put(record)
                            if report():
                                break
                except TimeoutError:
                    break
                except EtcdUnavailable:
                    now = time.monotonic()
                    failing_since = failing_since if failing_since is not None else now
                    if now - failing_since >= RETRY_FOR:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await etcd.close()
        return WaitResult(pending=wait.pending(), lost=sorted(wait.lost))

    try:
        return asyncio.run(body())
    except EtcdUnavailable as err:
        raise Unreachable(f"etcd is not reachable: {err}") from None


def fleet_status(*, config: Config) -> dict[str, Any]:
    """Every node's scopes and every fleet flag, as plain data."""
    _require_fleet(config)

    async def op(etcd: Etcd) -> dict[str, Any]:
        nodes, members, flags = await _read_fleet(etcd, config.fleet.prefix)
        return {
            "flags": {name: info.to_json_obj() for name, info in sorted(flags.items())},
            "lost": sorted(members - set(nodes)),
            "nodes": {
                name: {
                    scope: {"state": s.state, "jobs": s.jobs, "revision": s.revision}
                    for scope, s in sorted(record.scopes.items())
                }
                for name, record in sorted(nodes.items())
            },
        }

    return _run(op, config)


def fleet_forget(*, config: Config, node: str) -> bool:
    """Drop a member whose key is gone (a decommissioned node that never left
    cleanly); True if it was a member. A live node is refused."""
    if not config.fleet.endpoints:
        raise UsageError("forget needs fleet.endpoints in the config (the etcd cluster)")

    async def op(etcd: Etcd) -> bool:
        nodes, members, _ = await _read_fleet(etcd, config.fleet.prefix)
        if node in nodes:
            raise GuardError(f"node {node} is live: stop its guardd (a clean stop leaves)")
        await etcd.delete(member_key(config.fleet.prefix, node))
        return node in members

    return _run(op, config)


def format_fleet(data: dict[str, Any], out: TextIO) -> None:
    """Human view of fleet_status."""
    flags = data["flags"]
    if flags:
        for scope, info in flags.items():
            reason = f" ({info['reason']})" if info.get("reason") else ""
            out.write(f"fleet flag: {scope} on since {info.get('since')}{reason}\n")
    else:
        out.write("no fleet flags\n")
    if data.get("lost"):
        out.write(
            "lost (joined, never left cleanly, no live key; `guardctl forget NODE` once "
            f"decommissioned): {', '.join(data['lost'])}\n"
        )
    if not data["nodes"]:
        out.write("no live nodes\n")
        return
    rows = [["NODE", "SCOPE", "STATE", "JOBS", "REVISION"]]
    for node, scopes in data["nodes"].items():
        for scope, fields in scopes.items():
            rows.append(
                [
                    node,
                    scope,
                    str(fields["state"]),
                    str(fields["jobs"]),
                    str(fields["revision"] if fields["revision"] is not None else "-"),
                ]
            )
    print_table(rows, out)
