"""The effective configuration as plain data for ``--check-config``, secrets masked.

Derived from the dataclass fields, so a new config key shows up by itself. How a
value is shown follows its type: a whole number of seconds as a duration (``10m``),
a fraction as the number, tuples as lists, a ``ListenAddress`` as ``HOST:PORT``.
Two field markers in config/model.py: ``repr=False`` means a secret (shown masked),
``metadata={"octal": True}`` a file mode (``0660``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING

from guardd.config.model import Config, ListenAddress
from guardd.core.durations import format_duration

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MASK = "********"


def describe(config: Config) -> dict[str, object]:
    """The effective config as plain data, secrets masked (for --check-config)."""
    shown = _fields(config)
    shown["source"] = config.source or "(built-in defaults)"
    # Each scope's effective flag (its lock_file, else the one in lock_dir), then the
    # rest of its settings.
    shown["scopes"] = {
        name: {"flag": config.flag_path(name)}
        | {
            key: value
            for key, value in _fields(config.scopes[name]).items()
            if key not in ("name", "lock_file")
        }
        for name in sorted(config.scopes)
    }
    return shown


def _fields(obj: DataclassInstance) -> dict[str, object]:
    shown: dict[str, object] = {}
    for item in fields(obj):
        value = getattr(obj, item.name)
        if not item.repr:
            shown[item.name] = MASK if value else None
        elif item.metadata.get("octal"):
            shown[item.name] = f"0{value:o}"
        else:
            shown[item.name] = _plain(value)
    return shown


def _plain(value: object) -> object:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return format_duration(value) if value >= 1 and value.is_integer() else value
    if isinstance(value, ListenAddress):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    return str(value)
