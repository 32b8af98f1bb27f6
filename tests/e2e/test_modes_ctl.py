"""Partial maintenance as the operator and cron see it: guardctl, guard-run, guardd."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers import command, free_port, running_guardd, wait_until
from tests.httpclient import get

SCOPES = {"shop": {"modes": {"checkout": {"paths": ["/checkout"]}}}}


def run(
    config: Path, name: str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command(name), *args],
        env={**os.environ, "GUARDD_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(root: Path) -> Path:
    """A config with the shop scope and its modes, no listeners, under ``root``."""
    config = root / "config.yaml"
    settings = {
        "lock_dir": str(root / "lock"),
        "runtime_dir": str(root / "run"),
        "scopes": SCOPES,
        "http": {"listen": []},
    }
    config.write_text(json.dumps(settings))
    return config


def test_on_with_a_mode_and_status_everywhere() -> None:
    """`on --mode` writes the mode; guardctl, guard-run and guardd all see maintenance."""
    port = free_port()
    with running_guardd(
        {"scopes": SCOPES, "http": {"listen": [f"127.0.0.1:{port}"], "scope": "shop"}}
    ) as guardd:
        config = guardd.config_path
        unknown = run(config, "guardctl", "on", "shop", "--mode", "nope")
        assert unknown.returncode == 2
        assert "scope shop has no mode 'nope' (its modes: checkout, read-only)" in unknown.stderr
        assert not guardd.flag("shop").exists()

        done = run(config, "guardctl", "on", "shop", "--mode", "read-only", "--reason", "db move")
        assert done.returncode == 0, done.stderr
        assert json.loads(guardd.flag("shop").read_text())["mode"] == "read-only"
        # A mode is maintenance for jobs: the check says so, a job is skipped.
        assert run(config, "guard-run", "--check", "--scope", "shop").returncode == 1
        marker = guardd.root / "ran"
        assert (
            run(config, "guard-run", "--scope", "shop", "--", "touch", str(marker)).returncode == 0
        )
        assert not marker.exists()

        def mode_seen() -> bool:
            reply = guardd.request({"op": "status"})
            return bool(reply["scopes"]["shop"]["mode"] == "read-only")

        wait_until(mode_seen)
        # Health stays 200 (warn): the node keeps serving reads.
        health = get(port, "/healthz")
        assert health.status == 200
        body: dict[str, Any] = json.loads(health.body)
        assert (body["status"], body["mode"]) == ("warn", "read-only")

        status = run(config, "guardctl", "status", "shop")
        assert "on (read-only)" in status.stdout
        as_json = json.loads(run(config, "guardctl", "status", "--json", "shop").stdout)
        assert as_json["scopes"]["shop"]["mode"] == "read-only"

        # A second `on` without --mode keeps the mode; --mode changes it.
        assert run(config, "guardctl", "on", "shop", "--reason", "longer").returncode == 0
        assert json.loads(guardd.flag("shop").read_text())["mode"] == "read-only"
        assert run(config, "guardctl", "on", "shop", "--mode", "checkout").returncode == 0
        assert json.loads(guardd.flag("shop").read_text())["mode"] == "checkout"


def test_guardctl_status_without_guardd_shows_the_mode(tmp_short: Path) -> None:
    """Read from the files, the mode is shown too; an unknown mode is full maintenance."""
    config = write_config(tmp_short)
    (tmp_short / "lock").mkdir()
    (tmp_short / "lock" / "shop.lock").write_text('{"mode": "checkout"}')
    shown = json.loads(run(config, "guardctl", "status", "--json").stdout)["scopes"]
    assert shown["shop"]["mode"] == "checkout" and shown["shop"]["state"] == "on"
    (tmp_short / "lock" / "shop.lock").write_text('{"mode": "no-such-mode"}')
    shown = json.loads(run(config, "guardctl", "status", "--json").stdout)["scopes"]
    assert shown["shop"]["mode"] is None and shown["shop"]["state"] == "on"


def test_on_with_a_mode_and_wait_drains(tmp_short: Path) -> None:
    """`on --mode M --wait` keeps the drain guarantee: it returns after the job ends."""
    config = write_config(tmp_short)
    log = tmp_short / "job.log"
    job = subprocess.Popen(
        [
            command("guard-run"),
            "--scope",
            "shop",
            "--",
            "sh",
            "-c",
            f"echo start >> {log}; sleep 1.5; echo end >> {log}",
        ],
        env={**os.environ, "GUARDD_CONFIG": str(config)},
    )
    try:
        wait_until(lambda: log.exists() and "start" in log.read_text())
        started = time.monotonic()
        drained = run(config, "guardctl", "on", "shop", "--mode", "read-only", "--wait")
        assert drained.returncode == 0, drained.stderr
        assert "end" in log.read_text()
        assert time.monotonic() - started > 0.5
    finally:
        job.wait(timeout=10)
