"""An operator always knows what the system is doing: who switched a scope and why
(by, note), overdue maintenance, scopes on through default, job events in the log,
honest warnings, and help that answers questions. Real guardd, guardctl, guard-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardd.core.durations import format_time
from tests.helpers import Guardd, command, free_port, wait_until
from tests.httpclient import get, wait_for_state, wait_listening, write_flag

MakeGuardd = Callable[..., Guardd]
NOTE = "internal: ticket OPS-42, call Ana before ending"


def guardctl(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """guardctl ARGS against ``config``."""
    return subprocess.run(
        [command("guardctl"), *args],
        env={**os.environ, "GUARDD_CONFIG": str(config), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def agent_line(port: int) -> str:
    """What the agent-check port answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.decode()


class Site:
    """A running guardd with scopes default, shop and blog, HTTP and agent listeners."""

    def __init__(self, daemon: Guardd, http_port: int, agent_port: int) -> None:
        self.daemon = daemon
        self.http_port = http_port
        self.agent_port = agent_port

    def ctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return guardctl(self.daemon.config_path, *args, **kwargs)

    def status(self) -> dict[str, Any]:
        result = self.ctl("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@pytest.fixture
def site(make_guardd: MakeGuardd) -> Site:
    """guardd serving HTTP (for scope shop) and the agent port (for shop)."""
    http_port, agent_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "scopes": {"shop": None, "blog": None},
            "http": {"listen": [f"127.0.0.1:{http_port}"], "scope": "shop"},
            "agent": {"listen": [f"127.0.0.1:{agent_port}"], "scope": "shop"},
        }
    ).start()
    wait_listening(http_port)
    return Site(daemon, http_port, agent_port)


