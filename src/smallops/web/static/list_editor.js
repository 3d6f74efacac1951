// The list editor: a list-of-strings field is a textarea with one entry per line (what the
// server reads, and all a browser without JavaScript needs). Here it becomes one text box per
// entry with Remove and Add buttons; every edit writes the entries back into the hidden
// textarea, so the form posts exactly what the no-JS page would.
(function () {
  "use strict";

  function enhance(area) {
    var editor = document.createElement("div");
    editor.className = "list-editor";
    var rows = document.createElement("ol");
    rows.className = "list-rows";
    var add = document.createElement("button");
    add.type = "button";
    add.className = "quiet list-add";
    add.textContent = "+ Add entry";
    var label = area.id ? document.querySelector('label[for="' + area.id + '"]') : null;
    var name = label ? label.textContent.trim() : "entry";

    function sync() {
      var values = [];
      rows.querySelectorAll("input").forEach(function (input) { values.push(input.value); });
      area.value = values.join("\n");
    }

    function row(value, focus, after) {
      var item = document.createElement("li");
      var input = document.createElement("input");
      input.type = "text";
      input.value = value;
      input.setAttribute("aria-label", name);
      input.addEventListener("input", sync);
      input.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && !event.isComposing) {  // a new entry, not a submit
          event.preventDefault();
          row("", true, item);
        }
      });
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "quiet list-remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove this entry");
      remove.addEventListener("click", function () {
        var next = item.nextElementSibling || item.previousElementSibling;
        item.remove();
        sync();
        var target = next ? next.querySelector("input") : add;
        target.focus();
      });
      item.appendChild(input);
      item.appendChild(remove);
      if (after && after.nextSibling) rows.insertBefore(item, after.nextSibling);
      else rows.appendChild(item);
      if (focus) input.focus();
      sync();
    }

    add.addEventListener("click", function () { row("", true, null); });
    area.value.split("\n").forEach(function (line) {
      if (line.trim() !== "") row(line, false, null);
    });
    editor.appendChild(rows);
    editor.appendChild(add);
    area.hidden = true;
    area.parentNode.insertBefore(editor, area.nextSibling);
    var help = area.parentNode.querySelector(".list-help");
    if (help) help.hidden = true;
    if (label) label.htmlFor = "";
  }

  document.querySelectorAll("textarea[data-list-editor]").forEach(enhance);
})();
