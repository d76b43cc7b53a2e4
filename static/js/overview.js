// The overview page (console/pages/overview.py): live "Now" figures from every bw:snapshot
// (WS /ws/dashboard/, about every second) and the "Real results" charts (uPlot) drawn from the
// JSON data (#overview-data's data-json attribute), again whenever htmx swaps that part in (every 30 s, and
// after a reconnect's bw:resync). The figures' formats match the templates' filters
// (console/templatetags/console.py) and liveFigures() matches live_figures() in overview.py.
"use strict";

(function () {
  const DASH = "\u2013";
  const CLOSED = new Set(["closed", "forced_closed"]);

  // Axis ticks: short, so they fit the axis (1.5k, 2.5 s, $3k, $0.25).
  function compact(n) {
    const a = Math.abs(n);
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1).replace(/\.0$/, "") + "M";
    if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1).replace(/\.0$/, "") + "k";
    return String(Number(n.toPrecision(3)));
  }
  const tick = {
    count: (v) => (v === null ? "" : compact(v)),
    ms: (v) => (v === null ? "" : v >= 1000 ? compact(v / 1000) + " s" : compact(v) + " ms"),
    usd: (v) => (v === null ? "" : "$" + compact(v)),
  };

  const fmt = {
    count(v) {
      return v === null || v === undefined ? DASH : Math.round(v).toLocaleString("en-US");
    },
    pct(v) {
      if (v === null || v === undefined) return DASH;
      return (v * 100).toFixed(2).replace(/0+$/, "").replace(/\.$/, "") + "%";
    },
    ms(v) {
      if (v === null || v === undefined) return DASH;
      if (v >= 10000) {
        return (v / 1000).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " s";
      }
      return Math.round(v).toLocaleString("en-US") + " ms";
    },
    usd(v) {
      if (v === null || v === undefined) return DASH;
      const sign = v < 0 ? "-" : "";
      const n = Math.abs(v);
      if (n === 0) return "$0.00";
      if (n >= 1 || Math.round(n * 100) / 100 === n) {
        return sign + "$" + n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
      }
      let text = String(Number(n.toPrecision(4)));
      if (text.includes("e")) text = n.toFixed(8).replace(/0+$/, "");
      return sign + "$" + text;
    },
  };

  const round = (v, digits) => Math.round(v * 10 ** digits) / 10 ** digits;

  function budgetRef(message) {
    const glob = message.budget;
    if (glob) {
      return { label: "global daily budget", limit: glob.limit_usd, forecast: glob.forecast_usd };
    }
    const mine = (message.agents || []).map((a) => a.budget).filter(Boolean);
    if (!mine.length) return { label: "no daily budget", limit: null, forecast: null };
    const sum = (key) => round(mine.reduce((total, b) => total + b[key], 0), 6);
    const n = mine.length;
    return {
      label: `sum of ${n} agent daily budget${n !== 1 ? "s" : ""}`,
      limit: sum("limit_usd"),
      forecast: sum("forecast_usd"),
    };
  }

  function openBreakers(message) {
    const found = [];
    const users = new Map();
    for (const agent of message.agents || []) {
      for (const id of agent.deployments || []) {
        if (!users.has(id)) users.set(id, []);
        users.get(id).push(agent.name);
      }
      if (agent.breaker && !CLOSED.has(agent.breaker.state)) {
        found.push({ kind: "agent", name: agent.name, state: agent.breaker.state, agents: [agent.name] });
      }
    }
    for (const d of message.deployments || []) {
      if (d.breaker && !CLOSED.has(d.breaker.state)) {
        found.push({
          kind: "deployment",
          name: `${d.model} #${d.id} (${d.provider})`,
          state: d.breaker.state,
          agents: users.get(d.id) || [],
        });
      }
    }
    return found;
  }

  function liveFigures(message) {
    const totals = message.totals || {};
    const today = totals.today;
    const minute = totals.last_minute;
    const incidents = message.incidents;
    const known = (message.agents || []).every((a) => a.breaker !== null) &&
      (message.deployments || []).every((d) => d.breaker !== null);
    const breakers = openBreakers(message);
    const requests = today ? today.requests : null;
    return {
      requests_total: requests,
      success_rate: today && requests ? round(today.succeeded / requests, 4) : null,
      errors_today: today ? today.errors : null,
      p95_latency_ms: minute ? minute.p95_latency_ms : null,
      requests_last_minute: minute ? minute.requests : null,
      running: totals.running,
      spend_today_usd: today ? today.cost_usd : null,
      budget: budgetRef(message),
      open_incidents: incidents ? (incidents.open || 0) + (incidents.acknowledged || 0) : null,
      latest_incident: incidents ? incidents.latest : null,
      breakers_open: known ? breakers.length : null,
      open_breakers: breakers,
      problems: message.problems || [],
    };
  }

  const agentUrl = (name) => `/agents/${encodeURIComponent(name)}/`;

  function link(href, text) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function render(now, f) {
    const set = (name, text) => {
      const el = now.querySelector(`[data-metric="${name}"]`);
      if (el && el.textContent !== text) el.textContent = text;
    };
    set("requests_total", fmt.count(f.requests_total));
    set("requests_last_minute", fmt.count(f.requests_last_minute));
    set("running", fmt.count(f.running));
    set("success_rate", fmt.pct(f.success_rate));
    set("errors_today", fmt.count(f.errors_today));
    set("p95_latency_ms", fmt.ms(f.p95_latency_ms));
    set("spend_today_usd", fmt.usd(f.spend_today_usd));
    set("daily_budget_usd", fmt.usd(f.budget.limit));
    set("open_incidents", fmt.count(f.open_incidents));
    set("breakers_open", fmt.count(f.breakers_open));
    const label = now.querySelector("[data-budget-label]");
    if (label) label.textContent = f.budget.label;

    const latest = now.querySelector("[data-latest-incident]");
    if (latest) {
      latest.replaceChildren();
      if (f.latest_incident) {
        latest.append("latest: ", link(`/incidents/${f.latest_incident.id}/`, f.latest_incident.title));
      } else {
        latest.append(f.open_incidents === null ? DASH : "none unresolved");
      }
    }
    const list = now.querySelector("[data-open-breakers]");
    if (list) {
      const items = f.open_breakers.map((b) => {
        const li = document.createElement("li");
        if (b.kind === "agent") {
          li.append(link(agentUrl(b.name), b.name));
        } else {
          li.append(b.name);
          for (const name of b.agents) li.append(" ", link(agentUrl(name), name));
        }
        const pill = document.createElement("span");
        pill.className = `pill ${b.state}`;
        pill.textContent = b.state;
        li.append(" ", pill);
        return li;
      });
      if (!items.length) {
        const li = document.createElement("li");
        li.textContent = f.breakers_open === null ? DASH : "all closed";
        items.push(li);
      }
      list.replaceChildren(...items);
    }
    const problems = now.querySelector("[data-live-problems]");
    if (problems) {
      problems.textContent = f.problems.join("; ");
      problems.hidden = f.problems.length === 0;
    }
  }

  // --- charts --------------------------------------------------------------------------------

  let plots = [];

  function chartSpecs(data) {
    const spend = data.spend;
    const xs = spend.at.concat([spend.day_end]);
    const cumulative = spend.cumulative.concat([null]);
    const forecast = xs.map(() => null);
    forecast[spend.at.length - 1] = spend.spent_usd;
    forecast[xs.length - 1] = spend.forecast_usd;
    const spendSeries = [
      {},
      { label: "spent", stroke: "#1f6feb", width: 2, value: (u, v) => fmt.usd(v) },
      { label: "forecast", stroke: "#8cb4f5", width: 2, dash: [6, 4], spanGaps: true, value: (u, v) => fmt.usd(v) },
    ];
    const spendData = [xs, cumulative, forecast];
    if (spend.limit_usd !== null && spend.limit_usd !== undefined) {
      spendSeries.push({ label: "daily budget", stroke: "#cf222e", width: 1, value: (u, v) => fmt.usd(v) });
      spendData.push(xs.map(() => spend.limit_usd));
    }
    return {
      traffic: {
        series: [
          {},
          { label: "requests", stroke: "#1f6feb", width: 2, value: (u, v) => fmt.count(v) },
          { label: "errors", stroke: "#cf222e", width: 2, value: (u, v) => fmt.count(v) },
          { label: "fallbacks", stroke: "#9a6700", width: 2, value: (u, v) => fmt.count(v) },
        ],
        data: [data.at, data.requests, data.errors, data.fallbacks],
        axis: (u, values) => values.map(tick.count),
      },
      latency: {
        series: [
          {},
          { label: "p50", stroke: "#1a7f37", width: 2, points: { show: true, size: 4 }, value: (u, v) => fmt.ms(v) },
          { label: "p95", stroke: "#9a6700", width: 2, points: { show: true, size: 4 }, value: (u, v) => fmt.ms(v) },
        ],
        data: [data.at, data.p50_ms, data.p95_ms],
        axis: (u, values) => values.map(tick.ms),
      },
      spend: {
        series: spendSeries,
        data: spendData,
        axis: (u, values) => values.map(tick.usd),
      },
    };
  }

  function drawCharts() {
    plots.forEach((p) => p.plot.destroy());
    plots = [];
    const island = document.getElementById("overview-data");
    if (!island || typeof uPlot === "undefined") return;
    const data = JSON.parse(island.dataset.json);
    const specs = chartSpecs(data);
    document.querySelectorAll("[data-chart]").forEach((box) => {
      const spec = specs[box.dataset.chart];
      if (!spec) return;
      box.replaceChildren();
      const plot = new uPlot(
        {
          width: Math.max(200, box.clientWidth),
          height: 180,
          series: spec.series,
          axes: [{}, { values: spec.axis, size: 64 }],
          scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
          legend: { live: true },
        },
        spec.data,
        box,
      );
      plots.push({ plot, box });
    });
  }

  function resize() {
    plots.forEach(({ plot, box }) => plot.setSize({ width: Math.max(200, box.clientWidth), height: 180 }));
  }

  // --- wiring --------------------------------------------------------------------------------

  function init() {
    const now = document.querySelector("[data-overview-now]");
    if (!now) return;
    document.addEventListener("bw:snapshot", (event) => render(now, liveFigures(event.detail)));
    document.body.addEventListener("htmx:load", (event) => {
      const elt = event.detail && event.detail.elt;
      if (elt && elt.id === "overview-results") drawCharts();
    });
    const select = document.querySelector("[data-window-form] select");
    if (select) select.addEventListener("change", () => select.form.requestSubmit());
    let pending = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(resize, 150);
    });
    drawCharts();
    window.Breakwater.live.start();
  }

  window.Breakwater = window.Breakwater || {};
  window.Breakwater.overview = { liveFigures, fmt };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
