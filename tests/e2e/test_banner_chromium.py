"""Headless Chromium loads an application page through nginx with guardd's banner
injected (examples/nginx-banner.conf) under a strict page CSP: the upcoming-window,
mode and bypass banners show their text in the visitor's time zone, move none of the
page's own content, and stay dismissed across a reload. Screenshots (light and dark)
are written to test-artifacts/banner/ (or $GUARDD_ARTIFACTS/banner/)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.sites import STRICT_CSP, CountingApp, running_nginx
from tests.e2e.test_page_chromium import DevTools, browser_env
from tests.helpers import Guardd, command, free_port, require_tool, wait_until
from tests.httpclient import template, write_flag

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "banner-e2e-secret-0123456789"
ARTIFACTS = Path(
    os.environ.get("GUARDD_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts"
)
DARK = "#2b2111"


@dataclass
class Visitor:
    """A browser tab on the site, in Kolkata (UTC+5:30)."""

    browser: DevTools
    session: str
    url: str

    def js(self, expression: str) -> Any:
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        return result.get("result", {}).get("value")

    def load(self, path: str = "/") -> None:
        self.browser.send("Page.navigate", {"url": self.url + path}, session=self.session)
        wait_until(
            lambda: self.js(
                "document.readyState === 'complete' && !!document.getElementById('content')"
            ),
            what="the application page",
        )

    def banner(self) -> str:
        """The banner's text once it shows (fails if it does not)."""
        text: str = wait_until(
            lambda: self.js("(document.getElementById('guardd-banner') || {}).innerText"),
            what="the banner",
        )
        return text

    def silent(self) -> bool:
        return bool(self.js("!document.getElementById('guardd-banner')"))

    def content_box(self) -> list[float]:
        """Where the page's own content sits: left, top and width of <main>."""
        box: list[float] = self.js(
            "(() => { const r = document.getElementById('content').getBoundingClientRect();"
            " return [r.left, r.top, r.width]; })()"
        )
        return box

    def scheme(self, dark: bool) -> None:
        value = "dark" if dark else "light"
        self.browser.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": value}]},
            session=self.session,
        )

    def screenshot(self, name: str) -> Path:
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)
        path = ARTIFACTS / "banner" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@dataclass
class Site:
    guardd: Guardd
    app: CountingApp
    port: int

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command("guardctl"), *args],
            env={**os.environ, "GUARDD_CONFIG": str(self.guardd.config_path)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        reply: dict[str, Any] = self.guardd.request({"op": "status"})
        return reply


@pytest.fixture
def site(make_guardd: Callable[..., Guardd], tmp_short: Path) -> Iterator[Site]:
    """guardd, an application page with a strict CSP, nginx with the banner injected."""
    tmp_short.chmod(0o755)
    http_port, front_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "scopes": {"shop": None},
            "http": {"listen": [f"127.0.0.1:{http_port}"], "scope": "shop"},
            "bypass": {"secret": SECRET, "insecure_cookie": True},
        }
    ).start()
    app = CountingApp(csp=STRICT_CSP)
    root = tmp_short / "nginx"
    banner_conf = tmp_short / "guardd-banner.conf"
    banner_conf.write_text((EXAMPLES / "nginx-banner.conf").read_text())
    site_conf = template(
        EXAMPLES / "nginx-gate.conf",
        {
            "listen 80;": f"listen 127.0.0.1:{front_port};",
            "127.0.0.1:8000": f"127.0.0.1:{app.port}",
            "127.0.0.1:8089": f"127.0.0.1:{http_port}",
            "# include /etc/nginx/snippets/guardd-banner.conf;": f"include {banner_conf};",
        },
    )
    try:
        with running_nginx(root, site_conf, front_port):
            yield Site(daemon, app, front_port)
    finally:
        app.close()


@pytest.fixture
def visitor(site: Site, tmp_short: Path) -> Iterator[Visitor]:
    chromium = require_tool("chromium")
    browser = DevTools(chromium, tmp_short / "profile", browser_env("Asia/Kolkata"))
    try:
        session = browser.open("about:blank")
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1000, "height": 640, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        yield Visitor(browser, session, f"http://127.0.0.1:{site.port}")
    finally:
        browser.close()


