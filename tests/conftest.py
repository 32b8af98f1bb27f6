"""Fixtures shared by every test: real daemons on short temporary paths."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Guardd, short_tmp


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    """A short temporary directory (AF_UNIX paths are limited to ~107 bytes)."""
    path = short_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_guardd(tmp_short: Path) -> Iterator[Callable[..., Guardd]]:
    """Build (not start) a guardd on its own directories; every one is killed after."""
    made: list[Guardd] = []

    def factory(settings: dict[str, Any] | None = None, **kwargs: Any) -> Guardd:
        root = tmp_short / f"d{len(made)}"
        root.mkdir()
        daemon = Guardd(root, settings, **kwargs)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.close()


@pytest.fixture
def guardd(make_guardd: Callable[..., Guardd]) -> Guardd:
    """A started guardd with the default scope only and no HTTP listener."""
    return make_guardd().start()
