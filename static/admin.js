// The newsletter editor: saves the draft a moment after typing stops and refreshes the
// preview, so the owner sees the email as readers will. Served from our own origin
// (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  var form = document.getElementById("newsletter-form");
  if (form && form.hasAttribute("data-autosave")) {
    var status = document.getElementById("autosave-status");
    var frame = document.getElementById("preview-frame");
    var text = document.getElementById("preview-text");
    var timer = null;
    var save = function () {
      status.textContent = "Saving...";
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-Requested-With": "fetch" },
        credentials: "same-origin",
      })
        .then(function (response) {
          return response.json().then(function (data) {
            if (!response.ok) {
              status.textContent = data.error || "Not saved.";
              return;
            }
            status.textContent = "Saved.";
            frame.src = form.getAttribute("data-preview") + "?t=" + Date.now();
            return fetch(form.getAttribute("data-preview-text") + "?t=" + Date.now(), {
              credentials: "same-origin",
            })
              .then(function (r) { return r.text(); })
              .then(function (body) { text.textContent = body; });
          });
        })
        .catch(function () { status.textContent = "Not saved (no connection)."; });
    };
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(save, 700);
    });
  }
  // One click sends: the button is disabled as the form goes (the server refuses a
  // second send anyway).
  var send = document.getElementById("send-form");
  if (send) {
    send.addEventListener("submit", function () {
      document.getElementById("send-button").disabled = true;
    });
  }
})();
