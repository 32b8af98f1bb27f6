"""A small HTTP/1.x client on raw sockets: tests need the exact bytes on the wire
(pipelining, HEAD framing, malformed requests, half-closes) that library clients hide."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers import EVENT_TIMEOUT, wait_until


@dataclass
class Response:
    """One parsed response."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def header_names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Connection:
    """One TCP connection to an HTTP server, read response by response."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = EVENT_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_response(self, *, head_only: bool = False) -> Response:
        """The next response; HEAD answers have no body whatever Content-Length says."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a full response head: {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        response = Response(version, int(status), reason, headers, b"", raw_head=head)
        if head_only:
            return response
        length = int(response.header("content-length") or 0)
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed in the middle of a body")
        response.body, self.buffer = self.buffer[:length], self.buffer[length:]
        return response

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        version: str = "HTTP/1.1",
        body: bytes = b"",
    ) -> Response:
        """Send one request and read its response."""
        self.send(build_request(path, method=method, headers=headers, version=version, body=body))
        return self.read_response(head_only=method == "HEAD")

    def wait_closed(self, timeout: float = EVENT_TIMEOUT) -> bytes:
        """Read until the server closes the connection; return what came (fails on timeout)."""
        self.sock.settimeout(timeout)
        received = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def build_request(
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    body: bytes = b"",
) -> bytes:
    """The bytes of a well-formed request (Host added for HTTP/1.1)."""
    lines = [f"{method} {path} {version}"]
    all_headers = {"Host": "localhost"} if version == "HTTP/1.1" else {}
    all_headers.update(headers or {})
    if body and "Content-Length" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(
    port: int,
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on a fresh connection."""
    with Connection(port, host) as connection:
        return connection.request(path, method=method, headers=headers)


def wait_for_state(port: int, state: str, *, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
    """Poll /maintenance.json until the responder reports ``state``; return the document."""

    def check() -> dict[str, Any] | None:
        document: dict[str, Any] = get(port, "/maintenance.json").json()
        return document if document["state"] == state else None

    result: dict[str, Any] = wait_until(check, timeout=timeout, what=f"state {state}")
    return result


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = EVENT_TIMEOUT) -> None:
    """Wait until something accepts connections on ``host:port``."""

    def accepting() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False

    wait_until(accepting, timeout=timeout, what=f"{host}:{port} accepting")


def write_flag(path: Any, content: dict[str, Any] | str) -> None:
    """Write a flag file atomically (temp file + rename), as guardctl does."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{time.monotonic_ns()}.tmp")
    temp.write_text(content if isinstance(content, str) else json.dumps(content))
    temp.rename(target)


class StandInApp:
    """The application behind a load balancer, in a thread: "APP OK" on every path
    (200), so a test can tell the app's answers from guardd's."""

    BODY = b"APP OK\n"

    def __init__(self, body: bytes = BODY) -> None:
        self.body = body

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is for the test."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                """Health checkers reset their connections; that is not news."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread: threading.Thread | None = None

    def __enter__(self) -> StandInApp:
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: the port refuses connections afterwards."""
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(timeout=10)
            self.thread = None
        self.server.server_close()


def template(source: Any, replacements: dict[str, str]) -> str:
    """An example file's text with literal values replaced; each must occur in it
    (so an example that drifts from its test fails loudly)."""
    text = Path(source).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in {source}"
        text = text.replace(old, new)
    return text
