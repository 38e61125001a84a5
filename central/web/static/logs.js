// Remote log tail viewer: an EventSource on /sites/{site}/logs/stream (see central/web/logs.py).
(function () {
  "use strict";
  var form = document.getElementById("logtail-form");
  if (!form) { return; }
  var out = document.getElementById("logtail-lines");
  var status = document.getElementById("logtail-status");
  var stop = document.getElementById("logtail-stop");
  var start = document.getElementById("logtail-start");
  var source = null;
  var MAX_LINES = 5000;
  // HQ's time zone, as the rest of the dashboard shows times (the footer names it).
  var clock = new Intl.DateTimeFormat("en-GB", {
    timeZone: form.dataset.zone || undefined, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false
  });

  function say(key, extra) {
    status.textContent = status.dataset[key] + (extra ? " — " + extra : "");
  }

  function add(text, cls) {
    var atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    var row = document.createElement("span");
    row.className = cls;
    row.textContent = text + "\n";
    out.appendChild(row);
    while (out.childNodes.length > MAX_LINES) { out.removeChild(out.firstChild); }
    if (atBottom) { out.scrollTop = out.scrollHeight; }
  }

  function fields(obj) {
    return Object.keys(obj).map(function (k) {
      var v = obj[k];
      return k + "=" + (typeof v === "string" ? v : JSON.stringify(v));
    }).join(" ");
  }

  function finish(key, extra) {
    if (source) { source.close(); source = null; }
    stop.disabled = true;
    start.disabled = false;
    say(key, extra);
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (source) { source.close(); }
    out.textContent = "";
    var query = new URLSearchParams(new FormData(form)).toString();
    source = new EventSource(form.dataset.stream + "?" + query);
    stop.disabled = false;
    start.disabled = true;
    say("live");
    source.addEventListener("line", function (e) {
      var line = JSON.parse(e.data);
      var when = clock.format(new Date(line.at));
      var cls = line.logger === "logtail" ? "notice" : line.level;
      add(when + " " + line.level.toUpperCase().padEnd(8) + " " + line.event + " " + fields(line.fields || {}), cls);
    });
    source.addEventListener("notice", function (e) { add("— " + JSON.parse(e.data).text, "notice"); });
    source.addEventListener("caught_up", function () { add("— live —", "notice"); });
    source.addEventListener("end", function (e) { finish("ended", JSON.parse(e.data).reason); });
    source.onerror = function () {
      if (source && source.readyState === EventSource.CLOSED) { finish("error"); }
    };
  });

  stop.addEventListener("click", function () { finish("ended", "stopped"); });
}());
