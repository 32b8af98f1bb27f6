"""Debian's nginx runs examples/nginx-gate.conf in front of a stand-in app, asking
guardd's gate (auth_request) before every request: users get the maintenance page,
exempt paths, allowed networks behind a trusted proxy and admins with a bypass cookie
reach the app, and removing the flag lets everyone through again."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_nginx import MAIN_CONFIG
from tests.helpers import EVENT_TIMEOUT, Guardd, free_port, require_tool, stop_process, wait_until
from tests.httpclient import Connection, Response, StandInApp, template, wait_listening
from tests.httpclient import write_flag as write_flag_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nginx-gate.conf"
SECRET = "e2e-secret-0123456789abcdef"
BYPASS = {
    "paths": ["/static/", "/status$"],
    "cidrs": ["10.1.0.0/16", "2001:db8::/32"],
    # nginx connects to guardd from 127.0.0.1; so does the test when it plays a
    # load balancer in front of nginx. 127.0.0.2 is an ordinary, untrusted client.
    "trusted_proxies": ["127.0.0.1"],
    "secret": SECRET,
    "insecure_cookie": True,
}


class ClientAt(Connection):
    """A connection from a chosen loopback source address (127.0.0.0/8 is all local)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=EVENT_TIMEOUT, source_address=(source, 0)
        )
        self.buffer = b""


@dataclass
class Stack:
    """nginx on ``port`` in front of ``app``, asking ``guardd``'s gate."""

    guardd: Guardd
    app: StandInApp
    port: int

    def get(self, path: str = "/", *, source: str = "127.0.0.2", **headers: str) -> Response:
        """One request from ``source`` (an untrusted client unless told otherwise)."""
        with ClientAt(self.port, source) as connection:
            return connection.request(path, headers=headers)

    def on(self) -> None:
        """Put the scope in maintenance and wait until the gate says so through nginx."""
        write_flag_file(self.guardd.flag(), {"reason": "gate test"})
        wait_until(
            lambda: self.get("/").header("guard-maintenance") == "default",
            what="maintenance page through nginx",
        )


