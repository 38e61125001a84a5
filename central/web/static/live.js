// onecard HQ: live parts of a page over Server-Sent Events (no framework, no CDN).
// <main data-live="/live/…"> names the stream; each event "parts" is JSON
// {element id: inner HTML, rendered by the server}. #live-status says whether it is live
// (its data-live-on / data-live-off hold the words in the page's language).
(function () {
  "use strict";
  var main = document.querySelector("[data-live]");
  if (!main || typeof EventSource === "undefined") return;
  var status = document.getElementById("live-status");

  function show(state) {
    if (!status) return;
    status.className = "live-status " + state;
    status.textContent = status.getAttribute("data-live-" + state) || state;
  }

  var source = new EventSource(main.getAttribute("data-live"));
  source.addEventListener("open", function () { show("on"); });
  source.addEventListener("parts", function (message) {
    var parts = JSON.parse(message.data);
    Object.keys(parts).forEach(function (id) {
      var element = document.getElementById(id);
      if (element) element.innerHTML = parts[id];
    });
    main.setAttribute("data-live-updated", String(Date.now()));
    show("on");
  });
  source.addEventListener("error", function () {
    // CONNECTING: the browser retries by itself. CLOSED: it gave up (signed out?).
    show(source.readyState === EventSource.CLOSED ? "closed" : "off");
  });
})();
