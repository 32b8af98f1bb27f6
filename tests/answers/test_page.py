"""Pure page rendering: escaping, self-containment, accessibility hooks, templates."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardd.answers.page import (
    maintenance_page,
    outage_page,
    readable_time,
    render_template,
    uses_retry_after,
)

HOSTILE = "</dd><script>alert(1)</script><img src=x onerror=alert(2)> \"' & {until}"


def inline(tag: str, html: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert match, f"no inline <{tag}>"
    return match.group(1)


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_reason_and_until_are_shown() -> None:
    """The page shows the reason and the expected end (machine-readable and as text)."""
    page = maintenance_page(reason="New disks", until="2030-01-01T12:00:00Z", retry_after=300)
    assert '<dd id="reason-text">New disks</dd>' in page.html
    assert '<time id="until-time" datetime="2030-01-01T12:00:00Z">2030-01-01 12:00 UTC' in (
        page.html
    )
    assert 'id="reason" hidden' not in page.html


def test_missing_reason_and_until_are_hidden() -> None:
    """Without reason or until, their rows are present (for live updates) but hidden."""
    page = maintenance_page(reason=None, until=None, retry_after=300)
    assert '<div id="reason" hidden>' in page.html
    assert '<div id="until" hidden>' in page.html
    assert "datetime=" not in page.html


def test_hostile_reason_is_escaped() -> None:
    """Markup in a reason is shown as text, never parsed: no tag, no attribute breaks out."""
    page = maintenance_page(reason=HOSTILE, until='2030"><x', retry_after=300)
    assert "<script>alert" not in page.html
    assert "<img" not in page.html
    assert "&lt;/dd&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert 'datetime="2030&quot;&gt;&lt;x"' in page.html


@given(st.text())
def test_no_reason_can_open_a_tag(reason: str) -> None:
    """Property: whatever the reason, the body holds exactly the page's own tags."""
    html = maintenance_page(reason=reason, until=None, retry_after=300).html
    baseline = maintenance_page(reason="x", until=None, retry_after=300).html
    assert html.count("<") == baseline.count("<")


def test_page_is_self_contained() -> None:
    """No external resource: no src/href to another origin, no @import, no url()."""
    for page in (maintenance_page(reason="r", until=None, retry_after=1), outage_page()):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.html)
        assert "@import" not in page.html
        assert "url(" not in page.html
        assert re.search(r"<link[^>]+href=\"data:,\"", page.html)


def test_csp_allows_exactly_the_inline_script_and_style() -> None:
    """The CSP carries the hashes of the page's own inline style and script, nothing else."""
    page = maintenance_page(reason="r", until=None, retry_after=300)
    assert page.csp is not None
    assert f"style-src {sha256(inline('style', page.html))}" in page.csp
    assert f"script-src {sha256(inline('script', page.html))}" in page.csp
    assert "default-src 'none'" in page.csp
    assert "connect-src 'self'" in page.csp
    assert "unsafe-inline" not in page.csp
    outage = outage_page()
    assert outage.csp is not None
    assert "script-src 'none'" in outage.csp
    assert "<script" not in outage.html


def test_light_and_dark_and_accessibility_hooks() -> None:
    """Language, one h1, a live status region, both color schemes, viewport."""
    html = maintenance_page(reason="r", until=None, retry_after=300).html
    assert '<html lang="en">' in html
    assert html.count("<h1>") == 1
    assert 'role="status"' in html
    assert 'aria-live="polite"' in html
    assert "prefers-color-scheme: dark" in html
    assert 'name="color-scheme" content="light dark"' in html
    assert 'name="viewport"' in html
    assert 'aria-hidden="true"' in html  # the icon is decorative


def test_script_polls_and_writes_text_only() -> None:
    """The script polls /maintenance.json, reloads when over, and never injects HTML."""
    script = inline("script", maintenance_page(reason="r", until=None, retry_after=300).html)
    assert 'fetch("/maintenance.json"' in script
    assert "location.reload()" in script
    assert "textContent" in script
    assert "innerHTML" not in script
    assert "Intl.DateTimeFormat" in script


def test_no_script_fallback_refreshes() -> None:
    """Without JavaScript the page still refreshes itself (noscript meta refresh)."""
    html = maintenance_page(reason="r", until=None, retry_after=120).html
    assert '<noscript><meta http-equiv="refresh" content="120"></noscript>' in html


def test_outage_page_does_not_claim_maintenance() -> None:
    """The outage page says "temporarily unavailable" and never "maintenance"."""
    html = outage_page().html
    assert "Temporarily unavailable" in html
    assert "maintenance" not in html.lower()
    assert 'http-equiv="refresh"' in html


def test_template_placeholders_are_escaped_in_one_pass() -> None:
    """{reason} {until} {retry_after} replaced and escaped; a reason reading {until}
    stays literal; other braces (CSS) and unknown placeholders are left alone."""
    template = "<style>p { margin: 0 }</style><p>{reason}|{until}|{retry_after}|{nope}</p>"
    html = render_template(
        template, reason="<b>{until}</b>", until="2030-01-01T00:00:00Z", retry_after=61
    )
    assert html == (
        "<style>p { margin: 0 }</style>"
        "<p>&lt;b&gt;{until}&lt;/b&gt;|2030-01-01T00:00:00Z|61|{nope}</p>"
    )


def test_template_with_nothing_known() -> None:
    """Absent reason and until become empty strings."""
    assert render_template("[{reason}][{until}]", reason=None, until=None, retry_after=5) == "[][]"


@pytest.mark.parametrize(
    ("template", "expected"), [("{retry_after}", True), ("{reason}", False), ("", False)]
)
def test_uses_retry_after(template: str, expected: bool) -> None:
    """Only templates showing {retry_after} need re-rendering every second."""
    assert uses_retry_after(template) is expected


def test_readable_time() -> None:
    """The no-JavaScript fallback is a UTC time; unreadable input is shown as it came."""
    assert readable_time("2030-01-01T12:00:00Z") == "2030-01-01 12:00 UTC"
    assert readable_time("2030-01-01T14:00:00+02:00") == "2030-01-01 12:00 UTC"
    assert readable_time("whenever") == "whenever"
