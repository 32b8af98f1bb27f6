"""One guardd for every site on the host: the scope of each request (path, Host,
http.scope), per-scope overrides, the named agent port, and 10,000 scopes; on real
sockets to a real guardd, plus the responder's per-scope answers in process."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardd.answers.http.parse import Kind, Persist
from guardd.answers.http.replies import Answers, HttpSettings, HttpShared
from guardd.config.load import parse_config_text
from guardd.core.choices import State
from guardd.core.state import ScopeStatus, Snapshot
from guardd.errors import ConfigError
from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import Connection, Response, get, write_flag

SECRET = "correct-horse-battery-staple"
SITES = {
    "shop": {"hosts": ["shop.example.com", "*.shop.example.com"]},
    "blog": {"hosts": ["blog.example.com", "*.example.com"]},
    "deep": {"hosts": ["*.eu.shop.example.com"]},
}


@dataclass
class Sites:
    """A running guardd answering for several sites on one HTTP port."""

    guardd: Guardd
    port: int

    def get(self, path: str = "/", host: str = "localhost", **headers: str) -> Response:
        return get(self.port, path, headers={"Host": host, **headers})

    def on(self, scope: str, **content: Any) -> None:
        """Turn ``scope`` on and wait until its own health path says so."""
        write_flag(self.guardd.flag(scope), content)
        self.wait(scope, "on")

    def off(self, scope: str) -> None:
        self.guardd.flag(scope).unlink()
        self.wait(scope, "off")

    def wait(self, scope: str, state: str) -> None:
        wait_until(
            lambda: self.get(f"/healthz/{scope}").json()["state"] == state,
            what=f"{scope} {state}",
        )


@pytest.fixture
def sites(make_guardd: Callable[..., Guardd]) -> Callable[..., Sites]:
    """Start a guardd with the SITES scopes (plus ``scopes`` overrides) on a free port."""

    def factory(scopes: dict[str, Any] | None = None, **settings: Any) -> Sites:
        port = free_port()
        http = {"listen": [f"127.0.0.1:{port}"], **settings.pop("http", {})}
        merged = {name: dict(value) for name, value in SITES.items()}
        for name, value in (scopes or {}).items():
            merged.setdefault(name, {}).update(value)
        daemon = make_guardd({"http": http, "scopes": merged, **settings}).start()
        return Sites(daemon, port)

    return factory


# --------------------------------------------------------------------------- choosing the scope


def test_health_path_names_the_scope(sites: Callable[..., Sites]) -> None:
    """/healthz/<scope> answers for that scope only, whatever the Host."""
    site = sites()
    site.on("blog", reason="blog upgrade")
    blog = site.get("/healthz/blog", host="shop.example.com")
    assert blog.status == 503
    assert blog.json()["scope"] == "blog"
    assert blog.header("Guard-Maintenance") == "blog"
    shop = site.get("/healthz/shop", host="blog.example.com")
    assert shop.status == 200
    assert shop.json()["scope"] == "shop"
    assert shop.header("Guard-Maintenance") is None


def test_unknown_scope_in_a_path_is_404_json(sites: Callable[..., Sites]) -> None:
    """An unknown scope after the health or gate path: 404 with a JSON error."""
    site = sites()
    for path in ("/healthz/nope", "/gate/nope", "/healthz/shop/x", "/healthz/"):
        answer = site.get(path)
        assert answer.status == 404, path
        assert answer.header("Content-Type") == "application/json"
        assert answer.json()["error"]["code"] == "unknown_scope"


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("shop.example.com", "shop"),  # exact
        ("SHOP.Example.COM:8443", "shop"),  # case and port ignored
        ("shop.example.com.", "shop"),  # final dot
        ("www.shop.example.com", "shop"),  # wildcard
        ("a.b.shop.example.com", "shop"),  # wildcard, any depth
        ("x.eu.shop.example.com", "deep"),  # the longest wildcard wins
        ("blog.example.com", "blog"),  # exact beats the shorter wildcard of blog
        ("news.example.com", "blog"),  # wildcard
        ("example.com", "default"),  # "*.example.com" is only names below it
        ("other.org", "default"),  # unknown: http.scope
        ("127.0.0.1:8089", "default"),
        ("[::1]:8089", "default"),
    ],
)
def test_host_header_chooses_the_scope(sites: Callable[..., Sites], host: str, scope: str) -> None:
    """Host vs scopes.<s>.hosts: exact beats wildcard, longest wildcard wins, else http.scope."""
    site = sites()
    for path in ("/maintenance.json", "/.guardd/maintenance.json", "/healthz"):
        assert site.get(path, host=host).json()["scope"] == scope, path


def test_absolute_form_target_names_the_host(sites: Callable[..., Sites]) -> None:
    """GET http://shop.example.com/... is shop's, whatever the Host header says."""
    site = sites()
    with Connection(site.port) as connection:
        connection.send(
            b"GET http://Shop.Example.com:80/maintenance.json HTTP/1.1\r\n"
            b"Host: blog.example.com\r\n\r\n"
        )
        assert connection.read_response().json()["scope"] == "shop"


