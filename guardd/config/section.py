"""One mapping of the YAML configuration being checked (``Section``): typed getters
that name the key path in every error, refuse unknown keys with a "did you mean", and
the value checks they share with guardd.config.load."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from guardd.config.model import ListenAddress, ScopeConfig
from guardd.core.durations import check_duration, format_duration, parse_duration
from guardd.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")  # a default: a value of the checked type, or None
C = TypeVar("C", bound=str)  # one of an allowed-value set (core.choices)

# Statuses whose answers never carry a body (RFC 9110 15.3.5, 15.3.6, 15.4.5; 1xx are
# below the allowed range): the maintenance page cannot be sent with them.
BODYLESS_STATUSES = (204, 205, 304)


def url_path_problem(value: str) -> str | None:
    if not value.startswith("/") or any(c.isspace() for c in value):
        return "a URL path starting with '/'"
    return None


def parse_listen(value: str) -> ListenAddress:
    """``HOST:PORT``, ``[V6ADDR]:PORT`` or ``:PORT``; raises ValueError."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected [V6ADDR]:PORT")
        host, port_text = text[1:close], text[close + 2 :]
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT, [V6ADDR]:PORT or :PORT")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets: [V6ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return ListenAddress(host=host, port=int(port_text))


def kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        shown = str(value) if not isinstance(value, int) or abs(value) < 10**40 else "huge"
        return f"a number ({shown})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def where(source: str | None, message: str) -> str:
    return f"{source}: {message}" if source else message