@pytest.fixture
def watcher(site: Site) -> Iterator[subprocess.Popen[str]]:
    """guardctl watch --json, reading from the start."""
    process = subprocess.Popen(
        [command("guardctl"), "watch", "--json"],
        env={**os.environ, "GUARDD_CONFIG": str(site.daemon.config_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    json.loads(process.stdout.readline())  # the initial status
    yield process
    process.kill()
    process.communicate()


def next_event(process: subprocess.Popen[str], scope: str) -> dict[str, Any]:
    """The next watch event about ``scope``."""
    assert process.stdout is not None
    while True:
        event: dict[str, Any] = json.loads(process.stdout.readline())
        if event.get("scope") == scope:
            return event


# --------------------------------------------------------------------------- by, note


def test_note_and_by_reach_status_watch_and_log_but_never_the_public(
    site: Site, watcher: subprocess.Popen[str]
) -> None:
    """`on --note` with SUDO_USER: by (the sudo user) and the note show in status (human
    and JSON), the watch event and guardd's log line; the page, /maintenance.json, the
    health body, the page JSON and the agent line carry the reason but never the note."""
    result = site.ctl(
        "on", "shop", "--reason", "Database upgrade", "--note", NOTE, env={"SUDO_USER": "ana"}
    )
    assert result.returncode == 0, result.stderr
    assert "by ana@" in result.stdout
    event = next_event(watcher, "shop")
    assert event["by"].startswith("ana@") and event["note"] == NOTE
    fields = site.status()["scopes"]["shop"]
    assert fields["by"].startswith("ana@") and fields["note"] == NOTE
    human = site.ctl("status").stdout
    assert "ana@" in human and f"note (shop): {NOTE}" in human
    wait_until(lambda: "note: " + NOTE in site.daemon.log(), what="the log line with the note")
    line = next(line for line in site.daemon.log().splitlines() if NOTE in line)
    assert "scope shop: on" in line and "by ana@" in line and "Database upgrade" in line

    wait_for_state(site.http_port, "on")
    public = [
        get(site.http_port, "/").text,
        get(site.http_port, "/maintenance.json").text,
        get(site.http_port, "/healthz").text,
        get(site.http_port, "/api/x", headers={"Accept": "application/json"}).text,
        agent_line(site.agent_port),
    ]
    assert all("Database upgrade" in answer for answer in public)
    for answer in public:
        assert "OPS-42" not in answer and "ana" not in answer


def test_on_again_keeps_since_until_reason_and_note(site: Site) -> None:
    """`on S` over a scope already on keeps since, until, reason and note unless given
    again; what is given again replaces the old value; by is whoever asked last."""
    first = site.ctl("on", "shop", "--reason", "one", "--for", "2h", "--note", NOTE)
    assert first.returncode == 0, first.stderr
    before = json.loads(site.daemon.flag("shop").read_text())
    time.sleep(1.1)
    assert site.ctl("on", "shop", env={"SUDO_USER": "bob"}).returncode == 0
    after = json.loads(site.daemon.flag("shop").read_text())
    assert {k: after[k] for k in ("since", "until", "reason", "note")} == {
        k: before[k] for k in ("since", "until", "reason", "note")
    }
    assert after["by"].startswith("bob@")
    assert site.ctl("on", "shop", "--reason", "two").returncode == 0
    again = json.loads(site.daemon.flag("shop").read_text())
    assert (again["reason"], again["until"], again["since"]) == (
        "two",
        before["until"],
        before["since"],
    )


# --------------------------------------------------------------------------- overdue


def test_overdue_is_said_everywhere(site: Site, watcher: subprocess.Popen[str]) -> None:
    """Once `until` passes with the flag still there: a watch event with overdue true,
    overdue in the status reply, /maintenance.json, the health body and the page JSON;
    status marks it; the page says the work takes longer instead of a past time; and
    Retry-After falls back to http.retry_after (300)."""
    until = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    write_flag(site.daemon.flag("shop"), {"reason": "upgrade", "until": format_time(until)})
    event = next_event(watcher, "shop")
    assert (event["state"], event["overdue"]) == ("on", False)
    event = next_event(watcher, "shop")  # guardd's own timer: no file changed
    assert (event["state"], event["overdue"]) == ("on", True)
    assert time.time() >= until.timestamp()

    assert site.status()["scopes"]["shop"]["overdue"] is True
    human = site.ctl("status").stdout
    shop_line = next(line for line in human.splitlines() if line.startswith("shop "))
    assert "OVERDUE" in shop_line
    assert get(site.http_port, "/maintenance.json").json()["overdue"] is True
    assert get(site.http_port, "/healthz").json()["overdue"] is True
    api = get(site.http_port, "/api/x")
    assert api.json()["overdue"] is True and api.header("retry-after") == "300"
    page = get(site.http_port, "/", headers={"Accept": "text/html"})
    assert page.status == 503 and page.header("retry-after") == "300"
    assert "taking longer than expected" in page.text
    assert "Expected back" in page.text and until.strftime("%H:%M UTC") not in page.text


# --------------------------------------------------------------------------- via default


def test_scope_on_through_default_says_so(site: Site, watcher: subprocess.Popen[str]) -> None:
    """With only default on, shop's status (JSON and human) and watch event say
    via default; shop's own flag then shows no via."""
    assert site.ctl("on", "--reason", "host work").returncode == 0
    event = next_event(watcher, "shop")
    assert (event["state"], event["via"]) == ("on", "default")
    scopes = site.status()["scopes"]
    assert scopes["shop"]["via"] == "default" and scopes["default"]["via"] is None
    human = site.ctl("status").stdout
    assert any(
        line.startswith("shop ") and "on (via default)" in line for line in human.splitlines()
    )
    assert site.ctl("on", "shop").returncode == 0
    assert next_event(watcher, "shop")["via"] is None


# --------------------------------------------------------------------------- job events


def test_jobs_are_logged_as_job_events_not_state_lines(site: Site) -> None:
    """A guarded job's start and end are logged as job events naming pid, scope and the
    count; an off scope whose job count changes logs no state line."""
    job = subprocess.Popen(
        [command("guard-run"), "--scope", "shop", "--", "sleep", "30"],
        env={**os.environ, "GUARDD_CONFIG": str(site.daemon.config_path)},
    )
    try:
        wait_until(
            lambda: f"job started: pid {job.pid}, scope shop, jobs now 1" in site.daemon.log(),
            what="the job start in the log",
        )
    finally:
        job.terminate()  # forwarded to the command (a SIGKILL would end guard-run alone)
        job.wait()
    wait_until(
        lambda: f"job ended: pid {job.pid}, scope shop, jobs now 0" in site.daemon.log(),
        what="the job end in the log",
    )
    log = site.daemon.log()
    assert "scope shop: off" not in log and "scope default: off" not in log
    assert log.count(f"pid {job.pid}") == 2  # named once by its own scope, not by default's


# --------------------------------------------------------------------------- warnings


def test_on_off_warn_when_guardd_is_configured_but_not_running(site: Site) -> None:
    """With HTTP/agent listeners configured and guardd stopped, on and off still work
    (exit 0) and warn on stderr that load balancers will not see it; with guardd
    running there is no warning."""
    quiet = site.ctl("on", "shop")
    assert quiet.returncode == 0 and quiet.stderr == ""
    site.daemon.stop()
    for action in ("on", "off"):
        result = site.ctl(action, "shop")
        assert result.returncode == 0
        assert "warning: guardd is not running" in result.stderr
        assert "load balancers will not see this change" in result.stderr
        assert "http.listen and agent.listen are configured" in result.stderr


def test_no_warning_without_listeners(tmp_short: Path) -> None:
    """Without HTTP or agent listeners nothing waits for guardd: no warning."""
    config = tmp_short / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "lock_dir": str(tmp_short / "lock"),
                "runtime_dir": str(tmp_short / "run"),
                "http": {"listen": []},
            }
        )
    )
    result = guardctl(config, "on")
    assert (result.returncode, result.stderr) == (0, "")


