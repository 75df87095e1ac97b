// Progressive enhancement for "Record a session": refresh the timeline preview as fields change.
// The page works without this script; it only sends the form's own "Preview" in the background.
(function () {
  "use strict";
  var form = document.getElementById("enrol-form");
  var target = document.getElementById("preview");
  if (!form || !target || !window.fetch || !window.DOMParser) { return; }
  var timer = null;
  var sequence = 0;
  function refresh() {
    var body = new URLSearchParams(new FormData(form));
    body.set("action", "preview");
    var mine = ++sequence;
    // form.action is shadowed by the buttons named "action": read the attribute.
    fetch(form.getAttribute("action"), { method: "POST", body: body, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null || mine !== sequence) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("preview");
        if (fresh) { target.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the Preview button still works */ });
  }
  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 400);
  }
  var timing = ["name", "timezone", "channels", "treated_date", "treated_time", "regimen"];
  if (!target.querySelector("table")) { refresh(); }
  form.addEventListener("change", function (event) {
    var name = event.target && event.target.name;
    if (name && (timing.indexOf(name) !== -1 || name.indexOf("param-") === 0)) { schedule(); }
  });
}());
