"""guardctl's fleet commands: straight to etcd, no daemon needed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from guardd.cli.ctl.output import print_table
from guardd.config.model import Config
from guardd.core.flag import FlagInfo, parse_flag_content
from guardd.errors import Unreachable, UsageError
from guardd.fleet.etcd import Etcd, EtcdUnavailable
from guardd.fleet.model import NodeRecord, decode_node, parse_key, pending_nodes, scope_key

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


def fleet_on(*, config: Config, scope: str, info: FlagInfo) -> int:
    """Write the fleet flag; returns the etcd revision of the write."""
    _require_fleet(config)
    value = json.dumps(info.to_json_obj(), ensure_ascii=False).encode()

    async def op(etcd: Etcd) -> int:
        return await etcd.put(scope_key(config.fleet.prefix, scope), value)

    return _run(op, config)


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


async def _read_fleet(etcd: Etcd, prefix: str) -> tuple[dict[str, NodeRecord], dict[str, FlagInfo]]:
    kvs, _ = await etcd.get_prefix((prefix.rstrip("/") + "/").encode())
    nodes: dict[str, NodeRecord] = {}
    flags: dict[str, FlagInfo] = {}
    for kv in kvs:
        parsed = parse_key(prefix, kv.key)
        if parsed is None:
            continue
        kind, name = parsed
        if kind == "node":
            record = decode_node(name, kv.value)
            if record is not None:
                nodes[name] = record
        else:
            flags[name] = parse_flag_content(kv.value, mtime=time.time())
    return nodes, flags


def fleet_wait(
    *,
    config: Config,
    scope: str,
    revision: int,
    timeout: float | None,
    on_progress: Callable[[list[str]], None],
) -> list[str]:
    """Wait until every live node reports ``scope`` on at ``revision`` or later.

    Returns the nodes still pending at the timeout (empty: all drained).
    """
    _require_fleet(config)

    async def op(etcd: Etcd) -> list[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: list[str] | None = None
        while True:
            nodes, _ = await _read_fleet(etcd, config.fleet.prefix)
            pending = pending_nodes(nodes.values(), scope, revision)
            if pending != last:
                on_progress(pending)
                last = pending
            if not pending:
                return []
            if deadline is not None and time.monotonic() >= deadline:
                return pending
            await asyncio.sleep(POLL_INTERVAL)

    return _run(op, config)


def fleet_status(*, config: Config) -> dict[str, Any]:
    """Every node's scopes and every fleet flag, as plain data."""
    _require_fleet(config)

    async def op(etcd: Etcd) -> dict[str, Any]:
        nodes, flags = await _read_fleet(etcd, config.fleet.prefix)
        return {
            "flags": {name: info.to_json_obj() for name, info in sorted(flags.items())},
            "nodes": {
                name: {
                    scope: {"state": s.state, "jobs": s.jobs, "revision": s.revision}
                    for scope, s in sorted(record.scopes.items())
                }
                for name, record in sorted(nodes.items())
            },
        }

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
