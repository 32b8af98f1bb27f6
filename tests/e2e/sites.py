"""What the partial-maintenance and banner e2e tests stand up: an application that
accepts writes and counts what reaches it, and Debian's nginx running an example."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.e2e.test_nginx import MAIN_CONFIG
from tests.helpers import require_tool, stop_process
from tests.httpclient import wait_listening

# The application's own page: content the banner must not move sideways.
APP_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"></head>
<body><main id="content"><h1>APP OK</h1>
<p>Fresh vegetables, delivered from local farms.</p>
<p>Order by noon for delivery tomorrow.</p></main></body></html>
"""
APP_CSS = b"body{margin:0;font:16px/1.5 sans-serif}main{max-width:40rem;margin:2rem auto}\n"
# Stricter than the SPEC asks: scripts and styles only from the site itself.
STRICT_CSP = "default-src 'self'; script-src 'self'; style-src 'self'"


class CountingApp:
    """The application behind nginx, in a thread: every method on every path; counts
    (method, path) of each request that reaches it; HTML for /, text otherwise."""

    def __init__(self, *, csp: str | None = None) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        seen = self.seen
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with lock:
                    seen[(self.command, self.path)] += 1
                if self.path == "/":
                    body, kind = APP_PAGE, "text/html; charset=utf-8"
                elif self.path == "/static/app.css":
                    body, kind = APP_CSS, "text/css"
                else:
                    body, kind = b"APP OK\n", "text/plain"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if csp is not None:
                    self.send_header("Content-Security-Policy", csp)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is for the test."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                """Clients dropping connections are not news."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def writes(self) -> int:
        """How many POST/PUT/PATCH/DELETE requests reached the application."""
        return sum(n for (method, _), n in self.seen.items() if method not in ("GET", "HEAD"))

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


@contextmanager
def running_nginx(root: Path, site: str, port: int) -> Iterator[None]:
    """Debian's nginx (one worker) serving ``site`` (a server block) from ``root``."""
    nginx = require_tool("nginx")
    root.mkdir(mode=0o755, parents=True)
    (root / "site.conf").write_text(site)
    (root / "nginx.conf").write_text(MAIN_CONFIG.format(root=root))
    base = [nginx, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port)
        yield
    finally:
        stop_process(process)
