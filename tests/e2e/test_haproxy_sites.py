"""Debian's HAProxy runs examples/haproxy-sites.cfg: two sites on one host, each with
its own application, one guardd for both (shop through the named agent port, blog
through guardd's /healthz/blog). One site in maintenance leaves the other untouched."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Guardd, free_port, require_tool, stop_process, wait_until
from tests.httpclient import Response, StandInApp, get, template, write_flag

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haproxy-sites.cfg"
SHOP_BODY = b"SHOP APP\n"
BLOG_BODY = b"BLOG APP\n"


@dataclass
class Sites:
    """HAProxy on ``port`` in front of shop's and blog's apps, one guardd for both."""

    guardd: Guardd
    port: int
    socket_path: Path

    def status(self, backend: str, server: str) -> str:
        """The server's status column in `show stat`: UP, DOWN, MAINT, ..."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        text = received.decode().lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == server:
                return row["status"]
        raise AssertionError(f"no {backend}/{server} in show stat: {text}")

    def get(self, host: str, path: str = "/") -> Response:
        return get(self.port, path, headers={"Host": host})

    def wait_status(self, backend: str, server: str, *states: str) -> None:
        """Wait for one of ``states`` ("UP" exactly: not "UP 1/2", still checking)."""
        wait_until(
            lambda: any(
                self.status(backend, server) == state
                or (state != "UP" and self.status(backend, server).startswith(state))
                for state in states
            ),
            timeout=30,
            what=f"{backend}/{server} {'|'.join(states)}",
        )


@pytest.fixture
def sites(make_guardd: Callable[..., Guardd], tmp_short: Path) -> Iterator[Sites]:
    """guardd, two stand-in apps and HAProxy running the example; all stopped after."""
    haproxy = require_tool("haproxy")
    http_port, agent_port, front_port = free_port(), free_port(), free_port()
    daemon = make_guardd(
        {
            "http": {"listen": [f"127.0.0.1:{http_port}"], "scope": "blog"},
            "agent": {"named_listen": [f"127.0.0.1:{agent_port}"]},
            "scopes": {
                "shop": {"hosts": ["shop.example.com", "*.shop.example.com"]},
                "blog": {"hosts": ["blog.example.com"]},
            },
        }
    ).start()
    with StandInApp(SHOP_BODY) as shop, StandInApp(BLOG_BODY) as blog:
        socket_path = tmp_short / "haproxy.sock"
        config = tmp_short / "haproxy.cfg"
        config.write_text(
            template(
                EXAMPLE,
                {
                    "127.0.0.1:8080": f"127.0.0.1:{front_port}",
                    "127.0.0.1:8001": f"127.0.0.1:{shop.port}",
                    "127.0.0.1:8002": f"127.0.0.1:{blog.port}",
                    "127.0.0.1:8089": f"127.0.0.1:{http_port}",
                    "port 8089": f"port {http_port}",
                    "agent-port 8091": f"agent-port {agent_port}",
                    "/run/haproxy/admin.sock": str(socket_path),
                },
            )
        )
        check = subprocess.run(
            [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(tmp_short / "haproxy.log", "wb") as log:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack = Sites(daemon, front_port, socket_path)
        try:
            wait_until(socket_path.exists, what="HAProxy's stats socket")
            stack.wait_status("shop", "shop1", "UP")
            stack.wait_status("blog", "blog1", "UP")
            yield stack
        finally:
            stop_process(process)


def _is_maintenance_page(answer: Response, scope: str, reason: str) -> None:
    assert answer.status == 503
    assert answer.header("guard-maintenance") == scope
    assert "Down for maintenance" in answer.text
    assert reason in answer.text


def test_one_site_in_maintenance_leaves_the_other_alone(sites: Sites) -> None:
    """shop on (agent-send): shop1 MAINT and shop's visitors get shop's maintenance page,
    while blog stays UP and served by its app; then blog on (/healthz/blog): blog1 DOWN
    and blog's maintenance page, while shop is back on its app."""
    assert sites.get("shop.example.com").body == SHOP_BODY
    assert sites.get("blog.example.com").body == BLOG_BODY

    write_flag(sites.guardd.flag("shop"), {"reason": "Stock count"})
    sites.wait_status("shop", "shop1", "MAINT")
    _is_maintenance_page(sites.get("www.shop.example.com", "/cart"), "shop", "Stock count")
    assert sites.status("blog", "blog1") == "UP"
    blog = sites.get("blog.example.com")
    assert (blog.status, blog.body) == (200, BLOG_BODY)

    sites.guardd.flag("shop").unlink()
    write_flag(sites.guardd.flag("blog"), {"reason": "Theme upgrade"})
    sites.wait_status("blog", "blog1", "DOWN")
    sites.wait_status("shop", "shop1", "UP")
    _is_maintenance_page(sites.get("blog.example.com", "/post/1"), "blog", "Theme upgrade")
    # A name no scope claims reaches the default backend (blog's) and gets blog's
    # page through http.scope: never the outage page while blog is in maintenance.
    _is_maintenance_page(sites.get("127.0.0.1"), "blog", "Theme upgrade")
    shop = sites.get("shop.example.com")
    assert (shop.status, shop.body) == (200, SHOP_BODY)
    assert "guard-maintenance" not in shop.header_names()

    sites.guardd.flag("blog").unlink()
    sites.wait_status("blog", "blog1", "UP")
    assert sites.get("blog.example.com").body == BLOG_BODY
