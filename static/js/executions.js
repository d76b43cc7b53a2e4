// /executions/: the custom from/to inputs show only for "from / to", and their values (the
// viewer's local time) are sent with the zone offset (tz = minutes behind UTC) so the server
// converts them.
"use strict";

(function () {
  const form = document.getElementById("execution-filters");
  if (!form) return;
  const range = form.querySelector("#f-range");
  const tz = form.querySelector("#f-tz");
  const custom = form.querySelectorAll(".custom-range");
  function toggle() {
    custom.forEach((el) => { el.hidden = range.value !== "custom"; });
  }
  function offset() {
    const from = form.querySelector("#f-from").value;
    const at = from ? new Date(from) : new Date();
    tz.value = String(Number.isNaN(at.getTime()) ? new Date().getTimezoneOffset() : at.getTimezoneOffset());
  }
  range.addEventListener("change", toggle);
  form.addEventListener("submit", offset);
  toggle();
})();