def test_no_host_header_falls_to_http_scope(sites: Callable[..., Sites]) -> None:
    """HTTP/1.0 without Host: http.scope answers."""
    site = sites(http={"scope": "shop"})
    with Connection(site.port) as connection:
        connection.send(b"GET /maintenance.json HTTP/1.0\r\n\r\n")
        assert connection.read_response().json()["scope"] == "shop"


def test_maintenance_of_one_site_leaves_the_other_untouched(sites: Callable[..., Sites]) -> None:
    """blog on: blog's page is the maintenance page; shop (http.scope) keeps its outage
    page, its health and its status document, byte for byte."""
    site = sites(http={"scope": "shop"})
    before = {
        path: site.get(path, host="shop.example.com")
        for path in ("/", "/healthz", "/maintenance.json")
    }
    site.on("blog", reason="blog upgrade")
    page = site.get("/", host="blog.example.com")
    assert page.status == 503
    assert page.header("Guard-Maintenance") == "blog"
    assert "Down for maintenance" in page.text
    assert "blog upgrade" in page.text
    for path, answer in before.items():
        now = site.get(path, host="shop.example.com")
        assert (now.status, now.body) == (answer.status, answer.body), path
        assert now.header("Guard-Maintenance") is None
    outage = site.get("/", host="shop.example.com")
    assert "Temporarily unavailable" in outage.text
    # Before the change, a host mapped to nothing answered for http.scope only.
    assert site.get("/", host="unknown.org").header("Guard-Maintenance") is None


def test_default_flag_puts_every_site_in_maintenance(sites: Callable[..., Sites]) -> None:
    """default on: every site's page and health say maintenance, each naming its scope."""
    site = sites()
    write_flag(site.guardd.flag("default"), {"reason": "host reboot"})
    site.wait("shop", "on")
    site.wait("blog", "on")
    assert site.get("/", host="news.example.com").header("Guard-Maintenance") == "blog"
    assert site.get("/healthz/shop").header("Guard-Maintenance") == "shop"


# --------------------------------------------------------------------------- per-scope settings


def test_per_scope_overrides(sites: Callable[..., Sites], tmp_short: Path) -> None:
    """policy, page_status, retry_after, page_template and api_prefixes per scope."""
    template = tmp_short / "shop.html"
    template.write_text("<p>shop is down: {reason}</p>")
    site = sites(
        scopes={
            "shop": {
                "policy": "stay",
                "page_status": 500,
                "retry_after": 42,
                "page_template": str(template),
                "api_prefixes": ["/v2/"],
            }
        }
    )
    site.on("shop", reason="stock count")
    site.on("blog", reason="upgrade")
    shop_health = site.get("/healthz/shop")
    assert (shop_health.status, shop_health.json()["status"]) == (200, "warn")
    assert site.get("/healthz/blog").status == 503
    shop_page = site.get("/", host="shop.example.com")
    assert shop_page.status == 500
    assert shop_page.header("Retry-After") == "42"
    assert shop_page.text == "<p>shop is down: stock count</p>"
    assert site.get("/v2/items", host="shop.example.com").header("Content-Type") == (
        "application/json"
    )
    assert "text/html" in (
        site.get("/api/items", host="shop.example.com").header("Content-Type") or ""
    )
    blog_page = site.get("/", host="blog.example.com")
    assert blog_page.status == 503
    assert blog_page.header("Retry-After") == "300"
    assert "Down for maintenance" in blog_page.text
    assert site.get("/api/x", host="blog.example.com").header("Content-Type") == "application/json"