# --------------------------------------------------------------------------- help


def test_plain_guardctl_prints_help(tmp_short: Path) -> None:
    """`guardctl` alone prints the help with examples and exit codes (exit 2), not
    'the following arguments are required'."""
    result = subprocess.run(
        [command("guardctl")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "required" not in result.stderr + result.stdout
    assert "examples:" in result.stdout and "exit status:" in result.stdout
    for command_name in ("status", "on", "off", "jobs", "watch", "schedule"):
        assert command_name in result.stdout


@pytest.mark.parametrize(
    ("subcommand", "needles"),
    [
        ("on", ["SCOPE", "whole host", "--reason", "public", "--note", "internal", "--for",
                "--until", "--wait", "--timeout", "--then", "--grace", "--fleet", "--config"]),
        ("off", ["SCOPE", "whole host", "--note", "--fleet"]),
        ("status", ["SCOPE", "--json", "overdue", "via", "--fleet"]),
        ("watch", ["--json", "reconnects", "exit 4"]),
        ("jobs", ["SCOPE", "--json"]),
    ],
)  # fmt: skip
def test_subcommand_help_documents_every_option(subcommand: str, needles: list[str]) -> None:
    """Each subcommand's help names SCOPE and every option, with examples and exit codes."""
    result = subprocess.run(
        [command("guardctl"), subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for needle in [*needles, "examples:", "exit status:", "130"]:
        assert needle in text, needle


def test_guard_run_and_guardd_help_have_exit_codes() -> None:
    """guard-run --help and guardd --help carry examples and the exit-code table."""
    run = subprocess.run(
        [command("guard-run"), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0
    for needle in ("examples:", "exit status:", "75", "126", "127", "--check"):
        assert needle in run.stdout, needle
    daemon = subprocess.run(
        [command("guardd"), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert daemon.returncode == 0
    for needle in ("examples:", "exit status:", "--check-config", "--config"):
        assert needle in daemon.stdout, needle


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_wait_says_maintenance_stays_on(site: Site) -> None:
    """SIGINT to a real `guardctl on --wait` while a job runs: exit 130, one line saying
    the scope stays in maintenance and how to end it; the flag is still there."""
    env = {**os.environ, "GUARDD_CONFIG": str(site.daemon.config_path)}
    job = subprocess.Popen([command("guard-run"), "--scope", "shop", "--", "sleep", "30"], env=env)
    waiter: subprocess.Popen[str] | None = None
    try:
        wait_until(
            lambda: site.status()["scopes"]["shop"]["jobs"] == 1, what="the job to be counted"
        )
        waiter = subprocess.Popen(
            [command("guardctl"), "on", "shop", "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: site.daemon.flag("shop").exists(), what="the flag")
        assert waiter.stdout is not None
        assert "draining shop" in waiter.stdout.readline() + waiter.stdout.readline()
        waiter.send_signal(signal.SIGINT)
        _, stderr = waiter.communicate(timeout=10)
        assert waiter.returncode == 130
        assert "shop stays in maintenance" in stderr and "guardctl off shop" in stderr
        assert "Traceback" not in stderr
        assert site.daemon.flag("shop").exists()
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
        job.terminate()  # forwarded to the command
        job.wait()


def test_human_watch_says_when_guardd_goes_and_comes_back(site: Site) -> None:
    """Human watch: a line when guardd goes away, one when it is back, then the table;
    change lines carry by and note."""
    process = subprocess.Popen(
        [command("guardctl"), "watch"],
        env={**os.environ, "GUARDD_CONFIG": str(site.daemon.config_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().split()[:2] == ["SCOPE", "STATE"]
        assert site.ctl("on", "blog", "--note", NOTE, env={"SUDO_USER": "ana"}).returncode == 0
        line = next(line for line in iter(process.stdout.readline, "") if "  blog  " in line)
        assert "on  jobs=0" in line and "by=ana@" in line and NOTE in line
        site.daemon.stop()
        gone = next(line for line in iter(process.stdout.readline, "") if "guardd" in line)
        assert "guardd went away" in gone and gone.rstrip().endswith("reconnecting")
        site.daemon.start()
        back = process.stdout.readline()
        assert back.rstrip().endswith("reconnected to guardd")
        assert process.stdout.readline().split()[:2] == ["SCOPE", "STATE"]
    finally:
        process.kill()
        process.communicate()
