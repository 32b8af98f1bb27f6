/* guardd banner: announces planned maintenance, a partial mode in force, or that
 * the visitor is seeing the site during maintenance. Self-contained (no external
 * resources), works under `script-src 'self'`: it is served by guardd at
 * /.guardd/banner.js and styles its bar through the CSSOM (element.style), which a
 * page's style-src does not restrict. Silent pages get no element at all, and the
 * bar is fixed to the bottom of the viewport, so the page's own content never moves.
 */
(function () {
  "use strict";
  var STATUS_URL = "/.guardd/maintenance.json";
  var POLL_MS = 60000;
  var STORE = "guardd-banner-dismissed:";
  var bar = null;
  var shownKey = null;

  function dark() {
    return !!(window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches);
  }

  function when(text) {
    var date = new Date(text);
    if (isNaN(date.getTime())) return null;
    // The visitor's own locale and time zone.
    return date.toLocaleString(undefined, {
      weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
      timeZoneName: "short"
    });
  }

  function paused(mode) {
    if (mode === "read-only") return "Saving changes is paused";
    var words = mode.split("+").map(function (name) {
      return name.replace(/[-_]+/g, " ");
    }).join(" and ");
    return words.charAt(0).toUpperCase() + words.slice(1) + " is paused";
  }

  // What to say, and the key a dismissal is remembered under (one per window or mode).
  function message(state) {
    if (!state || typeof state !== "object") return null;
    var reason = typeof state.reason === "string" && state.reason ? state.reason : null;
    var until = state.until && !state.overdue ? when(state.until) : null;
    if (state.maintenance && state.mode) {
      var text = paused(String(state.mode));
      if (reason) text += ": " + reason;
      text += until ? ". Back by " + until + "." : ".";
      return { key: "mode:" + state.scope + ":" + state.mode + ":" + state.since, text: text };
    }
    if (state.maintenance && state.bypass) {
      var seen = "You are seeing this site during maintenance";
      if (reason) seen += " (" + reason + ")";
      return { key: "bypass:" + state.scope + ":" + state.since, text: seen + "." };
    }
    var windows = Array.isArray(state.upcoming) ? state.upcoming : [];
    if (!state.maintenance && windows.length) {
      var w = windows[0];
      var start = when(w.at);
      var end = when(w.until);
      if (!start) return null;
      var planned = "Planned maintenance from " + start + (end ? " to " + end : "");
      if (w.reason) planned += ": " + w.reason;
      return { key: "window:" + w.id, text: planned + "." };
    }
    return null;
  }

  function dismissed(key) {
    try { return window.localStorage.getItem(STORE + key) === "1"; } catch (e) { return false; }
  }

  function remember(key) {
    try { window.localStorage.setItem(STORE + key, "1"); } catch (e) { /* private mode */ }
  }

  function hide() {
    if (bar && bar.parentNode) bar.parentNode.removeChild(bar);
    bar = null;
    shownKey = null;
  }

  function style(el, rules) {
    for (var name in rules) el.style.setProperty(name, rules[name]);
  }

  function show(msg) {
    if (shownKey === msg.key && bar) {
      bar.firstChild.textContent = msg.text;
      return;
    }
    hide();
    var isDark = dark();
    bar = document.createElement("div");
    bar.id = "guardd-banner";
    bar.setAttribute("role", "status");
    bar.setAttribute("aria-live", "polite");
    style(bar, {
      position: "fixed", left: "0", right: "0", bottom: "0", "z-index": "2147483647",
      display: "flex", "align-items": "center", gap: "1em", "box-sizing": "border-box",
      padding: "0.75em 1em", margin: "0", font: "15px/1.4 system-ui, sans-serif",
      background: isDark ? "#2b2111" : "#fff4d6", color: isDark ? "#fbe7b5" : "#3d2b00",
      "border-top": "2px solid " + (isDark ? "#d59f2a" : "#b8860b"),
      "box-shadow": "0 -2px 8px rgba(0,0,0,0.2)"
    });
    var text = document.createElement("span");
    text.textContent = msg.text;
    style(text, { flex: "1 1 auto" });
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = "Dismiss";
    button.setAttribute("aria-label", "Dismiss this notice");
    style(button, {
      flex: "0 0 auto", font: "inherit", cursor: "pointer", padding: "0.25em 0.75em",
      color: "inherit", background: "transparent", "border-radius": "4px",
      border: "1px solid currentColor"
    });
    var key = msg.key;
    function dismiss() { remember(key); hide(); }
    button.addEventListener("click", dismiss);
    bar.addEventListener("keydown", function (event) {
      if (event.key === "Escape") dismiss();
    });
    bar.appendChild(text);
    bar.appendChild(button);
    document.body.appendChild(bar);
    shownKey = key;
  }

  function apply(state) {
    var msg = message(state);
    if (!msg || dismissed(msg.key)) { hide(); return; }
    show(msg);
  }

  function poll() {
    var request = new XMLHttpRequest();
    request.open("GET", STATUS_URL, true);
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      if (request.status !== 200) return;
      try { apply(JSON.parse(request.responseText)); } catch (e) { /* keep the last */ }
    };
    request.send();
  }

  function start() {
    poll();
    window.setInterval(poll, POLL_MS);
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
