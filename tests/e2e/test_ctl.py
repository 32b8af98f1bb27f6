"""guardctl as an operator runs it: with and without guardd, good and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import Guardd, command, run_guardctl, wait_until

MakeGuardd = Callable[..., Guardd]


@pytest.fixture
def setup(tmp_short: Path) -> dict[str, Any]:
    """A config with two scopes, no daemon running."""
    config = {
        "lock_dir": str(tmp_short / "lock"),
        "runtime_dir": str(tmp_short / "run"),
        "node": "ctl-node",
        "scopes": {"shop": None, "blog": {"lock_file": str(tmp_short / "blog" / "down")}},
        "http": {"listen": []},
    }
    path = tmp_short / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": path, "root": tmp_short, **config}


def ctl(setup: dict[str, Any], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_guardctl(setup["config"], *args, timeout=timeout)


def test_on_off_without_daemon(setup: dict[str, Any]) -> None:
    """on writes the flag (JSON, 0644), off removes it; both work with no daemon."""
    result = ctl(setup, "on", "shop", "--reason", "db move", "--until", "2099-01-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    flag = Path(setup["lock_dir"]) / "shop.lock"
    content = json.loads(flag.read_text())
    assert content["reason"] == "db move"
    assert content["until"] == "2099-01-01T00:00:00Z"
    assert content["since"] and "@" in content["by"]
    assert flag.stat().st_mode & 0o777 == 0o644
    # The run locks of configured scopes are created too, readable by everyone.
    for scope in ("default", "shop", "blog"):
        assert (Path(setup["runtime_dir"]) / f"{scope}.run").stat().st_mode & 0o777 == 0o644
    assert ctl(setup, "off", "shop").returncode == 0
    assert not flag.exists()
    again = ctl(setup, "off", "shop")
    assert again.returncode == 0 and "was not in maintenance" in again.stdout


def test_on_keeps_since_when_already_on(setup: dict[str, Any]) -> None:
    """A second `on` updates the reason but keeps when maintenance began."""
    assert ctl(setup, "on", "shop", "--reason", "one").returncode == 0
    flag = Path(setup["lock_dir"]) / "shop.lock"
    since = json.loads(flag.read_text())["since"]
    time.sleep(1.1)
    assert ctl(setup, "on", "shop", "--reason", "two").returncode == 0
    content = json.loads(flag.read_text())
    assert (content["reason"], content["since"]) == ("two", since)


def test_own_lock_file_is_written_in_a_new_directory(setup: dict[str, Any]) -> None:
    """A scope's own lock_file is written where configured, its directory created."""
    assert ctl(setup, "on", "blog").returncode == 0
    assert (Path(setup["root"]) / "blog" / "down").exists()


def test_status_without_daemon_reads_files(setup: dict[str, Any]) -> None:
    """status works with guardd down, says so, and --json has every scope's five fields
    plus overdue, via, by and note."""
    ctl(setup, "on", "shop", "--reason", "x", "--for", "1h30m")
    result = ctl(setup, "status")
    assert result.returncode == 0
    assert "guardd is not running" in result.stdout
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:4]}
    assert lines["shop"][1] == "on" and lines["default"][1] == "off"
    data = json.loads(ctl(setup, "status", "--json").stdout)
    assert data["source"] == "files" and data["node"] == "ctl-node"
    assert set(data["scopes"]) == {"default", "shop", "blog"}
    for fields in data["scopes"].values():
        assert set(fields) >= {"state", "since", "until", "reason", "jobs", "mode"}
        assert {"overdue", "via", "by", "note"} <= set(fields)
    assert data["scopes"]["shop"]["until"] is not None
    only = json.loads(ctl(setup, "status", "--json", "shop").stdout)
    assert list(only["scopes"]) == ["shop"]


def test_default_on_means_every_scope_on(setup: dict[str, Any]) -> None:
    """With default on, every scope reports on; off of a named scope says default stays."""
    ctl(setup, "on", "--reason", "host reboot")
    data = json.loads(ctl(setup, "status", "--json").stdout)
    assert {f["state"] for f in data["scopes"].values()} == {"on"}
    result = ctl(setup, "off", "shop")
    assert "'default' is still on" in result.stdout


