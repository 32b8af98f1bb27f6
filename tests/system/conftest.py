"""The package under test, built once per session for the system tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def deb() -> Path:
    """dist/guardd_<version>_all.deb: $GUARDD_DEB when given, else packaging/build-deb."""
    given = os.environ.get("GUARDD_DEB")
    if given:
        return Path(given)
    for tool in ("dpkg-buildpackage", "dh", "dh_python3", "help2man"):
        require_tool(tool)
    out = subprocess.run(
        [str(REPO / "packaging" / "build-deb")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return REPO / out.split()[0]
