// pgtenant console: reload the overview's live part every data-refresh ms.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var every = parseInt(live.getAttribute("data-refresh"), 10) || 1000;
  var conn = document.getElementById("conn");
  function show(text, cls) {
    if (conn) { conn.textContent = text; conn.className = "conn " + cls; }
  }
  function tick() {
    fetch(live.getAttribute("data-src"), { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status + " " + r.statusText);
        return r.text();
      })
      .then(function (html) { live.innerHTML = html; show("live", "ok"); })
      .catch(function (e) { show("disconnected: " + e.message, "bad"); })
      .then(function () { setTimeout(tick, every); });
  }
  show("live", "ok");
  setTimeout(tick, every);
})();