def test_bypass_cookie_of_one_site_is_useless_on_another(sites: Callable[..., Sites]) -> None:
    """One global secret: the cookie set on shop lets through shop's gate only."""
    site = sites(bypass={"secret": SECRET, "insecure_cookie": True})
    site.on("shop")
    site.on("blog")
    visit = site.get(f"/.guardd/bypass/{SECRET}", host="shop.example.com")
    assert visit.status == 302
    cookie = (visit.header("Set-Cookie") or "").split(";")[0]
    assert cookie.startswith("guardd_bypass=v1.shop.")
    passed = site.get("/gate", host="shop.example.com", Cookie=cookie)
    assert (passed.status, passed.header("Guard-Bypass")) == (204, "cookie")
    assert site.get("/gate/shop", host="blog.example.com", Cookie=cookie).status == 204
    assert site.get("/gate", host="blog.example.com", Cookie=cookie).status == 403
    assert site.get("/gate/blog", host="shop.example.com", Cookie=cookie).status == 403


def test_per_scope_bypass_replaces_the_global_one(sites: Callable[..., Sites]) -> None:
    """scopes.shop.bypass: shop's own secret and paths; blog keeps the global section."""
    other = "shop-only-secret-0123456789"
    site = sites(
        scopes={"shop": {"bypass": {"secret": other, "paths": ["/static/"]}}},
        bypass={"secret": SECRET, "paths": ["/health$"]},
    )
    site.on("shop")
    site.on("blog")
    assert site.get(f"/.guardd/bypass/{SECRET}", host="shop.example.com").status == 404
    assert site.get(f"/.guardd/bypass/{other}", host="shop.example.com").status == 302
    assert site.get(f"/.guardd/bypass/{other}", host="blog.example.com").status == 404
    assert site.get(f"/.guardd/bypass/{SECRET}", host="blog.example.com").status == 302

    def gate(scope: str, uri: str) -> int:
        return site.get(f"/gate/{scope}", **{"X-Original-URI": uri}).status

    assert (gate("shop", "/static/a.css"), gate("shop", "/health")) == (204, 403)
    assert (gate("blog", "/static/a.css"), gate("blog", "/health")) == (403, 204)


def test_gate_scope_in_path_wins_over_host(sites: Callable[..., Sites]) -> None:
    """A client cannot pick a scope that lets it through: /gate/<scope> ignores Host,
    and a request whose Host maps nowhere gets http.scope's gate (the pitfall)."""
    site = sites()
    site.on("shop")
    assert site.get("/gate/shop", host="blog.example.com").status == 403
    assert site.get("/gate", host="shop.example.com").status == 403
    # The default_server pitfall: gated by Host alone, an unknown Host asks the
    # gate of http.scope (default, off here) and passes.
    assert site.get("/gate", host="evil.org").status == 204
    assert site.get("/gate/shop", host="evil.org").status == 403


# --------------------------------------------------------------------------- agent


