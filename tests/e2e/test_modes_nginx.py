"""Debian's nginx runs examples/nginx-gate.conf in front of an application that accepts
writes: in read-only every read reaches the application and no write does; a checkout
mode stops only its paths; the bypass cookie still passes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.sites import CountingApp, running_nginx
from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import Connection, Response, template, write_flag

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "modes-e2e-secret-0123456789"
SCOPES = {"shop": {"modes": {"checkout": {"paths": ["/checkout", "/cart/pay"]}}}}
WRITES = ("POST", "PUT", "PATCH", "DELETE")
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
API = {"Accept": "application/json"}


@dataclass
class Stack:
    guardd: Guardd
    app: CountingApp
    port: int

    def request(self, method: str, path: str, **headers: str) -> Response:
        body = b"item=3" if method in WRITES else b""
        with Connection(self.port) as connection:
            return connection.request(path, method=method, headers=headers, body=body)

    def mode(self, mode: str | None) -> None:
        """Put shop in ``mode`` (None: full maintenance) and wait until nginx shows it."""
        content = {"reason": "database move", **({"mode": mode} if mode else {})}
        write_flag(self.guardd.flag("shop"), content)
        wait_until(
            lambda: (
                self.request("GET", "/.guardd/maintenance.json").json().get("mode") == mode
                and self.request("GET", "/.guardd/maintenance.json").json()["maintenance"]
            ),
            what=f"mode {mode} through nginx",
        )


@pytest.fixture(params=["nginx-gate.conf", "nginx-gate-fast.conf"])
def stack(
    request: pytest.FixtureRequest, make_guardd: Callable[..., Guardd], tmp_short: Path
) -> Iterator[Stack]:
    """guardd (scope shop, a checkout mode, a bypass secret), the app, and nginx running
    each gate example (always asking guardd, or only while a flag exists)."""
    tmp_short.chmod(0o755)
    http_port, front_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "scopes": SCOPES,
            "http": {"listen": [f"127.0.0.1:{http_port}"], "scope": "shop"},
            "bypass": {"secret": SECRET, "insecure_cookie": True},
        }
    ).start()
    app = CountingApp()
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{front_port};",
        "127.0.0.1:8000": f"127.0.0.1:{app.port}",
        "127.0.0.1:8089": f"127.0.0.1:{http_port}",
    }
    if request.param == "nginx-gate-fast.conf":
        replacements["/var/lib/guardd/"] = f"{daemon.lock_dir}/"
        daemon.root.chmod(0o755)
        daemon.lock_dir.chmod(0o755)
    site = template(EXAMPLES / request.param, replacements)
    try:
        with running_nginx(tmp_short / "nginx", site, front_port):
            yield Stack(daemon, app, front_port)
    finally:
        app.close()


def test_read_only_lets_reads_through_and_stops_every_write(stack: Stack) -> None:
    """read-only: GET/HEAD reach the app; POST/PUT/PATCH/DELETE get the maintenance
    answer (HTML for a browser, JSON for an API client) and never reach the app."""
    stack.mode("read-only")
    for path in ("/", "/products", "/checkout"):
        assert stack.request("GET", path).status == 200
    assert stack.request("HEAD", "/products").status == 200
    for method in WRITES:
        page = stack.request(method, "/products", **BROWSER)
        assert page.status == 503, method
        assert page.header("guard-maintenance") == "shop"
        assert "Saving changes is paused" in page.text
        api = stack.request(method, "/api/orders", **API)
        assert api.status == 503
        assert api.json()["paused"] == "Saving changes is paused"
        assert api.json()["reason"] == "database move"
    assert stack.app.writes() == 0
    assert stack.app.seen[("GET", "/products")] == 1
    assert stack.app.seen[("HEAD", "/products")] == 1


def test_checkout_mode_stops_only_its_paths(stack: Stack) -> None:
    """checkout: every method on /checkout and /cart/pay is stopped, the rest passes."""
    stack.mode("checkout")
    assert stack.request("POST", "/cart/add").status == 200
    assert stack.request("GET", "/products").status == 200
    for method, path in (("GET", "/checkout"), ("POST", "/checkout"), ("POST", "/cart/pay")):
        page = stack.request(method, path, **BROWSER)
        assert page.status == 503
        assert "Checkout is paused" in page.text
    assert stack.app.seen[("POST", "/cart/add")] == 1
    assert not any(path in ("/checkout", "/cart/pay") for _, path in stack.app.seen)


def test_bypass_cookie_still_passes_in_a_mode(stack: Stack) -> None:
    """An admin's bypass cookie lets a write through while read-only is in force."""
    stack.mode("read-only")
    issued = stack.request("GET", f"/.guardd/bypass/{SECRET}")
    assert issued.status == 302
    cookie = (issued.header("set-cookie") or "").split(";", 1)[0]
    assert stack.request("POST", "/products", Cookie=cookie).status == 200
    assert stack.request("POST", "/products").status == 503
    assert stack.app.writes() == 1


def test_full_maintenance_and_off(stack: Stack) -> None:
    """Without a mode nothing reaches the app; with the flag gone, everything does."""
    stack.mode(None)
    assert stack.request("GET", "/products").status == 503
    assert "Down for maintenance" in stack.request("GET", "/products", **BROWSER).text
    stack.guardd.flag("shop").unlink()
    wait_until(lambda: stack.request("POST", "/products").status == 200, what="writes again")
    assert stack.app.seen[("GET", "/products")] == 0


def test_gate_without_guardd(stack: Stack, request: pytest.FixtureRequest) -> None:
    """guardd stopped: the fast gate serves the site while no flag exists and fails
    closed (500) once one does; the always-asking gate fails closed at once."""
    stack.guardd.stop()
    fast = "fast" in request.node.callspec.id
    assert stack.request("GET", "/products").status == (200 if fast else 500)
    write_flag(stack.guardd.flag("shop"), {"reason": "r"})
    assert stack.request("GET", "/products").status == 500
    assert stack.app.seen[("GET", "/products")] == (1 if fast else 0)
