// Keyboard shortcuts on the item page: a approve, c save correction, r reject (focus the
// reason; Enter submits), s skip, 1-9 pick a choice of the first choice field. Keys are
// ignored while typing in a text box; Escape leaves it.
(function () {
  "use strict";

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) return true;
    return tag === "INPUT" && !/^(radio|checkbox|button|submit|reset)$/i.test(el.type);
  }

  function submit(formId) {
    var form = document.getElementById(formId);
    var button = document.querySelector('button[form="' + formId + '"]');
    if (!form || (button && button.disabled)) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }

  function choose(n) {
    var group = document.querySelector("fieldset[data-keys]");
    var options = group ? group.querySelectorAll('input[type="radio"]') : [];
    if (n <= options.length) options[n - 1].click();
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    var key = event.key.toLowerCase();
    var done = true;
    if (key === "a") submit("approve-form");
    else if (key === "c") submit("correct-form");
    else if (key === "s") submit("skip-form");
    else if (key === "r") {
      var reason = document.getElementById("reason");
      if (reason) reason.focus(); else done = false;
    } else if (/^[1-9]$/.test(key)) choose(Number(key));
    else done = false;
    if (done) event.preventDefault();
  });
})();
