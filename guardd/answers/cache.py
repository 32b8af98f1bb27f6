"""The one bounded cache of the hot paths: a dict that forgets everything when full.

Parsed request heads, Accept decisions and gate verdicts repeat a few hot keys. A
full clear is cheaper than LRU bookkeeping and refills from those keys at once;
lookups stay the plain ``dict.get`` (a C call), only insertion goes through ``put``.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """At most ``size`` entries: ``put`` into a full cache empties it first."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` under ``key`` (forgetting everything if full); returns it."""
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value
