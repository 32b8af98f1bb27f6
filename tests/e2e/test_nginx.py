"""Debian's nginx runs examples/nginx.conf in front of a stand-in app: while the flag
exists every request gets guardd's maintenance answers; without it, the app."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import Guardd, free_port, require_tool, stop_process, wait_until
from tests.httpclient import Connection, StandInApp, get, template, wait_listening, write_flag

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nginx.conf"

# The test's own main config around the example server block: one worker, and every
# path nginx writes to inside the test's directory.
MAIN_CONFIG = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    include {root}/site.conf;
}}
"""


@dataclass
class Stack:
    """nginx on ``port`` in front of ``app``, with ``guardd`` serving the page."""

    guardd: Guardd
    app: StandInApp
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def stack(make_guardd: Callable[..., Guardd], tmp_short: Path) -> Iterator[Stack]:
    """guardd, a stand-in app and nginx running the example server block."""
    nginx = require_tool("nginx")
    # nginx's workers run unprivileged: like /var/lib/guardd, the flag's directory
    # must be searchable by them.
    tmp_short.chmod(0o755)
    http_port, front_port = free_port(), free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{http_port}"]}}).start()
    daemon.root.chmod(0o755)
    with StandInApp() as app:
        root = tmp_short / "nginx"
        root.mkdir(mode=0o755)
        (root / "site.conf").write_text(
            template(
                EXAMPLE,
                {
                    "listen 80;": f"listen 127.0.0.1:{front_port};",
                    "127.0.0.1:8000": f"127.0.0.1:{app.port}",
                    "127.0.0.1:8089": f"127.0.0.1:{http_port}",
                    "/var/lib/guardd/default.lock": str(daemon.flag()),
                },
            )
        )
        (root / "nginx.conf").write_text(MAIN_CONFIG.format(root=root))
        base = [
            nginx,
            "-p",
            str(root),
            "-e",
            str(root / "error.log"),
            "-c",
            str(root / "nginx.conf"),
        ]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        process = subprocess.Popen(
            base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_listening(front_port)
            yield Stack(daemon, app, front_port, process)
        finally:
            stop_process(process)


def test_page_from_guardd_while_flag_exists(stack: Stack) -> None:
    """Flag on: browsers get guardd's 503 page (marker, Retry-After from until), APIs get
    JSON, the page's poll gets /maintenance.json; flag off: the app answers at once."""
    assert get(stack.port, "/").body == StandInApp.BODY
    # Without the flag, /maintenance.json belongs to the app: that is how the page's
    # poll notices that the site is back.
    assert get(stack.port, "/maintenance.json").body == StandInApp.BODY

    until = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_flag(stack.guardd.flag(), {"reason": "Database <upgrade>", "until": until})
    # nginx switches on its own stat of the flag; guardd's answer follows within ms.
    page = wait_until(
        lambda: (r := get(stack.port, "/cart")).header("guard-maintenance") and r,
        what="guardd's page through nginx",
    )
    assert page.status == 503
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert 7000 < int(page.header("retry-after")) <= 7200
    assert "Database &lt;upgrade&gt;" in page.text

    api = get(stack.port, "/api/cart")
    assert api.status == 503
    assert api.json()["reason"] == "Database <upgrade>"
    status = get(stack.port, "/maintenance.json")
    assert status.status == 200
    assert status.json()["maintenance"] is True
    with Connection(stack.port) as connection:
        posted = connection.request("/checkout", method="POST", body=b"card=4111")
        head = connection.request("/", method="HEAD")
    assert posted.status == 503
    assert posted.header("guard-maintenance") == "default"
    assert head.status == 503
    assert head.body == b""

    stack.guardd.flag().unlink()
    back = get(stack.port, "/cart")
    assert back.status == 200
    assert back.body == StandInApp.BODY


def test_workers_are_unprivileged(stack: Stack) -> None:
    """The flag check works for nginx's unprivileged workers (as in production)."""
    if os.geteuid() != 0:
        pytest.skip("workers only change user when nginx starts as root")
    workers = subprocess.run(
        ["ps", "-o", "user=", "--ppid", str(stack.process.pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert workers
    assert "root" not in workers
    write_flag(stack.guardd.flag(), {"reason": "x"})
    wait_until(
        lambda: get(stack.port, "/").header("guard-maintenance") == "default",
        what="maintenance page",
    )
