"""Debian's HAProxy runs examples/haproxy.cfg in front of a stand-in app: the flag takes
the server out through guardd's agent and guardd's backup page answers; removing
the flag brings the app back."""

from __future__ import annotations

import csv
import io
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Guardd, free_port, require_tool, stop_process, wait_until
from tests.httpclient import StandInApp, get, template, write_flag

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haproxy.cfg"
# Scheduling noise allowed on top of "two check intervals" (CI machines are busy).
SLACK_SECONDS = 1.5


@dataclass
class Stack:
    """HAProxy on ``port`` in front of ``app``, with ``guardd`` as agent and backup."""

    guardd: Guardd
    app: StandInApp
    port: int
    socket_path: Path
    agent_inter: float
    log_path: Path

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        return received.decode()

    def status(self, server: str = "app1") -> str:
        """The server's status column in `show stat`: UP, DOWN, MAINT, DRAIN, ..."""
        text = self.command("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == "app" and row["svname"] == server:
                return row["status"]
        raise AssertionError(f"no app/{server} in show stat: {text}")


@pytest.fixture
def stack(make_guardd: Callable[..., Guardd], tmp_short: Path) -> Iterator[Stack]:
    """guardd, a stand-in app and HAProxy running the example config; all stopped after."""
    haproxy = require_tool("haproxy")
    http_port, agent_port, front_port = free_port(), free_port(), free_port()
    daemon = make_guardd(
        {
            "http": {"listen": [f"127.0.0.1:{http_port}"]},
            "agent": {"listen": [f"127.0.0.1:{agent_port}"]},
        }
    ).start()
    with StandInApp() as app:
        socket_path = tmp_short / "haproxy.sock"
        config = tmp_short / "haproxy.cfg"
        text = template(
            EXAMPLE,
            {
                "127.0.0.1:8080": f"127.0.0.1:{front_port}",
                "127.0.0.1:8000": f"127.0.0.1:{app.port}",
                "127.0.0.1:8089": f"127.0.0.1:{http_port}",
                "agent-port 8090": f"agent-port {agent_port}",
                "/run/haproxy/admin.sock": str(socket_path),
            },
        )
        config.write_text(text)
        match = re.search(r"agent-inter (\d+)s", text)
        assert match, "the example sets agent-inter in seconds"
        check = subprocess.run(
            [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log_path = tmp_short / "haproxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack = Stack(daemon, app, front_port, socket_path, float(match.group(1)), log_path)
        try:
            wait_until(socket_path.exists, what="HAProxy's stats socket")
            wait_until(lambda: stack.status() == "UP", timeout=20, what="app1 UP")
            yield stack
        finally:
            stop_process(process)


def test_flag_takes_server_out_and_guardd_page_answers(stack: Stack) -> None:
    """Flag on: app1 leaves (MAINT/DOWN) within two agent intervals, clients get guardd's
    503 page with Guard-Maintenance; flag off: app1 is UP and clients reach the app."""
    assert get(stack.port, "/").body == StandInApp.BODY

    write_flag(stack.guardd.flag(), {"reason": "Kernel upgrade"})
    started = time.monotonic()
    wait_until(
        lambda: stack.status().startswith(("MAINT", "DOWN")),
        timeout=4 * stack.agent_inter + 10,
        what="app1 out of the pool",
    )
    assert time.monotonic() - started <= 2 * stack.agent_inter + SLACK_SECONDS

    page = get(stack.port, "/orders/17")
    assert page.status == 503
    assert page.header("guard-maintenance") == "default"
    assert page.header("retry-after") == "300"
    assert "Kernel upgrade" in page.text
    assert "Down for maintenance" in page.text
    api = get(stack.port, "/api/orders", headers={"Accept": "text/html"})
    assert api.status == 503
    assert api.json() == {
        "maintenance": True,
        "mode": None,
        "paused": None,
        "reason": "Kernel upgrade",
        "until": None,
        "overdue": False,
        "retry_after": 300,
    }
    assert get(stack.port, "/maintenance.json").json()["state"] == "on"

    stack.guardd.flag().unlink()
    wait_until(lambda: stack.status() == "UP", timeout=30, what="app1 back UP")
    back = get(stack.port, "/orders/17")
    assert back.status == 200
    assert back.body == StandInApp.BODY
    assert "guard-maintenance" not in back.header_names()


def test_agent_ready_clears_a_runtime_api_maint(stack: Stack) -> None:
    """The fact the docs warn about: guardd's `ready` ends a MAINT set on the runtime API."""
    stack.command("set server app/app1 state maint")
    assert stack.status().startswith("MAINT")
    wait_until(
        lambda: stack.status() == "UP",
        timeout=4 * stack.agent_inter + 10,
        what="the agent to clear MAINT",
    )


def test_crashed_app_gets_the_honest_outage_page(stack: Stack) -> None:
    """No flag, app dead: app1 goes DOWN and the backup answers "temporarily
    unavailable" without Guard-Maintenance (an outage never looks like planned work)."""
    stack.app.stop()
    wait_until(lambda: stack.status().startswith("DOWN"), timeout=30, what="app1 DOWN")
    page = get(stack.port, "/")
    assert page.status == 503
    assert "guard-maintenance" not in page.header_names()
    assert "Temporarily unavailable" in page.text
