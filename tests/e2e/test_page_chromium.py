"""Debian's headless Chromium renders the maintenance page: the reason and the expected
end in the visitor's local time; and the page takes the visitor back by itself when
maintenance ends."""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Guardd, free_port, require_tool, wait_until
from tests.httpclient import write_flag

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=en-US",
]
BROWSER_TIMEOUT = 60.0
# Puts two inherited pipe ends on fds 3 and 4, where --remote-debugging-pipe expects
# them, then runs the browser (no preexec_fn: the test runs threads; and dash cannot
# redirect fds above 9). Moving both above 9 first keeps them from overwriting each other.
_ON_FDS_3_AND_4 = """\
import fcntl, os, sys
read_end, write_end = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])
os.dup2(read_end, 3)
os.dup2(write_end, 4)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def browser_env(timezone: str) -> dict[str, str]:
    """The visitor's environment: their time zone and language."""
    return {**os.environ, "TZ": timezone, "LANG": "en_US.UTF-8"}


class DevToolsError(Exception):
    """Chromium answered a DevTools command with an error."""


class DevTools:
    """Chromium driven over --remote-debugging-pipe: JSON messages ending in NUL on
    fds 3 (commands) and 4 (replies and events). No WebSocket library needed."""

    def __init__(self, chromium: str, profile: Path, env: dict[str, str]) -> None:
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _ON_FDS_3_AND_4,
                str(commands_read),
                str(replies_write),
                chromium,
                *FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        os.close(commands_read)
        os.close(replies_write)
        self.buffer = b""
        self.last_id = 0

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.replies], [], [], left)
            if ready:
                chunk = os.read(self.replies, 1 << 16)
                if not chunk:
                    raise ConnectionError("Chromium closed its DevTools pipe")
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + BROWSER_TIMEOUT
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise DevToolsError(str(reply["error"]))
                result: dict[str, Any] = reply.get("result", {})
                return result

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab; return the session to talk to that page."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        session: str = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        return session

    def text(self, session: str) -> str:
        """The page's visible text ("" while it navigates)."""
        try:
            result = self.send(
                "Runtime.evaluate",
                {
                    "expression": "document.body ? document.body.innerText : ''",
                    "returnByValue": True,
                },
                session=session,
            )
        except DevToolsError:
            return ""
        return str(result.get("result", {}).get("value", ""))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, TimeoutError, DevToolsError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        os.close(self.replies)


class Site:
    """The site as a visitor reaches it: a front that sends everything to guardd while
    the flag exists (as the nginx example does) and to the application otherwise."""

    APP_PAGE = b"<!DOCTYPE html><title>Shop</title><h1>APP OK</h1>"

    def __init__(self, flag: Path, guardd_port: int) -> None:
        app_page = self.APP_PAGE

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if flag.exists():
                    upstream = http.client.HTTPConnection("127.0.0.1", guardd_port, timeout=10)
                    accept = self.headers.get("Accept", "*/*")
                    upstream.request("GET", self.path, headers={"Accept": accept})
                    answer = upstream.getresponse()
                    body = answer.read()
                    upstream.close()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in ("connection", "content-length", "date", "server"):
                            self.send_header(name, value)
                else:
                    body = app_page
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                """A browser dropping a connection is not a test failure."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


@pytest.fixture
def chromium() -> str:
    return require_tool("chromium")


@pytest.fixture
def guardd_page(make_guardd: Callable[..., Guardd]) -> tuple[Guardd, int]:
    """guardd with its HTTP responder; http.retry_after 8 makes the page poll every ~2 s."""
    port = free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"], "retry_after": 8}}).start()
    return daemon, port


@pytest.fixture
def browser(chromium: str, tmp_short: Path) -> Iterator[DevTools]:
    """A headless Chromium on a fresh profile, in the visitor's time zone (UTC+5:30)."""
    devtools = DevTools(chromium, tmp_short / "profile", browser_env("Asia/Kolkata"))
    try:
        yield devtools
    finally:
        devtools.close()


def test_page_shows_reason_and_local_expected_end(
    chromium: str, guardd_page: tuple[Guardd, int], tmp_short: Path
) -> None:
    """Rendered (--dump-dom): the escaped reason, and `until` converted to local time."""
    daemon, port = guardd_page
    write_flag(
        daemon.flag(), {"reason": "Kernel <upgrade> & reboot", "until": "2030-01-01T12:00:00Z"}
    )
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="state on",
    )
    dump = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={tmp_short / 'dump-profile'}",
            "--dump-dom",
            "--virtual-time-budget=5000",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        env=browser_env("Asia/Kolkata"),
        check=False,
    )
    dom = dump.stdout
    assert "Down for maintenance" in dom, dump.stderr[-2000:]
    assert '<dd id="reason-text">Kernel &lt;upgrade&gt; &amp; reboot</dd>' in dom
    # 12:00 UTC is 17:30 in Kolkata: the script replaced the UTC fallback text.
    assert "January 1, 2030" in dom
    assert "5:30 PM" in dom
    assert "2030-01-01 12:00 UTC" not in dom


def test_page_returns_visitor_when_maintenance_ends(
    browser: DevTools, guardd_page: tuple[Guardd, int]
) -> None:
    """The open page polls /maintenance.json and, once the flag is gone, goes back to
    the site by itself; while on, it shows the reason and stays."""
    daemon, port = guardd_page
    write_flag(daemon.flag(), {"reason": "Moving to new servers"})
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="state on",
    )
    site = Site(daemon.flag(), port)
    try:
        session = browser.open(f"http://127.0.0.1:{site.port}/shop")
        wait_until(
            lambda: "Moving to new servers" in browser.text(session),
            timeout=BROWSER_TIMEOUT,
            what="the maintenance page",
        )
        daemon.flag().unlink()
        wait_until(
            lambda: "APP OK" in browser.text(session),
            timeout=BROWSER_TIMEOUT,
            interval=0.2,
            what="the page to take the visitor back",
        )
    finally:
        site.close()


def test_page_updates_reason_live(browser: DevTools, guardd_page: tuple[Guardd, int]) -> None:
    """A changed reason reaches an open page through its poll, without a reload."""
    daemon, port = guardd_page
    write_flag(daemon.flag(), {"reason": "first reason"})
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["reason"] == "first reason",
        what="first reason",
    )
    session = browser.open(f"http://127.0.0.1:{port}/")
    wait_until(lambda: "first reason" in browser.text(session), what="first reason shown")
    browser.send(
        "Runtime.evaluate", {"expression": "window.__same_document = true"}, session=session
    )
    write_flag(daemon.flag(), {"reason": "second reason"})
    wait_until(
        lambda: "second reason" in browser.text(session),
        timeout=BROWSER_TIMEOUT,
        what="second reason shown",
    )
    same = browser.send(
        "Runtime.evaluate",
        {"expression": "window.__same_document === true", "returnByValue": True},
        session=session,
    )
    assert same["result"]["value"] is True
