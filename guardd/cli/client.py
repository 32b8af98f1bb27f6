"""A small blocking client of guardd's control socket (for guardctl)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

from guardd.errors import Unreachable


class ControlClient:
    """One connection to the control socket; requests are answered in order."""

    def __init__(self, path: str, *, timeout: float) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as err:
            self.sock.close()
            raise Unreachable(f"guardd is not reachable on {path}: {err.strerror or err}") from None
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Hang up."""
        try:
            self.reader.close()
        finally:
            self.sock.close()

    def read(self) -> dict[str, Any]:
        """The next reply or event line; Unreachable when the stream ends or stalls."""
        try:
            line = self.reader.readline()
        except (TimeoutError, OSError) as err:
            raise Unreachable(f"guardd stopped answering on {self.path} ({err})") from None
        if not line:
            raise Unreachable(f"guardd closed the connection on {self.path}")
        try:
            reply = json.loads(line)
        except ValueError:
            raise Unreachable(f"guardd sent something that is not JSON on {self.path}") from None
        if not isinstance(reply, dict):
            raise Unreachable(f"guardd sent an unexpected reply on {self.path}")
        return reply

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Send one request line and return its reply."""
        try:
            self.sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError as err:
            raise Unreachable(f"guardd is not reachable on {self.path}: {err}") from None
        return self.read()

    def stream(self) -> Iterator[dict[str, Any]]:
        """Lines after ``watch``, for as long as guardd keeps the connection."""
        self.sock.settimeout(None)
        while True:
            yield self.read()
