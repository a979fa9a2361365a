// Keyboard access the markup alone cannot give (the Content-Security-Policy allows no
// inline script): a form shown again with errors focuses its first invalid field, whose
// aria-describedby then reads out the error; a link to a form (data-focus-form) scrolls
// to the form and focuses its first field; a table too wide for the screen, which
// scrolls inside its own box (admin.css), becomes a Tab stop so arrow keys scroll it.
(function () {
  "use strict";
  var invalid = document.querySelector('[aria-invalid="true"]');
  if (invalid) {
    invalid.focus();
  }
  var fields = 'input:not([type="hidden"]):not([tabindex="-1"]), select, textarea';
  var links = document.querySelectorAll("a[data-focus-form]");
  for (var i = 0; i < links.length; i++) {
    links[i].addEventListener("click", function (event) {
      var target = document.getElementById(this.getAttribute("href").slice(1));
      var field = target && target.querySelector(fields);
      if (field) {
        event.preventDefault();
        location.hash = this.getAttribute("href");
        field.focus({ preventScroll: true });
      }
    });
  }
  var tables = document.querySelectorAll("main table");
  var reachable = function () {
    for (var j = 0; j < tables.length; j++) {
      if (tables[j].scrollWidth > tables[j].clientWidth) {
        tables[j].setAttribute("tabindex", "0");
      } else {
        tables[j].removeAttribute("tabindex");
      }
    }
  };
  reachable();
  window.addEventListener("resize", reachable);
  document.addEventListener("toggle", reachable, true); // a table in <details> shown
})();
