// The import page's upload, with its progress. The file goes up by XMLHttpRequest while a
// <progress> shows the bytes sent and the button stays disabled; the browser then goes
// where the server sends it: the file's preview, or the progress page of a large file's
// check. A refusal (no file, too large) replaces the page's content, form included.
// Without this script the form posts as any form does. On the page of a large file's
// check or import, it follows the work without reloading the page.
(function () {
  "use strict";

  var prepare = function () {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var shown = document.getElementById("upload-progress");
    var bar = shown.querySelector("progress");
    var said = shown.querySelector("span");
    var button = form.querySelector("button[type=submit]");

    var failed = function (message) {
      said.textContent = message;
      bar.hidden = true;
      button.disabled = false;
    };

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      button.disabled = true;
      shown.hidden = false;
      bar.hidden = false;
      bar.value = 0;
      said.textContent = "Sending the file\u2026";
      var request = new XMLHttpRequest();
      request.open("POST", form.action);
      request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      request.upload.addEventListener("progress", function (progress) {
        if (!progress.lengthComputable) return;
        bar.max = progress.total;
        bar.value = progress.loaded;
        said.textContent = Math.floor((100 * progress.loaded) / progress.total) + "% sent";
      });
      request.upload.addEventListener("load", function () {
        bar.removeAttribute("value"); // no figure for the check: a moving bar
        said.textContent = "Sent; checking the file\u2026";
      });
      request.addEventListener("load", function () {
        if (request.responseURL && request.responseURL !== form.action) {
          window.location.assign(request.responseURL);
          return;
        }
        var answer = new DOMParser().parseFromString(request.responseText, "text/html");
        var content = answer.querySelector("main");
        if (!content) {
          failed("The server answered " + request.status + "; try again.");
          return;
        }
        document.querySelector("main").replaceWith(document.adoptNode(content));
        prepare();
        var invalid = document.querySelector('[aria-invalid="true"]');
        if (invalid) invalid.focus(); // the refusal is said beside the file field
      });
      request.addEventListener("error", function () {
        failed("The file could not be sent (over 50 MB, or the connection lost?). Try again.");
      });
      request.send(new FormData(form));
    });
  };

  // A file being checked or imported: its progress panel is fetched again every two
  // seconds and swapped in place (its aria-live region says what changed); once the work
  // is done the new page's content replaces this one's.
  var follow = function () {
    var panel = document.getElementById("import-progress");
    if (!panel) return;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var answer = new DOMParser().parseFromString(html, "text/html");
        var next = answer.getElementById("import-progress");
        if (next) {
          panel.replaceWith(document.adoptNode(next));
          setTimeout(follow, 2000);
        } else if (answer.querySelector("main")) {
          document.querySelector("main").replaceWith(document.adoptNode(answer.querySelector("main")));
        }
      })
      .catch(function () { setTimeout(follow, 10000); });
  };

  document.addEventListener("DOMContentLoaded", function () {
    prepare();
    if (document.getElementById("import-progress")) setTimeout(follow, 2000);
  });
})();
