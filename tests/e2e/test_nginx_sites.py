"""Debian's nginx runs examples/nginx-sites.conf (flag test) and
examples/nginx-gate-sites.conf (gate): two sites on one host, one guardd for both.
One site in maintenance leaves the other untouched, its page is the maintenance page
(never the outage page, even for a Host no scope claims), and a bypass cookie of one
site opens no other."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.sites import running_nginx
from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import Response, StandInApp, get, template, write_flag

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "e2e-sites-secret-0123456789"
SHOP_BODY = b"SHOP APP\n"
BLOG_BODY = b"BLOG APP\n"


@dataclass
class Stack:
    """nginx on ``port`` with a server block per site, one guardd for both."""

    guardd: Guardd
    port: int
    gate: bool

    def get(self, host: str, path: str = "/", **headers: str) -> Response:
        return get(self.port, path, headers={"Host": host, **headers})

    def on(self, scope: str, reason: str) -> None:
        write_flag(self.guardd.flag(scope), {"reason": reason})
        wait_until(
            lambda: self.get(f"{scope}.example.com").header("guard-maintenance") == scope,
            what=f"{scope}'s page through nginx",
        )

    def off(self, scope: str, body: bytes) -> None:
        self.guardd.flag(scope).unlink()
        wait_until(lambda: self.get(f"{scope}.example.com").body == body, what=f"{scope}'s app")


@pytest.fixture(params=["nginx-sites.conf", "nginx-gate-sites.conf"])
def stack(
    request: pytest.FixtureRequest, make_guardd: Callable[..., Guardd], tmp_short: Path
) -> Iterator[Stack]:
    """guardd with two scopes, two stand-in apps and nginx running one example file."""
    tmp_short.chmod(0o755)  # nginx's unprivileged workers stat the flags
    http_port, front_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "http": {"listen": [f"127.0.0.1:{http_port}"]},
            "scopes": {
                "shop": {"hosts": ["shop.example.com"]},
                "blog": {"hosts": ["blog.example.com"]},
            },
            "bypass": {"secret": SECRET, "insecure_cookie": True},
        }
    ).start()
    daemon.root.chmod(0o755)
    name: str = request.param
    with StandInApp(SHOP_BODY) as shop, StandInApp(BLOG_BODY) as blog:
        replacements = {
            "listen 80 default_server;": f"listen 127.0.0.1:{front_port} default_server;",
            "listen 80;": f"listen 127.0.0.1:{front_port};",
            "127.0.0.1:8001": f"127.0.0.1:{shop.port}",
            "127.0.0.1:8002": f"127.0.0.1:{blog.port}",
            "127.0.0.1:8089": f"127.0.0.1:{http_port}",
        }
        if name == "nginx-sites.conf":
            replacements["/var/lib/guardd/"] = f"{daemon.lock_dir}/"
        site = template(EXAMPLES / name, replacements)
        with running_nginx(tmp_short / "nginx", site, front_port):
            yield Stack(daemon, front_port, gate=name == "nginx-gate-sites.conf")


def _maintenance_page(answer: Response, scope: str, reason: str) -> None:
    assert answer.status == 503
    assert answer.header("guard-maintenance") == scope
    assert "Down for maintenance" in answer.text
    assert reason in answer.text


def test_one_site_in_maintenance_leaves_the_other_alone(stack: Stack) -> None:
    """shop on: shop's maintenance page (also for a Host no scope claims, which nginx
    sends to shop's default_server block), blog's app; then the other way round."""
    assert stack.get("shop.example.com").body == SHOP_BODY
    assert stack.get("blog.example.com").body == BLOG_BODY

    stack.on("shop", "Stock count")
    _maintenance_page(stack.get("shop.example.com", "/cart"), "shop", "Stock count")
    _maintenance_page(stack.get("127.0.0.1", "/cart"), "shop", "Stock count")
    _maintenance_page(stack.get("unknown.example.org"), "shop", "Stock count")
    blog = stack.get("blog.example.com", "/post/1")
    assert (blog.status, blog.body) == (200, BLOG_BODY)
    assert "guard-maintenance" not in blog.header_names()
    api = stack.get("shop.example.com", "/api/orders").json()
    assert (api["maintenance"], api["reason"], api["retry_after"]) == (True, "Stock count", 300)

    stack.off("shop", SHOP_BODY)
    stack.on("blog", "Theme upgrade")
    _maintenance_page(stack.get("blog.example.com"), "blog", "Theme upgrade")
    # blog in maintenance does not touch shop, nor what reaches shop's default_server.
    assert stack.get("shop.example.com").body == SHOP_BODY
    assert stack.get("127.0.0.1").body == SHOP_BODY


def test_default_flag_shows_each_site_its_own_page(stack: Stack) -> None:
    """default on: both sites in maintenance, each page naming its own scope."""
    write_flag(stack.guardd.flag("default"), {"reason": "Host reboot"})
    wait_until(
        lambda: stack.get("blog.example.com").header("guard-maintenance") == "blog",
        what="blog's page",
    )
    _maintenance_page(stack.get("shop.example.com"), "shop", "Host reboot")
    _maintenance_page(stack.get("blog.example.com"), "blog", "Host reboot")


@pytest.mark.parametrize("stack", ["nginx-gate-sites.conf"], indirect=True)
def test_gate_bypass_cookie_opens_one_site_only(stack: Stack) -> None:
    """Gate variant: the cookie from shop's bypass URL lets its holder into shop, not blog;
    /.guardd/maintenance.json answers for the block's own site."""
    assert stack.gate
    stack.on("shop", "Stock count")
    stack.on("blog", "Theme upgrade")
    visit = stack.get("shop.example.com", f"/.guardd/bypass/{SECRET}")
    assert visit.status == 302
    cookie = (visit.header("set-cookie") or "").split(";")[0]
    assert cookie.startswith("guardd_bypass=v1.shop.")
    inside = stack.get("shop.example.com", "/cart", Cookie=cookie)
    assert (inside.status, inside.body) == (200, SHOP_BODY)
    _maintenance_page(stack.get("blog.example.com", Cookie=cookie), "blog", "Theme upgrade")
    assert stack.get("shop.example.com", "/.guardd/maintenance.json").json()["scope"] == "shop"
    assert stack.get("blog.example.com", "/.guardd/maintenance.json").json()["scope"] == "blog"
    # A stray Host on shop's default_server block still asks shop's gate.
    _maintenance_page(stack.get("blog.example.org", "/cart"), "shop", "Stock count")
