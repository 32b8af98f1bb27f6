"""The control socket: a read-only, newline-delimited JSON server on a Unix socket.

Answers come from the daemon's in-memory state; only ``jobs`` looks at /proc (in a
worker thread). State changes are never made here: they go through the flag files.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from guardd.core.state import ScopeStatus
from guardd.errors import GuardError
from guardd.protocol import (
    MAX_LINE,
    ProtocolError,
    Request,
    encode,
    error_reply,
    parse_request,
    state_event,
)

log = logging.getLogger(__name__)

# A watch client that stops reading is dropped once this much is queued for it,
# so one stuck monitor cannot make guardd's memory grow without bound.
MAX_PENDING_WRITE = 1024 * 1024
# Connections the kernel queues until accepted (capped by net.core.somaxconn). A
# client connecting with a timeout, as guardctl does, gets EAGAIN at once from a
# full queue: asyncio's default of 100 turned a burst of monitors into failures.
BACKLOG = 4096


class ControlServer:
    """Serves ping, status, jobs and watch; broadcasts state changes to watchers."""

    def __init__(
        self,
        *,
        path: str,
        mode: int,
        group: str | None,
        status_reply: Callable[[], dict[str, object]],
        jobs_reply: Callable[[str | None], Awaitable[dict[str, object]]],
    ) -> None:
        self.path = path
        self.mode = mode
        self.group = group
        self.status_reply = status_reply
        self.jobs_reply = jobs_reply
        self.server: asyncio.AbstractServer | None = None
        self.watchers: set[asyncio.StreamWriter] = set()
        self.clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the socket (refusing to steal one a live guardd still answers on)."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _answers(self.path):
                raise GuardError(f"another guardd is already running on {self.path}")
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(
            self._client, path=self.path, limit=MAX_LINE + 1, backlog=BACKLOG
        )
        self.apply_permissions(mode=self.mode, group=self.group)

    def apply_permissions(self, *, mode: int, group: str | None) -> None:
        """Set the socket's mode and group (also on reload)."""
        self.mode, self.group = mode, group
        os.chmod(self.path, mode)
        if group is not None:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
                # Skip a chown that changes nothing: the packaged unit runs guardd with
                # Group=guardd (the socket is born with it) and denies @privileged calls.
                if os.stat(self.path).st_gid != gid:
                    os.chown(self.path, -1, gid)
            except (KeyError, OSError) as err:
                raise GuardError(
                    f"control.group: cannot give {self.path} to group {group!r}: {err}"
                ) from None

    async def close(self) -> None:
        """Stop accepting, hang up on every client, remove the socket file."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.watchers):
            writer.close()
        for task in list(self.clients):
            task.cancel()
        if self.clients:
            await asyncio.gather(*self.clients, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            # Only a socket we bound is ours to remove (a refused start must not
            # delete the live daemon's).
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def broadcast(self, changed: Mapping[str, ScopeStatus]) -> None:
        """Send one event line per changed scope to every watcher."""
        if not self.watchers or not changed:
            return
        payload = b"".join(encode(state_event(status)) for status in changed.values())
        for writer in list(self.watchers):
            if writer.transport.get_write_buffer_size() > MAX_PENDING_WRITE:
                log.warning("dropping a watch client that stopped reading")
                self.watchers.discard(writer)
                writer.transport.abort()
                continue
            writer.write(payload)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(task)
            self.watchers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as err:
                if err.partial.strip():
                    # A last request without its newline: answer it anyway.
                    line = err.partial
                else:
                    return
            except asyncio.LimitOverrunError:
                writer.write(
                    encode(
                        error_reply(
                            ProtocolError(
                                "too_long", f"request lines are limited to {MAX_LINE} bytes"
                            )
                        )
                    )
                )
                await writer.drain()
                return
            request = parse_request(line.rstrip(b"\r\n"))
            if isinstance(request, ProtocolError):
                writer.write(encode(error_reply(request)))
            elif request.op == "watch":
                await self._watch(reader, writer)
                return
            else:
                writer.write(encode(await self._answer(request)))
            await writer.drain()
            if not line.endswith(b"\n"):
                return

    async def _answer(self, request: Request) -> dict[str, object]:
        if request.op == "ping":
            return {"ok": True}
        if request.op == "status":
            return self.status_reply()
        return await self.jobs_reply(request.scope)

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The status reply and the registration happen without an await between them,
        # so no change can slip through unseen.
        writer.write(encode(self.status_reply()))
        self.watchers.add(writer)
        await writer.drain()
        while await reader.read(4096):
            pass  # input after watch is ignored; EOF means the client hung up


def _answers(path: str) -> bool:
    """True when something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
