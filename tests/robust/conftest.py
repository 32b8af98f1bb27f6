"""Fixtures of the robustness suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.robust.support import WrappedGuardd


@pytest.fixture
def make_wrapped(tmp_short: Path) -> Iterator[Callable[..., WrappedGuardd]]:
    """Build (not start) guardds run through a command prefix; all killed after."""
    made: list[WrappedGuardd] = []

    def factory(
        settings: dict[str, Any] | None = None,
        *,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> WrappedGuardd:
        root = tmp_short / f"w{len(made)}"
        root.mkdir()
        daemon = WrappedGuardd(root, settings, prefix=prefix, env=env)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.close()
