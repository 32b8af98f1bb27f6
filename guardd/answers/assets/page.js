// guardd's maintenance page: shows the expected end in the visitor's local time,
// polls /maintenance.json and returns the visitor to the site when maintenance ends.
// Writes only textContent: nothing from the server is ever parsed as HTML.
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