@pytest.fixture
def stack(make_guardd: Callable[..., Guardd], tmp_short: Path) -> Iterator[Stack]:
    """guardd with bypass rules, a stand-in app and nginx running the example file."""
    nginx = require_tool("nginx")
    tmp_short.chmod(0o755)  # nginx's unprivileged workers reach their temp dirs
    http_port, front_port = free_port(), free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{http_port}"]}, "bypass": BYPASS}).start()
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
                },
            )
        )
        (root / "nginx.conf").write_text(MAIN_CONFIG.format(root=root))
        base = [nginx, "-p", str(root), "-e", str(root / "error.log")]
        base += ["-c", str(root / "nginx.conf")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        process = subprocess.Popen(
            base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_listening(front_port)
            yield Stack(daemon, app, front_port)
        finally:
            stop_process(process)


def test_users_get_the_page_and_flag_removal_restores_the_app(stack: Stack) -> None:
    """Off: the app. On: guardd's 503 page with Guard-Maintenance (JSON for APIs,
    /maintenance.json for the page's poll). Flag removed: the app again at once."""
    assert stack.get("/cart").body == StandInApp.BODY
    stack.on()
    page = stack.get("/cart?item=3")
    assert page.status == 503
    assert page.header("guard-maintenance") == "default"
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert "gate test" in page.text
    api = stack.get("/api/orders")
    assert api.status == 503
    assert api.json()["maintenance"] is True
    status = stack.get("/maintenance.json")
    assert status.status == 200
    assert status.json()["state"] == "on"
    with ClientAt(stack.port, "127.0.0.2") as connection:
        posted = connection.request("/checkout", method="POST", body=b"card=4111")
    assert posted.status == 503
    assert posted.header("guard-maintenance") == "default"

    stack.guardd.flag().unlink()
    wait_until(lambda: stack.get("/cart").body == StandInApp.BODY, what="the app again")
    assert stack.get("/maintenance.json").body == StandInApp.BODY


@pytest.mark.parametrize("path", ["/static/app.css", "/static/img/logo.png?v=2", "/status"])
def test_exempt_paths_reach_the_app(stack: Stack, path: str) -> None:
    """bypass.paths ("/static/", "/status$") reach the app during maintenance."""
    stack.on()
    response = stack.get(path)
    assert response.status == 200
    assert response.body == StandInApp.BODY


@pytest.mark.parametrize(
    "path", ["/status/details", "/statusx", "/static/../admin", "/static/..%2Fadmin", "/x/static/"]
)
def test_near_misses_of_exempt_paths_get_the_page(stack: Stack, path: str) -> None:
    """Paths that only look exempt (anchored match, dot segments, encoded slash): the page."""
    stack.on()
    response = stack.get(path)
    assert response.status == 503
    assert response.header("guard-maintenance") == "default"


def test_bypass_cookie_through_nginx(stack: Stack) -> None:
    """/.guardd/bypass/<secret> through nginx sets the cookie and redirects to /; with
    it the admin reaches the app while everyone else gets the page."""
    stack.on()
    visit = stack.get(f"/.guardd/bypass/{SECRET}")
    assert visit.status == 302
    assert visit.header("location") == "/"
    set_cookie = visit.header("set-cookie")
    assert set_cookie is not None
    attributes = [part.strip() for part in set_cookie.split(";")]
    assert {"HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"} <= set(attributes)
    assert "Secure" not in attributes  # insecure_cookie: the test speaks plain HTTP
    cookie = attributes[0]
    assert cookie.startswith("guardd_bypass=v1.default.")

    admin = stack.get("/admin", Cookie=f"theme=dark; {cookie}")
    assert admin.status == 200
    assert admin.body == StandInApp.BODY
    assert stack.get("/admin").status == 503
    tampered = cookie[:-1] + ("A" if cookie[-1] != "A" else "B")
    assert stack.get("/admin", Cookie=tampered).status == 503


def test_wrong_secret_is_the_same_404_as_any_unknown_guardd_path(stack: Stack) -> None:
    """A wrong secret through nginx: guardd's plain 404, byte for byte that of any
    other /.guardd/ path, and no cookie."""
    wrong = stack.get("/.guardd/bypass/" + "x" * len(SECRET))
    other = stack.get("/.guardd/nothing-here")
    assert wrong.status == other.status == 404
    assert wrong.body == other.body
    assert "set-cookie" not in wrong.header_names()
    assert sorted(wrong.header_names()) == sorted(other.header_names())


def test_allowed_network_behind_a_trusted_proxy(stack: Stack) -> None:
    """A client in bypass.cidrs, forwarded by a trusted proxy (127.0.0.1 playing the
    load balancer in front of nginx), reaches the app; one outside them does not."""
    stack.on()
    allowed = stack.get("/admin", source="127.0.0.1", **{"X-Forwarded-For": "10.1.2.3"})
    assert allowed.status == 200
    assert allowed.body == StandInApp.BODY
    outside = stack.get("/admin", source="127.0.0.1", **{"X-Forwarded-For": "10.2.0.1"})
    assert outside.status == 503
    assert stack.get("/admin", source="127.0.0.1").status == 503


def test_spoofed_forwarded_for_from_an_untrusted_client_is_ignored(stack: Stack) -> None:
    """An ordinary client (127.0.0.2) claiming X-Forwarded-For: 10.1.2.3 still gets the page:
    nginx appends its real address, which is where the untrusted part of the chain starts."""
    stack.on()
    spoofed = stack.get("/admin", **{"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"})
    assert spoofed.status == 503
    assert spoofed.header("guard-maintenance") == "default"


def test_gate_fails_closed_without_guardd(stack: Stack) -> None:
    """guardd stopped: nginx cannot ask the gate and answers 500 (documented: fail closed)."""
    code, _ = stack.guardd.stop()
    assert code == 0
    assert stack.get("/cart").status == 500


def test_gate_location_is_internal(stack: Stack) -> None:
    """Clients cannot call the gate location themselves through nginx."""
    assert stack.get("/.guardd-gate").status == 404
    assert stack.get("/.guardd-gate", source="127.0.0.1").status == 404
