// /agents/ and /agents/{name}/: sparklines and charts (uPlot), live breakers and budgets.
// Data come from <script type="application/json"> blocks rendered by the server (no inline
// script: the CSP refuses it); live figures follow the dashboard socket's "bw:snapshot".
"use strict";

(function () {
  function data(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  const STATES = ["closed", "open", "half_open", "forced_open", "forced_closed", "disabled"];

  function setPill(el, state) {
    if (!el || !state) return;
    STATES.forEach((s) => el.classList.remove(s));
    el.classList.add("pill", state);
    el.textContent = state;
  }

  function usd(value) {
    if (value === null || value === undefined) return "\u2013";
    if (value === 0) return "$0.00";
    if (Math.abs(value) >= 1 || Math.round(value * 100) / 100 === value) {
      return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    return "$" + Number(value.toPrecision(4)).toString();
  }

  function sparklines() {
    const series = data("agents-series");
    if (!series || typeof uPlot === "undefined") return;
    document.querySelectorAll("[data-sparkline]").forEach((el) => {
      const s = series[el.dataset.sparkline];
      if (!s) return;
      const opts = {
        width: 96,
        height: 28,
        pxAlign: false,
        cursor: { show: false },
        select: { show: false },
        legend: { show: false },
        scales: { x: { time: false } },
        axes: [{ show: false }, { show: false }],
        series: [{}, { stroke: "#1f6feb", width: 1.5, fill: "rgba(31,111,235,0.12)" }],
      };
      el.textContent = "";
      new uPlot(opts, [s.at, s.requests], el);
      el.dataset.drawn = "1";
    });
  }

  function chart(el, title, labels, columns, colors) {
    const width = Math.max(280, el.clientWidth || 380);
    const opts = {
      width: width,
      height: 180,
      series: [{}].concat(labels.map((label, i) => ({ label: label, stroke: colors[i], width: 1.5, spanGaps: true }))),
      axes: [{}, { size: 60 }],
    };
    el.textContent = "";
    new uPlot(opts, columns, el);
    el.dataset.drawn = "1";
  }

  function charts() {
    const s = data("agent-series");
    if (!s || typeof uPlot === "undefined") return;
    const traffic = document.getElementById("chart-traffic");
    const latency = document.getElementById("chart-latency");
    const spend = document.getElementById("chart-spend");
    if (traffic) chart(traffic, "Requests", ["requests", "errors", "fallbacks"], [s.at, s.requests, s.errors, s.fallbacks], ["#1f6feb", "#cf222e", "#9a6700"]);
    if (latency) chart(latency, "Latency", ["p50 ms", "p95 ms"], [s.at, s.p50_ms, s.p95_ms], ["#1a7f37", "#8250df"]);
    if (spend) chart(spend, "Spend", ["USD"], [s.at, s.cost_usd], ["#1f6feb"]);
  }

  function onSnapshot(event) {
    const snapshot = event.detail || {};
    (snapshot.agents || []).forEach((agent) => {
      document.querySelectorAll(`[data-breaker="${CSS.escape(agent.name)}"]`).forEach((el) => {
        if (agent.breaker) setPill(el, agent.breaker.state);
      });
      const budget = agent.budget;
      document.querySelectorAll(`[data-budget="${CSS.escape(agent.name)}"]`).forEach((el) => {
        if (!budget || !budget.limit_usd) return;
        const used = budget.spent_usd / budget.limit_usd;
        el.textContent = `${usd(budget.spent_usd)} / ${usd(budget.limit_usd)} (${Math.round(used * 100)}%)`;
      });
    });
    (snapshot.deployments || []).forEach((d) => {
      document.querySelectorAll(`[data-deployment-breaker="${d.id}"]`).forEach((el) => {
        if (d.breaker) setPill(el, d.breaker.state);
      });
      document.querySelectorAll(`[data-in-flight="${d.id}"]`).forEach((el) => {
        if (d.in_flight !== null && d.in_flight !== undefined) el.textContent = String(d.in_flight);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    sparklines();
    charts();
    document.addEventListener("bw:snapshot", onSnapshot);
    if (window.Breakwater && window.Breakwater.live) window.Breakwater.live.start();
  });
})();
