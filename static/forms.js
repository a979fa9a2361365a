// Puts the keyboard where the page wants it (the Content-Security-Policy allows no inline
// script): a form shown again with errors focuses its first invalid field, whose
// aria-describedby then reads out the error; a link to a form (data-focus-form) scrolls
// to the form and focuses its first field.
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
})();
