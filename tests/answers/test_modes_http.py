"""Partial maintenance and the banner on the HTTP responder of a real guardd."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.answers.test_http import Served, serve  # noqa: F401 -- the fixture, reused
from tests.helpers import wait_until

GATE_MODES = {"shop": {"modes": {"checkout": {"paths": ["/checkout", "/cart/pay"]}}}}
SECRET = "s3cret-for-the-mode-tests"


@pytest.fixture
def shop(serve: Callable[..., Served]) -> Served:  # noqa: F811 -- uses the imported fixture
    """guardd answering for scope shop, with a checkout mode and a bypass secret."""
    return serve(
        {"scope": "shop"},
        scopes=GATE_MODES,
        bypass={"secret": SECRET, "insecure_cookie": True},
    )


def gate(served: Served, method: str | None, uri: str, **headers: str) -> tuple[int, str | None]:
    sent = {"X-Original-URI": uri, **headers}
    if method is not None:
        sent["X-Original-Method"] = method
    response = served.get("/gate", headers=sent)
    return response.status, response.header("guard-mode")


def test_read_only_gate_passes_reads_and_stops_writes(shop: Served) -> None:
    """read-only: GET/HEAD pass with Guard-Mode, writes get 403, no method is a write."""
    shop.on("shop", mode="read-only", reason="database move")
    assert gate(shop, "GET", "/products") == (204, "read-only")
    assert gate(shop, "HEAD", "/") == (204, "read-only")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert gate(shop, method, "/products") == (403, None)
    assert gate(shop, None, "/products") == (403, None)  # fail safe


def test_checkout_mode_stops_only_its_paths(shop: Served) -> None:
    """A path mode stops any method on its paths (normalised) and nothing else."""
    shop.on("shop", mode="checkout")
    assert gate(shop, "GET", "/checkout/step1") == (403, None)
    assert gate(shop, "POST", "/cart/pay") == (403, None)
    assert gate(shop, "GET", "/x/../checkout") == (403, None)
    assert gate(shop, "POST", "/cart/add") == (204, "checkout")
    assert gate(shop, "GET", "/") == (204, "checkout")


def test_full_maintenance_stops_everything(shop: Served) -> None:
    """Without a mode every request is stopped; a flag naming an unknown mode too."""
    shop.on("shop", reason="full")
    assert gate(shop, "GET", "/products") == (403, None)
    shop.off("shop")
    shop.on("shop", mode="no-such-mode")
    assert gate(shop, "GET", "/products") == (403, None)
    assert shop.get("/maintenance.json").json()["mode"] is None


def test_bypass_cookie_passes_a_stopped_request(shop: Served) -> None:
    """In a mode, a request the mode stops still passes with a valid bypass cookie."""
    shop.on("shop", mode="read-only")
    issued = shop.get(f"/.guardd/bypass/{SECRET}")
    cookie = (issued.header("set-cookie") or "").split(";", 1)[0]
    assert cookie.startswith("guardd_bypass=")
    assert gate(shop, "POST", "/products", Cookie=cookie)[0] == 204
    status = shop.get("/.guardd/maintenance.json", headers={"Cookie": cookie}).json()
    assert status["bypass"] is True and status["mode"] == "read-only"
    assert shop.get("/.guardd/maintenance.json").json()["bypass"] is False


def test_page_and_json_say_what_is_paused(shop: Served) -> None:
    """The page's headline and the JSON answer name what the mode pauses."""
    shop.on("shop", mode="checkout", reason="payment provider switch")
    page = shop.get("/checkout")
    assert page.status == 503
    assert "<h1>Checkout is paused</h1>" in page.text
    assert "payment provider switch" in page.text
    api = shop.get("/api/checkout").json()
    assert api["mode"] == "checkout"
    assert api["paused"] == "Checkout is paused"
    assert api["reason"] == "payment provider switch"


def test_health_stays_in_the_pool_in_a_mode(shop: Served) -> None:
    """Health is 200 (warn) while a mode is in force, 503 in full maintenance."""
    shop.on("shop", mode="read-only")
    health = shop.get("/healthz")
    assert health.status == 200 and health.json()["status"] == "warn"
    shop.off("shop")
    shop.on("shop")
    assert shop.get("/healthz").status == 503


def test_banner_script_is_served(shop: Served) -> None:
    """/.guardd/banner.js: JavaScript, cached a minute, self-contained."""
    response = shop.get("/.guardd/banner.js")
    assert response.status == 200
    assert response.header("content-type") == "text/javascript; charset=utf-8"
    assert response.header("cache-control") == "max-age=60"
    assert "/.guardd/maintenance.json" in response.text
    assert "http://" not in response.text and "https://" not in response.text


def test_every_answer_kind_is_distinct() -> None:
    """No two answer kinds share a value (an IntEnum alias would swap answers)."""
    from guardd.answers.http.parse import Kind

    assert len(set(Kind)) == len(Kind.__members__)


def test_default_and_scope_modes_combine_at_the_gate(shop: Served) -> None:
    """default in read-only and shop in checkout: the gate stops what either matches."""
    shop.on("shop", mode="checkout")
    shop.guardd.flag("default").write_text('{"mode": "read-only"}')

    def both() -> bool:
        return bool(shop.get("/maintenance.json").json()["mode"] == "checkout+read-only")

    wait_until(both, what="both modes in force")
    assert gate(shop, "POST", "/products") == (403, None)
    assert gate(shop, "GET", "/checkout") == (403, None)
    assert gate(shop, "GET", "/products") == (204, "checkout+read-only")


def test_unknown_mode_is_logged_once(shop: Served) -> None:
    """A flag naming a mode the scope lacks: full maintenance, one warning in the log."""
    shop.on("shop", mode="typo-mode")
    shop.guardd.flag("shop").write_text('{"mode": "typo-mode", "reason": "again"}')
    wait_until(lambda: shop.get("/maintenance.json").json()["reason"] == "again")
    assert shop.guardd.log().count("mode 'typo-mode', which is not configured") == 1
