// /budgets/: bar widths from data-fraction (no inline style attributes: the CSP), and live
// figures from the dashboard snapshot (each agent's daily budget and the global one).
"use strict";

(function () {
  const pct = (fraction) => `${Math.max(0, Math.min(1, Number(fraction) || 0)) * 100}%`;

  function usd(value) {
    if (value === null || value === undefined) return "\u2013";
    const n = Math.abs(Number(value));
    const sign = Number(value) < 0 ? "-" : "";
    if (n === 0) return "$0.00";
    if (n >= 1 || Math.round(n * 100) / 100 === n) {
      return `${sign}$${n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
    }
    return `${sign}$${Number(n.toPrecision(4))}`;
  }

  function size(root) {
    root.querySelectorAll(".bar > span[data-fraction]").forEach((span) => {
      span.style.width = pct(span.dataset.fraction);
      if (span.dataset.offset !== undefined) span.style.left = pct(span.dataset.offset);
    });
  }

  function ratio(part, whole) {
    if (!(whole > 0)) return part > 0 ? 1 : 0;
    return part / whole;
  }

  function update(budget) {
    if (!budget) return;
    const row = document.querySelector(`tr[data-budget-id="${budget.id}"]`);
    if (!row) return;
    for (const name of ["spent_usd", "reserved_usd", "remaining_usd", "forecast_usd", "limit_usd"]) {
      const cell = row.querySelector(`[data-field="${name}"]`);
      if (cell && budget[name] !== undefined && budget[name] !== null) {
        cell.textContent = usd(budget[name]);
        cell.dataset.sortValue = budget[name];
      }
    }
    const state = row.querySelector('[data-field="state"]');
    if (state && budget.state) {
      state.textContent = budget.state;
      state.className = `pill ${budget.state}`;
    }
    const limit = budget.limit_usd;
    const spent = row.querySelector('[data-bar="use"] .spent');
    const reserved = row.querySelector('[data-bar="use"] .reserved');
    const forecast = row.querySelector('[data-bar="forecast"] span');
    if (spent) spent.dataset.fraction = ratio(budget.spent_usd, limit);
    if (reserved) {
      reserved.dataset.fraction = ratio(budget.reserved_usd, limit);
      reserved.dataset.offset = ratio(budget.spent_usd, limit);
    }
    if (forecast) {
      forecast.dataset.fraction = ratio(budget.forecast_usd, limit);
      forecast.className = budget.forecast_usd > limit ? "over" : "reserved";
    }
    size(row);
  }

  size(document);
  document.addEventListener("bw:snapshot", (event) => {
    const message = event.detail || {};
    (message.agents || []).forEach((agent) => update(agent.budget));
    update(message.budget);
  });
  if (window.Breakwater && window.Breakwater.live) window.Breakwater.live.start();
})();
