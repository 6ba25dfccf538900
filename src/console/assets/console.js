// The inbox console's one script: an auto-refresh toggle for pages that
// offer it (<body data-refresh="SECONDS">). Every page works without it.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  var box = document.getElementById("auto-refresh");
  if (!seconds || !box) {
    return;
  }
  var key = "clink-console-refresh";
  box.parentNode.hidden = false;
  box.checked = window.sessionStorage.getItem(key) === "on";
  var timer = null;
  function schedule() {
    window.clearTimeout(timer);
    if (!box.checked) {
      return;
    }
    timer = window.setTimeout(function () {
      var active = document.activeElement;
      var typing = active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) && active !== box;
      if (typing) {
        schedule();
      } else {
        window.location.reload();
      }
    }, seconds * 1000);
  }
  box.addEventListener("change", function () {
    window.sessionStorage.setItem(key, box.checked ? "on" : "off");
    schedule();
  });
  schedule();
})();
