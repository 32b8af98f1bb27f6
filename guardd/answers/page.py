"""Pure rendering of the maintenance page, the outage page and ``page_template``.

Everything a visitor sees is one self-contained document: inline CSS and script, no
external requests. Every value that came from a flag file is HTML-escaped here.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass
from datetime import UTC

from guardd.core.durations import parse_time

# The built-in pages' only style sheet; light by default, dark on request.
_STYLE = """\
:root{color-scheme:light dark;--bg:#f4f6f8;--card:#fff;--text:#1b1f24;--muted:#4a535e;\
--accent:#0b5cad;--border:#d5dbe1}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--card:#181c22;--text:#e8ecf1;\
--muted:#aab4bf;--accent:#86bdff;--border:#2c333c}}
*{box-sizing:border-box}
html,body{height:100%}
body{margin:0;display:flex;align-items:center;justify-content:center;padding:1.25rem;\
background:var(--bg);color:var(--text);\
font:1.0625rem/1.6 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{width:100%;max-width:36rem;background:var(--card);border:1px solid var(--border);\
border-radius:1rem;padding:2.5rem 2rem;\
box-shadow:0 1px 3px rgba(0,0,0,.06),0 8px 24px rgba(0,0,0,.06)}
svg{width:3rem;height:3rem;color:var(--accent)}
h1{font-size:1.75rem;line-height:1.25;margin:1rem 0 .5rem}
p{margin:.5rem 0}
.lead,.note{color:var(--muted)}
.note{margin-top:1.5rem;font-size:.9375rem}
dl{margin:1.5rem 0 0;padding-top:.5rem;border-top:1px solid var(--border)}
dt{margin-top:.75rem;font-size:.8125rem;font-weight:600;letter-spacing:.06em;\
text-transform:uppercase;color:var(--muted)}
dd{margin:.125rem 0 0;overflow-wrap:anywhere}
[hidden]{display:none}
"""

# A clock: "back soon". Decorative, so hidden from assistive technology.
_ICON = (
    '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" '
    'stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false">'
    '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/></svg>'
)

# Shows the expected end in the visitor's local time, polls /maintenance.json and
# returns the visitor to the site when maintenance ends. Writes only textContent:
# nothing from the server is ever parsed as HTML.
_SCRIPT = """\
(function () {
  "use strict";
  var main = document.getElementById("guardd");
  var reasonBox = document.getElementById("reason");
  var reasonText = document.getElementById("reason-text");
  var untilBox = document.getElementById("until");
  var untilTime = document.getElementById("until-time");
  var fallback = Number(main.getAttribute("data-retry-after")) || 300;
  var untilMs = NaN;
  var OVERDUE = "The work is taking longer than expected. We will be back as soon as possible.";

  function local(date) {
    try {
      return new Intl.DateTimeFormat(undefined, {weekday: "long", year: "numeric",
        month: "long", day: "numeric", hour: "numeric", minute: "2-digit",
        timeZoneName: "short"}).format(date);
    } catch (e) {
      return date.toString();
    }
  }
  function relative(ms) {
    if (!window.Intl || !Intl.RelativeTimeFormat) { return ""; }
    var words = new Intl.RelativeTimeFormat(undefined, {numeric: "auto"});
    var minutes = Math.max(1, Math.round(ms / 60000));
    if (minutes < 90) { return words.format(minutes, "minute"); }
    var hours = Math.round(minutes / 60);
    if (hours < 48) { return words.format(hours, "hour"); }
    return words.format(Math.round(hours / 24), "day");
  }
  function showUntil(iso, overdue) {
    var date = iso ? new Date(iso) : null;
    if (!date || isNaN(date.getTime())) { untilBox.hidden = true; untilMs = NaN; return; }
    untilMs = date.getTime();
    untilTime.setAttribute("datetime", iso);
    var left = untilMs - Date.now();
    // Past the expected end: never show a time gone by as "expected back".
    untilTime.textContent = (overdue || !(left > 0)) ? OVERDUE
      : local(date) + " (" + relative(left) + ")";
    untilBox.hidden = false;
  }
  function showReason(text) {
    if (text) { reasonText.textContent = text; }
    reasonBox.hidden = !text;
  }
  function delay() {
    var left = isNaN(untilMs) ? fallback : (untilMs - Date.now()) / 1000;
    if (!(left > 0)) { left = fallback; }
    var seconds = Math.min(15, Math.max(2, left / 4));
    return seconds * (0.8 + Math.random() * 0.4) * 1000;
  }
  function later() { window.setTimeout(check, delay()); }
  function back(ms) { window.setTimeout(function () { window.location.reload(); }, ms); }
  function check() {
    fetch("/maintenance.json", {cache: "no-store", credentials: "same-origin",
                                headers: {"Accept": "application/json"}})
      .then(function (response) {
        var marked = response.headers.has("Guard-Maintenance");
        var json = (response.headers.get("Content-Type") || "").indexOf("json") >= 0;
        if (!json) {
          if (!marked && response.status < 500) { back(0); } else { later(); }
          return undefined;
        }
        return response.json().then(function (data) {
          if (marked || data.maintenance === true) {
            showReason(data.reason);
            showUntil(data.until, data.overdue === true);
            later();
          } else if (data.maintenance === false) {
            back(1000 + Math.random() * 2000);
          } else if (response.status < 500) {
            back(0);
          } else {
            later();
          }
        });
      })
      .catch(later);
  }
  showUntil(untilTime.getAttribute("datetime"), main.hasAttribute("data-overdue"));
  later();
})();
"""

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
    overdue_attr = " data-overdue" if overdue else ""
    reason_attr = "" if reason else " hidden"
    until_attr = "" if until else " hidden"
    datetime_attr = f' datetime="{esc(until)}"' if until else ""
    refresh = min(max(retry_after, 30), 300)
    title = paused or "Down for maintenance"
    lead = (
        "This part of the site is paused for planned maintenance; the rest works as usual."
        if paused
        else "This site is undergoing planned maintenance. Thank you for your patience."
    )
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="robots" content="noindex">
<title>{esc(title)}</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>
<style>{_STYLE}</style>
</head>
<body>
<main id="guardd" data-retry-after="{int(retry_after)}"{overdue_attr}>
{_ICON}
<h1>{esc(title)}</h1>
<p class="lead">{esc(lead)}</p>
<dl role="status" aria-live="polite">
<div id="reason"{reason_attr}><dt>Reason</dt><dd id="reason-text">{esc(reason or "")}</dd></div>
<div id="until"{until_attr}><dt>Expected back</dt><dd><time id="until-time"{datetime_attr}>\
{esc(until_text)}</time></dd></div>
</dl>
<p class="note">This page checks for you and takes you back to the site as soon as it is \
available again.</p>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    return Page(html=document, csp=_csp(script=_SCRIPT))


def outage_page() -> Page:
    """The honest page for a scope that is *not* in maintenance: no claim of planned work."""
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="robots" content="noindex">
<meta http-equiv="refresh" content="60">
<title>Temporarily unavailable</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Temporarily unavailable</h1>
<p class="lead">This site cannot answer right now. Please try again in a few minutes.</p>
<p class="note">This page tries again by itself every minute.</p>
</main>
</body>
</html>
"""
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