def _agent_read(port: int, send: bytes, *, shut: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if send:
            sock.sendall(send)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def test_named_agent_answers_per_scope(make_guardd: Callable[..., Guardd]) -> None:
    """agent.named_listen: the line for the named scope, by its policy and withdraw_as."""
    port, plain = free_port(), free_port()
    daemon = make_guardd(
        {
            "scopes": {
                "shop": {"withdraw_as": "drain"},
                "blog": {"policy": "stay"},
                "wiki": {},
            },
            "agent": {"named_listen": [f"127.0.0.1:{port}"], "listen": [f"127.0.0.1:{plain}"]},
        }
    ).start()
    for scope in ("shop", "blog", "wiki"):
        write_flag(daemon.flag(scope), {"reason": f"{scope} work"})
    wait_until(
        lambda: all(
            daemon.request({"op": "status"})["scopes"][scope]["state"] == "on"
            for scope in ("shop", "blog", "wiki")
        ),
        what="three scopes on",
    )
    assert _agent_read(port, b"shop\n") == b"drain #shop work\n"  # its own withdraw_as
    assert _agent_read(port, b"blog\n") == b"up ready 100%\n"  # its own policy: stay
    assert _agent_read(port, b"wiki\r\n") == b"maint #wiki work\n"  # the global withdraw_as
    assert _agent_read(port, b"default\n") == b"up ready 100%\n"
    assert _agent_read(port, b"nope\n") == b"down #unknown scope\n"
    assert _agent_read(port, b"wiki", shut=True) == b"maint #wiki work\n"
    # agent.listen keeps answering for agent.scope (default, off).
    assert _agent_read(plain, b"") == b"up ready 100%\n"
    daemon.flag("shop").unlink()
    wait_until(lambda: _agent_read(port, b"shop\n") == b"up ready 100%\n", what="shop off")


def test_named_agent_without_a_name_closes_after_two_seconds(
    make_guardd: Callable[..., Guardd],
) -> None:
    """No line within 2 s: the connection closes with no answer (HAProxy keeps the state)."""
    port = free_port()
    daemon = make_guardd({"agent": {"named_listen": [f"127.0.0.1:{port}"]}}).start()
    started = time.monotonic()
    assert _agent_read(port, b"") == b""
    assert 1.5 <= time.monotonic() - started < 5
    wait_until(lambda: "named no scope" in daemon.log(), what="the warning")


# --------------------------------------------------------------------------- configuration


def _config(data: dict[str, Any]) -> Any:
    return parse_config_text(yaml.safe_dump({"lock_dir": "/tmp/x", **data}), source="c.yaml")


def test_one_host_claimed_by_two_scopes_is_a_config_error() -> None:
    """A host name in two scopes: one message naming both."""
    with pytest.raises(ConfigError) as caught:
        _config({"scopes": {"a": {"hosts": ["x.example.com"]}, "b": {"hosts": ["X.example.com."]}}})
    message = str(caught.value)
    assert "scopes.b.hosts[0]" in message
    assert "'a'" in message and "'b'" in message


@pytest.mark.parametrize(
    ("scopes", "needle"),
    [
        ({"a": {"hosts": ["bad host"]}}, "scopes.a.hosts[0]"),
        ({"a": {"hosts": ["x.com:80"]}}, "scopes.a.hosts[0]"),
        ({"a": {"policy": "fleet"}}, "scopes.a.policy: 'fleet' needs fleet.endpoints"),
        ({"a": {"withdraw_as": "drian"}}, "did you mean 'drain'"),
        ({"a": {"page_status": 204}}, "scopes.a.page_status"),
        ({"a": {"bypass": {"secret": "short"}}}, "scopes.a.bypass.secret"),
        ({"a": {"bypass": {"secrt": "x"}}}, "scopes.a.bypass.secrt"),
        ({"a": {"polcy": "stay"}}, "did you mean 'scopes.a.policy'"),
    ],
)
def test_scope_settings_are_validated(scopes: dict[str, Any], needle: str) -> None:
    """Bad per-scope settings: one message naming the key."""
    with pytest.raises(ConfigError) as caught:
        _config({"scopes": scopes})
    assert needle in str(caught.value)


# --------------------------------------------------------------------------- rebuilds


def _status(scope: str, state: State) -> ScopeStatus:
    return ScopeStatus(scope=scope, state=state, since=None, until=None, reason=None, jobs=0)


def test_a_flip_rebuilds_only_that_scopes_answers() -> None:
    """Snapshot.changed = {blog}: blog's answers are rebuilt, shop's stay the same objects."""
    config = _config({"scopes": {"shop": {}, "blog": {}}})
    statuses = {name: _status(name, "off") for name in config.scopes}
    shared = HttpShared(HttpSettings(config, {}), Snapshot(statuses=statuses))
    shop, blog = shared.answers_for("shop"), shared.answers_for("blog")
    shop_bytes = shop.wire(Kind.HEALTH, False, Persist.KEEP, time.time())
    builds = Answers.builds
    flipped = {**statuses, "blog": _status("blog", "on")}
    changed = frozenset({"blog"})
    shared.publish(shared.settings, Snapshot(statuses=flipped, changed=changed), changed)
    assert shared.answers_for("shop") is shop
    assert shop.wire(Kind.HEALTH, False, Persist.KEEP, time.time()) == shop_bytes
    new_blog = shared.answers_for("blog")
    assert new_blog is not blog
    assert new_blog.maintenance
    assert Answers.builds == builds + 1
    # "Anything may have changed" (a flip of default) drops every scope's answers.
    shared.publish(shared.settings, Snapshot(statuses=flipped), None)
    assert shared.answers_for("shop") is not shop


# --------------------------------------------------------------------------- scale


@pytest.mark.heavy
def test_ten_thousand_scopes(make_guardd: Callable[..., Guardd]) -> None:
    """10,000 scopes with a host name each: guardd starts, answers each site by path and
    by Host, flips one without touching another, and holds as many inotify watches as
    a guardd with one scope."""
    port = free_port()
    count = 10_000
    daemon = make_guardd(
        {
            "http": {"listen": [f"127.0.0.1:{port}"]},
            "scopes": {f"s{i}": {"hosts": [f"s{i}.example.com"]} for i in range(count)},
        }
    )
    daemon.start(wait_ready=False)
    wait_until(lambda: "ready" in daemon.log(), timeout=120, what="guardd ready")
    site = Sites(daemon, port)
    assert site.get("/healthz/s9999").json()["scope"] == "s9999"
    assert site.get("/maintenance.json", host="s4321.example.com").json()["scope"] == "s4321"
    untouched = site.get("/", host="s7.example.com")
    site.on("s5000", reason="one of many")
    page = site.get("/", host="s5000.example.com")
    assert page.header("Guard-Maintenance") == "s5000"
    again = site.get("/", host="s7.example.com")
    assert (again.status, again.body) == (untouched.status, untouched.body)
    assert site.get("/healthz/s4999").status == 200
    # Every flag sits in one lock_dir: the watches are those of one scope's guardd
    # (its directories, and the ones above them), not one per flag.
    one = make_guardd(
        {"http": {"listen": [f"127.0.0.1:{free_port()}"]}, "scopes": {"s0": {}}}
    ).start()
    assert _inotify_watches(daemon) == _inotify_watches(one) <= 10


def _inotify_watches(daemon: Guardd) -> int:
    """Watches held by every inotify instance of the guardd process."""
    assert daemon.process is not None
    fdinfo = Path(f"/proc/{daemon.process.pid}/fdinfo")
    return sum(path.read_text().count("inotify wd:") for path in fdinfo.iterdir() if path.is_file())


def test_scope_flag_removed_while_default_is_on_stays_on(sites: Callable[..., Sites]) -> None:
    """A flip of one scope is published alone, yet still under default's flag: shop's own
    flag removed while default is on leaves shop on (503), and default's removal frees it."""
    site = sites()
    write_flag(site.guardd.flag("default"), {"reason": "host work"})
    site.wait("shop", "on")
    write_flag(site.guardd.flag("shop"), {"reason": "own"})
    wait_until(lambda: site.get("/healthz/shop").json()["reason"] == "own", what="shop's reason")
    site.guardd.flag("shop").unlink()
    wait_until(
        lambda: site.get("/healthz/shop").json()["reason"] == "host work", what="default's reason"
    )
    assert site.get("/healthz/shop").status == 503
    site.guardd.flag("default").unlink()
    site.wait("shop", "off")
    site.wait("blog", "off")
