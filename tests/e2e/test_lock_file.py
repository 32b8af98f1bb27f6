"""SPEC "A `lock_file` belongs to its application": guardctl creates it only when absent,
removes only what it wrote (or with --force), and never follows a symlink on the way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import run_guardctl

LARAVEL_DOWN = (
    b'{"except":[],"redirect":null,"retry":60,"refresh":null,'
    b'"secret":"s3cret","status":503,"template":"<html>down</html>"}\n'
)


@pytest.fixture
def app(tmp_short: Path) -> dict[str, Any]:
    """A config whose scope blog is driven by a Laravel-style storage/framework/down."""
    down = tmp_short / "app" / "storage" / "framework" / "down"
    down.parent.mkdir(parents=True)
    config = tmp_short / "config.yaml"
    settings = {
        "lock_dir": str(tmp_short / "lock"),
        "runtime_dir": str(tmp_short / "run"),
        "node": "n",
        "http": {"listen": []},
        "scopes": {"blog": {"lock_file": str(down)}},
    }
    config.write_text(yaml.safe_dump(settings))
    return {"config": config, "down": down, "root": tmp_short}


def ctl(app: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_guardctl(app["config"], *args)


def test_on_never_rewrites_the_applications_file(app: dict[str, Any]) -> None:
    """`on` for a scope whose lock_file the app wrote leaves its bytes alone (issue 11:
    Laravel's secret, retry and template were replaced) and says it is already on."""
    app["down"].write_bytes(LARAVEL_DOWN)
    result = ctl(app, "on", "blog", "--reason", "mine")
    assert result.returncode == 0, result.stderr
    assert "already on" in result.stdout and str(app["down"]) in result.stdout
    assert app["down"].read_bytes() == LARAVEL_DOWN


def test_off_refuses_the_applications_file_unless_forced(app: dict[str, Any]) -> None:
    """`off` of an app-written lock_file exits 1 naming it and pointing at the app's own
    command; the file stays. `off --force` removes it."""
    app["down"].write_bytes(LARAVEL_DOWN)
    refused = ctl(app, "off", "blog")
    assert refused.returncode == 1
    assert str(app["down"]) in refused.stderr and "application's own command" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert app["down"].read_bytes() == LARAVEL_DOWN
    forced = ctl(app, "off", "blog", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not app["down"].exists()


def test_on_creates_marked_file_and_off_removes_it(app: dict[str, Any]) -> None:
    """Absent: `on` creates it with JSON carrying by_guardd: true (0644); `off` removes
    that one without --force."""
    result = ctl(app, "on", "blog", "--reason", "deploy")
    assert result.returncode == 0, result.stderr
    content = json.loads(app["down"].read_text())
    assert content["by_guardd"] is True and content["reason"] == "deploy"
    assert app["down"].stat().st_mode & 0o777 == 0o644
    assert not [p for p in app["down"].parent.iterdir() if p.name.endswith(".tmp")]
    again = ctl(app, "on", "blog", "--reason", "other")
    assert again.returncode == 0 and "already on" in again.stdout
    assert json.loads(app["down"].read_text())["reason"] == "deploy"
    off = ctl(app, "off", "blog")
    assert off.returncode == 0, off.stderr
    assert not app["down"].exists()


def test_never_writes_or_removes_through_a_symlinked_directory(app: dict[str, Any]) -> None:
    """A symlinked directory in the lock_file's path (pointing to a root-only directory)
    is not followed: `on` writes nothing there, `off --force` removes nothing there
    (issue 11: root overwrote / deleted a file in a root-only directory)."""
    secret = app["root"] / "root-only"
    secret.mkdir(mode=0o700)
    framework = app["down"].parent
    framework.rmdir()
    framework.symlink_to(secret)
    refused = ctl(app, "on", "blog")
    assert refused.returncode == 1
    assert "symlink" in refused.stderr and str(framework) in refused.stderr
    assert not (secret / "down").exists()
    (secret / "down").write_text("root's own file\n")
    removed = ctl(app, "off", "blog", "--force")
    assert removed.returncode == 1 and "symlink" in removed.stderr
    assert (secret / "down").read_text() == "root's own file\n"
