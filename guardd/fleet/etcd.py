"""A thin layer over aetcd: endpoint failover, timeouts, and one error type.

aetcd (the etcd v3 gRPC API) works with Debian's etcd 3.4 for put/get with
revisions, leases and prefix watches, and keeps UTF-8 values intact. It is only
imported here, lazily, so guard-run and the non-fleet paths never load gRPC.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from guardd.config.model import parse_endpoint
from guardd.errors import ConfigError

log = logging.getLogger(__name__)


class EtcdUnavailable(Exception):
    """No endpoint answered (or the answer was an error)."""


@dataclass(frozen=True)
class KeyValue:
    """One key as read or watched."""

    key: bytes
    value: bytes
    mod_revision: int
    lease: int = 0  # the id of the lease the key is attached to (0: none)


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix; ``value`` is None for a delete."""

    key: bytes
    value: bytes | None
    revision: int


def _import_aetcd() -> Any:
    """The etcd client module. Its absence is a configuration error (exit 2), not an
    etcd outage: no retry or wait will mend it, installing it will."""
    try:
        import aetcd
    except ImportError:
        raise ConfigError(
            "fleet.endpoints is set but the etcd client is not installed: "
            "pip install 'guardd[fleet]' (aetcd)"
        ) from None
    return aetcd


def require_client() -> None:
    """Raise ConfigError unless the etcd client can be imported (fleet mode's check
    at start, on reload and in ``--check-config``)."""
    _import_aetcd()


class Etcd:
    """One connection at a time to the first endpoint that answers."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 3.0) -> None:
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.client: Any = None
        self.current = 0
        self.aetcd = _import_aetcd()

    async def connect(self) -> None:
        """Connect to the first endpoint (from the last good one) whose status answers."""
        errors = []
        for offset in range(len(self.endpoints)):
            index = (self.current + offset) % len(self.endpoints)
            host, port = self.endpoints[index]
            client = self.aetcd.Client(host=host, port=port, timeout=self.timeout)
            try:
                await client.connect()
                await client.status()  # the channel connects lazily: prove it answers
            except Exception as err:
                errors.append(f"{host}:{port}: {type(err).__name__}")
                await _close_quietly(client)
                continue
            self.client = client
            self.current = index
            return
        raise EtcdUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    async def close(self) -> None:
        """Drop the connection."""
        if self.client is not None:
            await _close_quietly(self.client)
            self.client = None

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.client is None:
            await self.connect()
        try:
            return await getattr(self.client, name)(*args, **kwargs)
        except Exception as err:
            await self.close()
            self.current = (self.current + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"etcd {name} failed: {type(err).__name__}: {err}") from None

    async def put(self, key: bytes, value: bytes, *, lease: Any = None) -> int:
        """Store ``value``; returns the revision of the write."""
        response = await self._call("put", key, value, lease=lease)
        return int(response.header.revision)

    async def delete(self, key: bytes) -> int:
        """Delete ``key``; returns the revision after the delete."""
        response = await self._call("delete", key)
        if response is None:  # aetcd returns None when nothing was deleted
            _, revision = await self.get_prefix(key)
            return revision
        return int(response.header.revision)

    async def put_and_read(
        self, key: bytes, value: bytes, prefixes: Sequence[bytes]
    ) -> tuple[int, list[KeyValue]]:
        """Store ``value`` and read every key under ``prefixes`` in one transaction:
        the keys as they were at the write. Returns the write's revision and the keys."""
        tx = self.aetcd.Transactions()
        reads = [tx.get(p, self.aetcd.utils.prefix_range_end(p)) for p in prefixes]
        _, responses = await self._call(
            "transaction", compare=[], success=[tx.put(key, value), *reads], failure=[]
        )
        revision = int(responses[0].response_put.header.revision)
        kvs = [
            KeyValue(kv.key, kv.value, int(kv.mod_revision))
            for response in responses[1:]
            for _, kv in response
        ]
        return revision, kvs

    async def create(self, key: bytes, value: bytes, *, lease: Any) -> KeyValue | None:
        """Put ``value`` under ``lease`` only if ``key`` is absent. None when it was
        created; else the key as it is (created by someone else)."""
        tx = self.aetcd.Transactions()
        succeeded, responses = await self._call(
            "transaction",
            compare=[tx.version(key) == 0],
            success=[tx.put(key, value, lease=lease)],
            failure=[tx.get(key)],
        )
        if succeeded:
            return None
        if not responses or not responses[0]:
            return KeyValue(key, b"", 0)  # deleted in between: the caller tries again
        _, kv = responses[0][0]
        return KeyValue(kv.key, kv.value, int(kv.mod_revision), int(kv.lease))

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store's revision at that read."""
        response = await self._call("get_prefix", prefix)
        kvs = [KeyValue(kv.key, kv.value, int(kv.mod_revision)) for kv in response]
        return kvs, int(response.header.revision)

    async def grant(self, ttl: int) -> Any:
        """A new lease of ``ttl`` seconds."""
        return await self._call("lease", ttl)

    async def revoke_id(self, lease_id: int) -> None:
        """End another process's lease by its id (its keys go with it)."""
        await self._call("revoke_lease", lease_id)

    async def refresh(self, lease: Any) -> None:
        """Keep the lease alive."""
        try:
            await lease.refresh()
        except Exception as err:
            await self.close()
            raise EtcdUnavailable(f"lease refresh failed: {type(err).__name__}") from None

    async def revoke(self, lease: Any) -> None:
        """End the lease now (its keys go with it)."""
        try:
            await lease.revoke()
        except Exception as err:
            raise EtcdUnavailable(f"lease revoke failed: {type(err).__name__}") from None

    async def watch_prefix(
        self, prefix: bytes, *, start_revision: int
    ) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` from ``start_revision`` on, until an error."""
        watch = await self._call("watch_prefix", prefix, start_revision=start_revision)
        try:
            async for event in watch:
                kind = str(getattr(event.kind, "name", event.kind))
                value = None if kind.endswith("DELETE") else bytes(event.kv.value)
                yield WatchEvent(bytes(event.kv.key), value, int(event.kv.mod_revision))
        except Exception as err:
            await self.close()
            raise EtcdUnavailable(f"etcd watch ended: {type(err).__name__}") from None
        finally:
            # Left early (a cancelled task, a loop that broke out): stop the server's
            # watch, or its events keep coming into a queue nobody reads.
            with contextlib.suppress(Exception):
                await watch.cancel()
        await self.close()
        raise EtcdUnavailable("etcd watch ended")


async def _close_quietly(client: Any) -> None:
    try:
        await client.close()
    except Exception:  # noqa: S110 - closing a broken channel may fail any way
        pass
