"""The control socket in-process: a ControlServer on a real Unix socket in the test's own
event loop, with canned replies (no guardd process): requests, errors, watch, closing."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from guardd.core.state import ScopeStatus
from guardd.daemon.control import ControlServer
from guardd.errors import GuardError
from guardd.protocol import MAX_LINE
from tests.helpers import short_tmp

ON = ScopeStatus("default", "on", "2026-01-01T00:00:00Z", None, "db", 0)

Scenario = Callable[[ControlServer, str], Awaitable[None]]


def serve(scenario: Scenario) -> None:
    """Run ``scenario(server, path)`` against a started server; close it afterwards."""
    directory = short_tmp()
    path = str(directory / "guardd.sock")
    asked: list[str | None] = []

    async def jobs_reply(scope: str | None) -> dict[str, object]:
        asked.append(scope)
        return {"ok": True, "jobs": [], "asked": scope}

    async def main() -> None:
        server = ControlServer(
            path=path,
            mode=0o600,
            group=None,
            status_reply=lambda: {"ok": True, "scopes": {"default": {"state": "off"}}},
            jobs_reply=jobs_reply,
        )
        await server.start()
        try:
            await asyncio.wait_for(scenario(server, path), 20)
        finally:
            await server.close()
        assert not os.path.exists(path)  # the socket file goes with the server

    try:
        asyncio.run(main())
    finally:
        directory.rmdir()


async def ask(path: str, data: bytes, *, replies: int = 1) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        return [json.loads(await reader.readline()) for _ in range(replies)]
    finally:
        writer.close()
        await writer.wait_closed()


def test_ping_status_and_jobs() -> None:
    """ping, status and jobs (with its scope) get their replies, one line each."""

    async def scenario(server: ControlServer, path: str) -> None:
        ping, status, jobs = await ask(
            path, b'{"op":"ping"}\n{"op":"status"}\n{"op":"jobs","scope":"shop"}\n', replies=3
        )
        assert ping == {"ok": True}
        assert status["scopes"] == {"default": {"state": "off"}}
        assert jobs["asked"] == "shop"

    serve(scenario)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1,2]", "bad_request"),
        (b'{"op":"reboot"}', "unknown_op"),
        (b'{"op":"jobs","scope":"../etc"}', "bad_request"),
        (b"\xff\xfe", "bad_request"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_stays(line: bytes, code: str) -> None:
    """A bad request is answered with its error code; the next request still works."""

    async def scenario(server: ControlServer, path: str) -> None:
        error, ping = await ask(path, line + b'\n{"op":"ping"}\n', replies=2)
        assert error["ok"] is False
        assert error["error"]["code"] == code
        assert ping == {"ok": True}

    serve(scenario)


def test_a_last_request_without_newline_is_answered() -> None:
    """``printf '{"op":"ping"}' | nc -U`` works: the request before EOF is answered."""

    async def scenario(server: ControlServer, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"op":"ping"}')
        writer.write_eof()
        assert json.loads(await reader.readline()) == {"ok": True}
        assert await reader.read() == b""
        writer.close()

    serve(scenario)


def test_too_long_line_is_refused_and_closed() -> None:
    """A line over MAX_LINE gets too_long and the connection closes."""

    async def scenario(server: ControlServer, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"x" * (MAX_LINE + 10))
        reply = json.loads(await reader.readline())
        assert reply["error"]["code"] == "too_long"
        assert await reader.read() == b""
        writer.close()

    serve(scenario)


def test_watch_gets_status_then_every_broadcast() -> None:
    """watch: the status first, then one event line per changed scope, until hang-up."""

    async def scenario(server: ControlServer, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"op":"watch"}\n')
        first = json.loads(await reader.readline())
        assert first["scopes"] == {"default": {"state": "off"}}
        for _ in range(100):
            if server.watchers:
                break
            await asyncio.sleep(0.01)
        server.broadcast({"default": ON})
        event = json.loads(await reader.readline())
        assert event["scope"] == "default" and event["state"] == "on"
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if not server.watchers:
                break
            await asyncio.sleep(0.01)
        assert not server.watchers

    serve(scenario)


def test_socket_mode_and_refusing_a_live_socket(tmp_path: Path) -> None:
    """The socket gets its mode; a second server on the same live path refuses to start."""

    async def scenario(server: ControlServer, path: str) -> None:
        assert os.stat(path).st_mode & 0o777 == 0o600
        second = ControlServer(
            path=path, mode=0o600, group=None, status_reply=dict, jobs_reply=server.jobs_reply
        )
        with pytest.raises(GuardError, match="already running"):
            await second.start()
        assert os.path.exists(path)  # the live server's socket is left alone
        await asyncio.sleep(0.1)  # let the server take in (and close) the probe's connection

    serve(scenario)
