// The newsletter editor: saves the draft a moment after typing stops and refreshes the
// preview, so the owner sees the email as readers will; and a newsletter's progress,
// refreshed every couple of seconds until it is sent or cancelled. Served from our own
// origin (the Content-Security-Policy allows no inline script).
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
  // The confirmation's button sends: it is disabled as the form goes (the server refuses
  // a second send anyway).
  var send = document.getElementById("send-form");
  if (send) {
    send.addEventListener("submit", function () {
      document.getElementById("confirm-send-button").disabled = true;
    });
  }
  // Progress: the figures, the sentence saying where it stands, its status and the
  // actions that apply to it, from progress.json; polling stops once it is done.
  var progress = document.getElementById("progress");
  if (progress && progress.hasAttribute("data-polling")) {
    var show = function (data) {
      document.getElementById("progress-state").textContent = data.state;
      document.getElementById("newsletter-status").textContent = data.status;
      progress.querySelectorAll("[data-figure]").forEach(function (figure) {
        figure.querySelector("dd").textContent = String(data[figure.getAttribute("data-figure")]);
      });
      progress.querySelectorAll("[data-states]").forEach(function (action) {
        action.hidden = action.getAttribute("data-states").split(" ").indexOf(data.status) < 0;
      });
    };
    var poll = function () {
      fetch(progress.getAttribute("data-progress"), { credentials: "same-origin" })
        .then(function (response) {
          if (response.redirected || response.status === 401) {
            return null; // the session ended: the sign-in page, not figures
          }
          if (!response.ok) { throw new Error("progress: " + response.status); }
          return response.json();
        })
        .then(function (data) {
          if (data === null) {
            document.getElementById("progress-state").textContent =
              "Signed out: reload the page and sign in to follow it again.";
            return;
          }
          show(data);
          if (!data.done) { setTimeout(poll, 2000); }
        })
        .catch(function () { setTimeout(poll, 10000); });
    };
    setTimeout(poll, 2000);
  }
})();
