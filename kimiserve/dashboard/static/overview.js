// The overview's plots, drawn by the vendored uPlot from the JSON the server rendered.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("overview-data").textContent);
  const root = document.getElementById("plots");
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const charts = [];
  window.kimiCharts = charts; // read by the browser tests
  function width(el) {
    return Math.max(260, Math.floor(el.getBoundingClientRect().width) - 16);
  }
  // Tick labels with as many decimals as the tick step needs (uPlot's default keeps at most 3,
  // so sub-cent costs all read "0"), and a dollar sign for costs.
  function ticks(unit) {
    const prefix = unit === "USD" ? "$" : "";
    return (u, splits, axis, space, incr) => {
      let decimals = 0; // the step's own decimals: 0.25 needs 2, 0.00005 needs 5
      while (decimals < 10 && Math.abs(incr * 10 ** decimals - Math.round(incr * 10 ** decimals)) > 1e-6) decimals++;
      const format = { minimumFractionDigits: decimals, maximumFractionDigits: decimals };
      return splits.map((v) => (v == null ? "" : prefix + v.toLocaleString("en-US", format)));
    };
  }
  for (const [i, plot] of data.plots.entries()) {
    const box = document.createElement("figure");
    box.className = "plot card";
    box.id = "plot-" + i;
    const caption = document.createElement("figcaption");
    caption.textContent = plot.title + " (" + plot.unit + ")";
    box.appendChild(caption);
    root.appendChild(box);
    const series = [{}];
    plot.labels.forEach((label, j) => {
      // A mean (time to first token, tokens/s) has no value in buckets without requests: its
      // points are drawn, or a bucket between two empty ones would draw nothing at all.
      const points = { show: Boolean(plot.gaps), size: 6 };
      series.push({ label: label, stroke: palette[j % palette.length], width: 2, spanGaps: false, points: points });
    });
    if (!plot.labels.length) {
      const empty = document.createElement("p");
      empty.className = "hint";
      empty.textContent = "No usage in this range.";
      box.appendChild(empty);
    }
    const options = {
      width: width(box),
      height: 220,
      series: series,
      axes: [{}, { size: plot.unit === "USD" ? 84 : 60, values: ticks(plot.unit) }],
      scales: { x: { time: true } },
    };
    const chart = new uPlot(options, plot.data, box);
    chart.kimiTitle = plot.title;
    charts.push(chart);
  }
  performance.mark("plots-drawn"); // read by bench/dashboard.py
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      for (const chart of charts) chart.setSize({ width: width(chart.root.parentElement), height: 220 });
    }, 100);
  });
})();