def test_upcoming_window_banner_in_local_time_without_shifting_content(
    site: Site, visitor: Visitor
) -> None:
    """A window in its notice period: the banner names it in the visitor's time zone
    (light and dark), the page's own content does not move, and a dismissal (keyboard)
    survives a reload."""
    visitor.load()
    wait_until(lambda: visitor.js("!!document.querySelector('script[src=\"/.guardd/banner.js\"]')"))
    visitor.js("new Promise(r => setTimeout(r, 1500))")  # its first poll has answered
    assert visitor.silent()  # nothing to say: no element at all
    quiet_box = visitor.content_box()

    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0, second=0)
    done = site.ctl(
        "schedule",
        "shop",
        "--at",
        start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--for",
        "2h",
        "--reason",
        "kernel update",
        "--notice",
        "48h",
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: site.status().get("upcoming"), what="the window announced")

    visitor.scheme(dark=False)
    visitor.load()
    text = visitor.banner()
    assert "Planned maintenance" in text and "kernel update" in text
    # 12:00 UTC is 17:30 in Kolkata: shown in the visitor's zone, not the server's.
    assert "05:30 PM" in text and "GMT+5:30" in text
    assert visitor.js("document.getElementById('guardd-banner').getAttribute('role')") == "status"
    assert visitor.content_box() == quiet_box
    assert visitor.js("document.documentElement.scrollWidth <= window.innerWidth")
    visitor.screenshot("upcoming-light")

    visitor.scheme(dark=True)
    visitor.load()
    visitor.banner()
    background = visitor.js(
        "getComputedStyle(document.getElementById('guardd-banner')).backgroundColor"
    )
    assert background == "rgb(43, 33, 17)"  # DARK
    visitor.screenshot("upcoming-dark")

    # Keyboard only: focus the button, Escape dismisses; a reload keeps it dismissed.
    visitor.js("document.querySelector('#guardd-banner button').focus()")
    for kind in ("keyDown", "keyUp"):
        visitor.browser.send(
            "Input.dispatchKeyEvent",
            {"type": kind, "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27},
            session=visitor.session,
        )
    wait_until(visitor.silent, what="the banner dismissed")
    visitor.load()
    visitor.js("new Promise(r => setTimeout(r, 1500))")
    assert visitor.silent()


def test_mode_banner_says_what_is_paused(site: Site, visitor: Visitor) -> None:
    """While read-only is in force, pages (reads pass) carry a banner saying so."""
    until = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_flag(
        site.guardd.flag("shop"), {"mode": "read-only", "reason": "database move", "until": until}
    )
    wait_until(lambda: site.status()["scopes"]["shop"]["mode"] == "read-only")
    for dark in (False, True):
        visitor.scheme(dark=dark)
        visitor.load()
        text = visitor.banner()
        assert "Saving changes is paused: database move" in text
        assert "Back by" in text
        visitor.screenshot("mode-dark" if dark else "mode-light")
    assert site.app.seen[("GET", "/")] >= 2


def test_bypass_banner_for_a_visitor_passing_the_gate(site: Site, visitor: Visitor) -> None:
    """In full maintenance an admin with the bypass cookie sees the application, with a
    banner saying it is in maintenance; without the cookie, the maintenance page."""
    write_flag(site.guardd.flag("shop"), {"reason": "new servers"})
    wait_until(lambda: site.status()["scopes"]["shop"]["state"] == "on")
    visitor.browser.send(
        "Page.navigate", {"url": visitor.url + f"/.guardd/bypass/{SECRET}"}, session=visitor.session
    )
    wait_until(
        lambda: visitor.js(
            "document.readyState === 'complete' && !!document.getElementById('content')"
        ),
        what="the application behind the gate",
    )
    for dark in (False, True):
        visitor.scheme(dark=dark)
        visitor.load()
        text = visitor.banner()
        assert "You are seeing this site during maintenance (new servers)" in text
        visitor.screenshot("bypass-dark" if dark else "bypass-light")
    visitor.browser.send("Network.clearBrowserCookies", session=visitor.session)
    visitor.browser.send("Page.navigate", {"url": visitor.url + "/"}, session=visitor.session)
    wait_until(
        lambda: (
            "Down for maintenance" in (visitor.js("document.body && document.body.innerText") or "")
        ),
        what="the maintenance page without the cookie",
    )
    assert json.loads(json.dumps(site.app.seen.get(("GET", "/"), 0))) >= 2
