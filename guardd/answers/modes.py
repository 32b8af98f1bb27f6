"""Partial maintenance: which requests a mode in force stops. Pure, no I/O.

A mode matches a request when its method is one of the mode's ``methods`` and its
normalised path matches one of the mode's ``paths`` (a missing key matches every
request). Whatever cannot be known fails safe: a request whose method was not
passed on (no ``X-Original-Method``) is stopped by a mode that names methods, and
an ambiguous path (see ``unambiguous_path``) by a mode that names paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from guardd.answers.gate import unambiguous_path
from guardd.config.model import READ_ONLY, ModeConfig


@dataclass(frozen=True)
class ModeRule:
    """One mode compiled for the gate."""

    name: str
    methods: frozenset[bytes] | None
    paths: tuple[re.Pattern[str], ...] | None

    @classmethod
    def from_config(cls, name: str, mode: ModeConfig) -> ModeRule:
        """Compile a validated mode (methods upper-cased, patterns compiled once)."""
        return cls(
            name=name,
            methods=None
            if mode.methods is None
            else frozenset(method.upper().encode("ascii") for method in mode.methods),
            paths=None if mode.paths is None else tuple(re.compile(p) for p in mode.paths),
        )

    def stops(self, method: bytes | None, original_uri: bytes | None) -> bool:
        """True when this mode puts the request in maintenance."""
        if self.methods is not None and (method is None or method.upper() not in self.methods):
            return method is None  # unknown method: fail safe
        if self.paths is None:
            return True
        path = unambiguous_path(original_uri) if original_uri is not None else None
        return path is None or any(pattern.match(path) for pattern in self.paths)


def compile_modes(modes: Mapping[str, ModeConfig]) -> dict[str, ModeRule]:
    """Every mode of a scope, compiled."""
    return {name: ModeRule.from_config(name, mode) for name, mode in modes.items()}


def stops_request(
    rules: Iterable[ModeRule], method: bytes | None, original_uri: bytes | None
) -> bool:
    """True when any of the modes in force stops the request (two modes block what
    either matches)."""
    return any(rule.stops(method, original_uri) for rule in rules)


def paused_text(mode: str) -> str:
    """What a mode pauses, in words for the page: "Checkout is paused"."""
    if mode == READ_ONLY:
        return "Saving changes is paused"
    words = " and ".join(name.replace("-", " ").replace("_", " ") for name in mode.split("+"))
    return words[:1].upper() + words[1:] + " is paused"