def test_status_prefers_the_running_daemon(make_guardd: MakeGuardd) -> None:
    """With guardd running, status comes from it (source guardd)."""
    daemon = make_guardd().start()
    env = {**os.environ, "GUARDD_CONFIG": str(daemon.config_path)}
    result = subprocess.run(
        [command("guardctl"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(result.stdout)["source"] == "guardd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("on", "nope"), "unknown scope 'nope' (configured scopes: blog, default, shop)"),
        (("off", "nope"), "unknown scope 'nope'"),
        (("jobs", "nope"), "unknown scope 'nope'"),
        (("status", "nope"), "unknown scope 'nope'"),
        (("on", "--until", "2001-01-01T00:00:00Z"), "is in the past"),
        (("on", "--until", "tomorrow"), "--until: 'tomorrow' is not an RFC 3339 time"),
        (("on", "--for", "soon"), "is not a duration"),
        (("on", "--for", "1h", "--until", "2099-01-01T00:00:00Z"), "not both"),
        (("on", "--timeout", "5"), "only go with --wait"),
        (("on", "--wait", "--then", "explode"), "invalid choice: 'explode'"),
        (("frobnicate",), "invalid choice"),
        (("on", "--for", "-5m"), "argument --for: '-5m' is negative"),
        (("on", "--for", "0"), "--for must be longer than 0s"),
    ],
)
def test_usage_errors_are_exit_2_one_line(
    setup: dict[str, Any], args: tuple[str, ...], message: str
) -> None:
    """Usage errors: exit 2, one line on stderr naming the problem, nothing written."""
    result = ctl(setup, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (
        not any(Path(setup["lock_dir"]).glob("*.lock"))
        if Path(setup["lock_dir"]).exists()
        else True
    )


def test_bad_config_is_exit_2(setup: dict[str, Any]) -> None:
    """A broken config file: exit 2 with the key path."""
    Path(setup["config"]).write_text("scopes: {shop: {lok_file: /x}}\n")
    result = ctl(setup, "status")
    assert result.returncode == 2
    assert (
        "scopes.shop.lok_file: unknown key (did you mean 'scopes.shop.lock_file'?)" in result.stderr
    )


def test_unwritable_lock_dir_is_exit_1(setup: dict[str, Any]) -> None:
    """A flag that cannot be written: exit 1, one clear line naming the path."""
    Path(setup["lock_dir"]).parent.mkdir(parents=True, exist_ok=True)
    Path(setup["lock_dir"]).write_text("a file where the directory should be")
    result = ctl(setup, "on", "shop")
    assert result.returncode == 1
    assert f"cannot write {setup['lock_dir']}/shop.lock" in result.stderr
    assert result.stderr.count("\n") == 1


def test_watch_without_daemon_is_exit_4(setup: dict[str, Any]) -> None:
    """watch needs guardd: exit 4 with one line when it is not running."""
    result = ctl(setup, "watch")
    assert result.returncode == 4
    assert "guardd is not reachable" in result.stderr


def test_watch_streams_and_reconnects_when_guardd_restarts(make_guardd: MakeGuardd) -> None:
    """watch --json prints the status, then each change; when guardd stops it says so
    in one line, reconnects once guardd is back, shows the state anew and goes on."""
    daemon = make_guardd().start()
    env = {**os.environ, "GUARDD_CONFIG": str(daemon.config_path)}
    watcher = subprocess.Popen(
        [command("guardctl"), "watch", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        assert first["scopes"]["default"]["state"] == "off"
        daemon.flag().write_text("reindex\n")
        event = json.loads(watcher.stdout.readline())
        assert (event["event"], event["state"], event["reason"]) == ("state", "on", "reindex")
        daemon.stop()
        lost = json.loads(watcher.stdout.readline())
        assert lost["event"] == "disconnected" and "guardd closed the connection" in lost["error"]
        assert watcher.poll() is None  # still running, waiting for guardd
        daemon.start()
        assert json.loads(watcher.stdout.readline()) == {"event": "reconnected"}
        again = json.loads(watcher.stdout.readline())
        assert again["ok"] is True and again["scopes"]["default"]["state"] == "on"
        daemon.flag().unlink()
        event = json.loads(watcher.stdout.readline())
        assert (event["event"], event["scope"], event["state"]) == ("state", "default", "off")
    finally:
        watcher.kill()
        watcher.communicate()


def test_watch_exits_4_when_guardd_is_not_running_at_start(setup: dict[str, Any]) -> None:
    """watch with no guardd to reach at all: exit 4 at once with one line."""
    result = ctl(setup, "watch", timeout=10)
    assert result.returncode == 4
    assert result.stderr.startswith("guardctl: guardd is not reachable on ")
    assert result.stderr.count("\n") == 1


def test_jobs_lists_lock_holders_without_registration(setup: dict[str, Any]) -> None:
    """jobs finds a process holding a run lock: pid, scope, start time, command line."""
    assert ctl(setup, "on", "blog").returncode == 0  # creates the run locks
    ctl(setup, "off", "blog")
    run_lock = Path(setup["runtime_dir"]) / "shop.run"
    holder = subprocess.Popen(["flock", "-s", str(run_lock), "sleep", "30"], start_new_session=True)
    try:
        found = wait_until(
            lambda: json.loads(ctl(setup, "jobs", "--json").stdout)["jobs"], what="a job listed"
        )
        pids = {job["pid"] for job in found}
        assert holder.pid in pids
        job = next(j for j in found if j["pid"] == holder.pid)
        assert job["scope"] == "shop" and job["cmd"][0] == "flock" and job["started"]
        assert json.loads(ctl(setup, "jobs", "--json", "blog").stdout) == {"jobs": []}
        text = ctl(setup, "jobs").stdout
        assert str(holder.pid) in text and "PID" in text
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert ctl(setup, "jobs").stdout.strip() == "no guarded jobs running"


def test_flag_with_mtime_out_of_range(setup: dict[str, Any]) -> None:
    """A flag whose mtime is past year 9999 (`touch -d @300000000000` on tmpfs) is on with
    since null for `status`, and `on`/`off` work on it (issue 11: both crashed)."""
    from tests.robust.support import tmpfs

    lock_dir = Path(setup["lock_dir"])
    with tmpfs(lock_dir):
        flag = lock_dir / "shop.lock"
        flag.write_text("")
        os.utime(flag, (3e11, 3e11))
        assert flag.stat().st_mtime == 3e11  # kept: tmpfs does not clamp it
        result = ctl(setup, "status", "--json", "shop")
        assert result.returncode == 0, result.stderr
        fields = json.loads(result.stdout)["scopes"]["shop"]
        assert (fields["state"], fields["since"]) == ("on", None)
        human = ctl(setup, "status")
        assert human.returncode == 0 and "Traceback" not in human.stderr
        turned = ctl(setup, "on", "shop", "--reason", "again")
        assert turned.returncode == 0, turned.stderr
        assert json.loads(flag.read_text())["since"] is not None
        assert ctl(setup, "off", "shop").returncode == 0
        assert not flag.exists()