class Section:
    """One mapping being read: tracks which keys were used, to reject the rest."""

    def __init__(self, data: object, prefix: str, source: str | None) -> None:
        self.data: Mapping[object, object] = data if isinstance(data, dict) else {}
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        shown = name if name.isprintable() and name.strip() == name and name else repr(name)
        return f"{self.prefix}.{shown}" if self.prefix else shown

    def error(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(where(self.source, f"{key}: expected {expected}, got {kind(value)}"))

    def raw(self, name: str) -> object:
        self.used.add(name)
        return self.data.get(name)

    def section(self, name: str) -> Section:
        value = self.raw(name)
        if value is not None and not isinstance(value, dict):
            raise self.error(self.key(name), "a mapping", value)
        return Section(value or {}, self.key(name), self.source)

    def finish(self) -> None:
        """Reject unknown keys, suggesting the nearest known one."""
        known = sorted(self.used)
        for name in self.data:
            if name in self.used:
                continue
            key = self.key(str(name))
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
            options = ", ".join(known)
            raise ConfigError(
                where(self.source, f"{key}: unknown key{hint}; known keys here: {options}")
            )

    def _typed(self, name: str, default: D, check: Callable[[object], T]) -> T | D:
        value = self.raw(name)
        if value is None:
            return default
        return check(value)

    def string(
        self, name: str, *, default: D, expected: str = "text", pattern: str | None = None
    ) -> str | D:
        def check(value: object) -> str:
            if isinstance(value, int) and not isinstance(value, bool) and name == "group":
                return str(value)
            if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
                raise self.error(self.key(name), expected, value)
            return value

        return self._typed(name, default, check)

    def path(self, name: str, *, default: D) -> str | D:
        def check(value: object) -> str:
            if not isinstance(value, str) or not value.startswith("/"):
                raise self.error(self.key(name), "an absolute path", value)
            return os.path.normpath(value)

        return self._typed(name, default, check)

    def readable_file(self, name: str) -> str | None:
        def check(value: object) -> str:
            if not isinstance(value, str) or not value.startswith("/"):
                raise self.error(self.key(name), "an absolute path to an HTML file", value)
            try:
                with open(value, "rb") as stream:
                    stream.read(1)
            except OSError as err:
                raise ConfigError(
                    where(self.source, f"{self.key(name)}: cannot read {value}: {err.strerror}")
                ) from None
            return value

        return self._typed(name, None, check)

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        def check(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise self.error(self.key(name), f"a whole number from {low} to {high}", value)
            return value

        return self._typed(name, default, check)

    def body_status(self, name: str, *, default: int) -> int:
        """An HTTP status whose answer carries a body (the page): 200-599 except 204,
        205 and 304, which must not have one (a body would desync keep-alive)."""

        def check(value: object) -> int:
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 200 <= value <= 599
                or value in BODYLESS_STATUSES
            ):
                raise self.error(
                    self.key(name),
                    "a whole number from 200 to 599 for a status that carries a body "
                    "(not 204, 205 or 304)",
                    value,
                )
            return value

        return self._typed(name, default, check)

    def boolean(self, name: str, *, default: bool) -> bool:
        def check(value: object) -> bool:
            if not isinstance(value, bool):
                raise self.error(self.key(name), "true or false", value)
            return value

        return self._typed(name, default, check)

    def duration(self, name: str, *, default: float, minimum: float) -> float:
        def check(value: object) -> float:
            expected = (
                f"a duration of at least {format_duration(minimum) if minimum >= 1 else minimum}"
                " and at most 100 years (45, 30s, 10m, 2h, 1h30m)"
            )
            if isinstance(value, bool):
                raise self.error(self.key(name), expected, value)
            try:
                if isinstance(value, int | float):
                    # YAML's .nan, .inf and 400-digit integers are numbers too.
                    seconds = check_duration(float(value), value)
                elif isinstance(value, str):
                    seconds = parse_duration(value)
                else:
                    raise self.error(self.key(name), expected, value)
            except (ValueError, OverflowError):
                raise self.error(self.key(name), expected, value) from None
            if seconds < minimum:
                raise self.error(self.key(name), expected, value)
            return seconds

        return self._typed(name, default, check)

    def file_mode(self, name: str, *, default: int) -> int:
        def check(value: object) -> int:
            expected = "a file mode such as 0660 (octal)"
            if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
                mode = int(value.replace("o", ""), 8)
            elif isinstance(value, int) and not isinstance(value, bool):
                mode = value
            else:
                raise self.error(self.key(name), expected, value)
            if not 0 <= mode <= 0o777:
                raise self.error(self.key(name), expected, value)
            return mode

        return self._typed(name, default, check)

    def choice(self, name: str, allowed: tuple[C, ...], *, default: C) -> C:
        def check(value: object) -> C:
            if value not in allowed:
                options = ", ".join(allowed)
                close = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    where(
                        self.source,
                        f"{self.key(name)}: expected one of {options}, got {kind(value)}{hint}",
                    )
                )
            return allowed[allowed.index(value)]  # the allowed member itself, typed C

        return self._typed(name, default, check)

    def scope(self, name: str, scopes: Mapping[str, ScopeConfig], *, default: str) -> str:
        def check(value: object) -> str:
            if not isinstance(value, str) or value not in scopes:
                known = ", ".join(sorted(scopes))
                raise self.error(self.key(name), f"a configured scope ({known})", value)
            return value

        return self._typed(name, default, check)

    def url_path(self, name: str, *, default: str) -> str:
        def check(value: object) -> str:
            problem = url_path_problem(value) if isinstance(value, str) else "a URL path"
            if problem:
                raise self.error(self.key(name), problem, value)
            return str(value)

        return self._typed(name, default, check)

    def string_list(
        self,
        name: str,
        *,
        default: tuple[str, ...],
        item_check: Callable[[str], str | None] | None = None,
    ) -> tuple[str, ...]:
        def check(value: object) -> tuple[str, ...]:
            if not isinstance(value, list):
                raise self.error(self.key(name), "a list", value)
            items = []
            for index, item in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if not isinstance(item, str):
                    raise self.error(key, "text", item)
                problem = item_check(item) if item_check else None
                if problem:
                    raise self.error(key, problem, item)
                items.append(item)
            return tuple(items)

        return self._typed(name, default, check)

    def listen(self, name: str, *, default: tuple[ListenAddress, ...]) -> tuple[ListenAddress, ...]:
        def check(value: object) -> tuple[ListenAddress, ...]:
            if isinstance(value, str):
                value = [value]  # one address written without a list
            if not isinstance(value, list):
                raise self.error(self.key(name), "a list of HOST:PORT addresses", value)
            addresses = []
            for index, item in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if not isinstance(item, str):
                    raise self.error(key, "HOST:PORT, [V6ADDR]:PORT or :PORT", item)
                try:
                    addresses.append(parse_listen(item))
                except ValueError as err:
                    raise ConfigError(where(self.source, f"{key}: {err}, got {item!r}")) from None
            return tuple(addresses)

        return self._typed(name, default, check)

    def commands(self, name: str) -> tuple[tuple[str, ...], ...]:
        def check(value: object) -> tuple[tuple[str, ...], ...]:
            expected = "a list of commands, each a list of strings (argv, no shell)"
            if not isinstance(value, list):
                raise self.error(self.key(name), expected, value)
            result = []
            for index, command in enumerate(value):
                key = f"{self.key(name)}[{index}]"
                if (
                    not isinstance(command, list)
                    or not command
                    or not all(isinstance(arg, str) for arg in command)
                ):
                    raise self.error(key, "a command as a non-empty list of strings", command)
                result.append(tuple(command))
            return tuple(result)

        return self._typed(name, (), check)


# --------------------------------------------------------------------------- showing
