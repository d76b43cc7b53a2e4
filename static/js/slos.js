// The SLOs page (console/pages/slos.py): the error-budget charts (uPlot), one line per agent,
// drawn from #slo-data's data-json attribute (no inline script: the CSP).
"use strict";

(function () {
  const COLOURS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];
  const pct = (v) => (v === null || v === undefined ? "\u2013" : (v * 100).toFixed(1) + "%");
  // Axis ticks: short, so they fit the axis (50%, -250%, -6.9k%).
  function compactPct(v) {
    const p = v * 100;
    const a = Math.abs(p);
    if (a >= 1000) return (p / 1000).toFixed(a >= 10000 ? 0 : 1).replace(/\.0$/, "") + "k%";
    return Math.round(p) + "%";
  }
  const tick = (u, values) => values.map((v) => (v === null ? "" : compactPct(v)));
  let plots = [];

  function draw() {
    plots.forEach((p) => p.plot.destroy());
    plots = [];
    const island = document.getElementById("slo-data");
    if (!island || typeof uPlot === "undefined") return;
    const data = JSON.parse(island.dataset.json);
    document.querySelectorAll("[data-slo-chart]").forEach((box) => {
      const lines = data[box.dataset.sloChart];
      if (!lines) return;
      box.replaceChildren();
      const series = [{}].concat(
        data.agents.map((name, i) => ({
          label: name,
          stroke: COLOURS[i % COLOURS.length],
          width: 2,
          spanGaps: true,
          value: (u, v) => pct(v),
        })),
      );
      const plot = new uPlot(
        {
          width: Math.max(200, box.clientWidth),
          height: 200,
          series: series,
          axes: [{}, { values: tick, size: 64 }],
          scales: {
            y: {
              range: (u, min, max) => [Math.min(0, min === null ? 0 : min), Math.max(1, max === null ? 1 : max)],
            },
          },
          legend: { live: true },
        },
        [data.at].concat(lines),
        box,
      );
      plots.push({ plot, box });
    });
  }

  function resize() {
    plots.forEach(({ plot, box }) => plot.setSize({ width: Math.max(200, box.clientWidth), height: 200 }));
  }

  function init() {
    let pending = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(resize, 150);
    });
    draw();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
