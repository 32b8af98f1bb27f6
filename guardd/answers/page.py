"""Pure rendering of the maintenance page, the outage page and ``page_template``.

Everything a visitor sees is one self-contained document: inline CSS and script, no
external requests. The built-in pages' HTML, CSS and JavaScript are files in
``assets/`` (package data), read once at import. Every value that came from a flag
file is HTML-escaped here.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from string import Template

from guardd.core.durations import parse_time


def _asset(name: str) -> str:
    return resources.files("guardd.answers").joinpath("assets", name).read_text(encoding="utf-8")


# The built-in pages: one document shell and each page's body (string.Template,
# ``${name}``), their one style sheet and the maintenance page's script, shipped as
# package data and read once. Style and script are inlined (one self-contained
# document) and allowed by hash.
_STYLE = _asset("page.css")
_SCRIPT = _asset("page.js")
_DOCUMENT = Template(_asset("document.html"))
_MAINTENANCE = Template(_asset("maintenance.html"))
_OUTAGE = _asset("outage.html")


def _document(*, title: str, refresh: str, body: str) -> str:
    return _DOCUMENT.substitute(title=title, refresh=refresh, style=_STYLE, body=body.rstrip())


_PLACEHOLDER = re.compile(r"\{(reason|until|retry_after)\}")


@dataclass(frozen=True)
class Page:
    """A rendered document and the Content-Security-Policy that fits it (None: none)."""

    html: str
    csp: str | None


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _csp(*, script: str | None) -> str:
    # Hashes rather than 'unsafe-inline': even if escaping failed somewhere, an
    # injected script or style would not run.
    return "; ".join(
        [
            "default-src 'none'",
            f"style-src {_digest(_STYLE)}",
            f"script-src {_digest(script)}" if script else "script-src 'none'",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def readable_time(until: str) -> str:
    """The no-JavaScript fallback for an RFC 3339 time: ``2026-11-21 23:00 UTC``."""
    try:
        moment = parse_time(until)
    except (ValueError, OverflowError):
        return until
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


OVERDUE_TEXT = "The work is taking longer than expected. We will be back as soon as possible."


def maintenance_page(
    *,
    reason: str | None,
    until: str | None,
    retry_after: int,
    paused: str | None = None,
    overdue: bool = False,
) -> Page:
    """The built-in maintenance page: reason, expected end, and the way back.

    ``paused`` (partial maintenance: "Checkout is paused") replaces the headline:
    the rest of the site works, and the page says so.

    ``retry_after`` is the configured fallback; the page polls faster as the
    expected end nears (between every 2 and every 15 seconds). ``overdue``: the
    expected end has passed; the page says the work takes longer instead of a past time.
    """
    esc = html.escape
    until_text = OVERDUE_TEXT if overdue else (readable_time(until) if until else "")
    refresh = min(max(retry_after, 30), 300)  # without JavaScript: reload now and then
    title = paused or "Down for maintenance"
    lead = (
        "This part of the site is paused for planned maintenance; the rest works as usual."
        if paused
        else "This site is undergoing planned maintenance. Thank you for your patience."
    )
    body = _MAINTENANCE.substitute(
        title=esc(title),
        lead=esc(lead),
        retry_after=int(retry_after),
        reason_hidden="" if reason else " hidden",
        reason=esc(reason or ""),
        until_hidden="" if until else " hidden",
        until_datetime=f' datetime="{esc(until)}"' if until else "",
        until_text=esc(until_text),
        overdue_attr=" data-overdue" if overdue else "",
        script=_SCRIPT,
    )
    document = _document(
        title=esc(title),
        refresh=f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>',
        body=body,
    )
    return Page(html=document, csp=_csp(script=_SCRIPT))


def outage_page() -> Page:
    """The honest page for a scope that is *not* in maintenance: no claim of planned work."""
    document = _document(
        title="Temporarily unavailable",
        refresh='<meta http-equiv="refresh" content="60">',
        body=_OUTAGE,
    )
    return Page(html=document, csp=_csp(script=None))


def render_template(
    template: str,
    *,
    reason: str | None,
    until: str | None,
    retry_after: int,
    overdue: bool = False,
) -> str:
    """``page_template`` with ``{reason}``, ``{until}`` and ``{retry_after}`` replaced.

    One pass, so a reason that reads ``{until}`` stays literal text; values are
    HTML-escaped; every other brace (CSS, scripts) is left alone. Once overdue,
    ``{until}`` says the work takes longer than expected rather than a past time.
    """
    values = {
        "reason": html.escape(reason or ""),
        "until": html.escape(OVERDUE_TEXT if overdue else until or ""),
        "retry_after": str(int(retry_after)),
    }
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def uses_retry_after(template: str) -> bool:
    """True when the template shows ``{retry_after}`` (it then changes every second)."""
    return "{retry_after}" in template
