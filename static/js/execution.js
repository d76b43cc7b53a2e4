// /executions/{id}/: a queued or running execution follows WS /ws/executions/{id}/ (session
// auth): status messages update the pill, token messages append to the live output, and on
// "completed" the body partial is reloaded with htmx (the full timeline, tokens and cost).
"use strict";

(function () {
  let attempts = 0;

  function body() { return document.getElementById("execution-body"); }

  function reload() {
    const el = body();
    if (!el || !el.dataset.bodyUrl) return Promise.resolve();
    return window.htmx.ajax("GET", el.dataset.bodyUrl, { target: "#execution-body", swap: "outerHTML" })
      .then(() => {
        const now = body();
        if (now && now.dataset.live === "1") follow(); // still running: listen again
      });
  }

  function follow() {
    const el = body();
    if (!el || el.dataset.live !== "1") return;
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/executions/${el.dataset.executionId}/`);
    let done = false;
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (err) { return; }
      const pill = body() && body().querySelector("[data-live-status-pill]");
      if (message.type === "status" && pill) {
        pill.textContent = message.status;
        pill.className = `pill ${message.status}`;
      } else if (message.type === "token") {
        const out = body() && body().querySelector("[data-live-output]");
        if (out) out.textContent += message.text;
      } else if (message.type === "completed") {
        done = true;
        attempts = 0;
        if (pill) {
          pill.textContent = message.status;
          pill.className = `pill ${message.status}`;
        }
        reload();
      }
    });
    socket.addEventListener("close", () => {
      if (done) return;
      attempts += 1;
      // Dropped before the result: re-read the page body (it may have finished meanwhile),
      // which listens again while it is still running.
      window.setTimeout(reload, Math.min(15000, 500 * 2 ** Math.min(attempts, 5)));
    });
  }

  follow();
})();
