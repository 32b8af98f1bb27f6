"""The built package passes lintian: no error, no warning (debian/guardd.lintian-overrides
explains each tag left on purpose)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool

pytestmark = [pytest.mark.system]


def test_lintian_has_no_error_or_warning(deb: Path) -> None:
    """lintian, pedantic tags included, reports nothing that is not overridden."""
    lintian = require_tool("lintian")
    result = subprocess.run(
        [lintian, "--pedantic", "--fail-on", "error,warning,pedantic", str(deb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "P:")]
    assert (result.returncode, tags) == (0, []), result.stdout + result.stderr
