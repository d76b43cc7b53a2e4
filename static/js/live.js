// The live connection to WS /ws/dashboard/ (docs/OPERATIONS.md, "Live dashboard").
//
// Breakwater.live.start() opens it once per page. Each message is a full snapshot, dispatched
// as a "bw:snapshot" event on document (detail = the parsed message). The [data-live-status]
// element in the top bar says "live" or "reconnecting…". A dropped socket reconnects with
// exponential backoff (0.5 s doubling to 15 s, with jitter); after a reconnect, "bw:resync" is
// dispatched on document.body so htmx panels (hx-trigger="bw:resync from:body") re-read the
// server, and the next snapshot replaces every live figure.
"use strict";

(function () {
  const MIN_DELAY_MS = 500;
  const MAX_DELAY_MS = 15000;
  const STALE_MS = 5000; // no snapshot for this long while "open": treat as dropped

  let socket = null;
  let delay = MIN_DELAY_MS;
  let everOpened = false;
  let lastMessage = 0;
  let timer = null;

  function status(text, state) {
    const el = document.querySelector("[data-live-status]");
    if (!el) return;
    el.hidden = false;
    el.textContent = text;
    el.dataset.state = state;
  }

  function url() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}/ws/dashboard/`;
  }

  function schedule() {
    if (timer !== null) return;
    const wait = Math.round(delay * (0.75 + Math.random() * 0.5));
    status("reconnecting…", "reconnecting");
    timer = window.setTimeout(() => {
      timer = null;
      connect();
    }, wait);
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  }

  function connect() {
    let opened = false;
    try {
      socket = new WebSocket(url());
    } catch (err) {
      schedule();
      return;
    }
    socket.addEventListener("open", () => {
      opened = true;
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      lastMessage = Date.now();
      delay = MIN_DELAY_MS;
      if (!everOpened) {
        everOpened = true;
      } else if (opened && !socket.resynced) {
        document.body.dispatchEvent(new CustomEvent("bw:resync"));
      }
      socket.resynced = true;
      status("live", "live");
      document.dispatchEvent(new CustomEvent("bw:snapshot", { detail: message }));
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (event.code === 4401) {
        status("signed out", "down");
        return; // the session ended: reconnecting will not help
      }
      schedule();
    });
  }

  function watchdog() {
    if (socket && socket.readyState === WebSocket.OPEN && lastMessage &&
        Date.now() - lastMessage > STALE_MS) {
      socket.close();
    }
  }

  function start() {
    if (socket || timer !== null) return;
    status("connecting…", "connecting");
    connect();
    window.setInterval(watchdog, 1000);
  }

  // Tests only (tests/console/pages/test_overview_browser.py): close the socket as a dropped
  // connection would, so the reconnect path runs.
  function drop() {
    if (socket) socket.close();
  }

  window.Breakwater = window.Breakwater || {};
  window.Breakwater.live = { start, _drop: drop };
})();
