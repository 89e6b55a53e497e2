// Draws the job page's charts from the JSON the server embedded (#dashboard-data)
// with the vendored Chart.js. Read-only: no requests of its own.
(function () {
  "use strict";
  const source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") {
    return;
  }
  const data = JSON.parse(source.textContent);
  Chart.defaults.animation = false; // the page reloads itself while a trial runs
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.plugins.legend.labels.usePointStyle = true;

  const OUTCOMES = [
    { key: "converged", label: "converged", color: "#2e7d32", style: "circle" },
    { key: "early-stopped", label: "Succeeded, not converged (stopped early)", color: "#ef6c00", style: "triangle" },
    { key: "failed", label: "Failed (no result)", color: "#c62828", style: "crossRot" },
    { key: "running", label: "running", color: "#1565c0", style: "rectRot" },
  ];
  const sizes = data.batch_sizes;
  const trialAxis = { title: { display: true, text: "trial number" }, ticks: { precision: 0 } };

  function kJ(value) {
    return (value / 1000).toLocaleString(undefined, { maximumSignificantDigits: 4 }) + " kJ";
  }

  function byOutcome(points) {
    return OUTCOMES.map(function (o) {
      return {
        label: o.label,
        data: points.filter(function (p) { return p.outcome === o.key; }),
        backgroundColor: o.color,
        borderColor: o.color,
        pointStyle: o.style,
        pointRadius: 5,
        pointBorderWidth: o.style === "crossRot" ? 2 : 1,
      };
    }).filter(function (d) { return d.data.length > 0; });
  }

  const trialPoints = data.trials.map(function (t) {
    return { x: t.trial_number, y: sizes.indexOf(t.batch_size), outcome: t.outcome };
  });
  new Chart(document.getElementById("batch-size-chart"), {
    type: "scatter",
    data: { datasets: byOutcome(trialPoints) },
    options: {
      plugins: {
        title: { display: true, text: "Batch size of each trial" },
        tooltip: { callbacks: { label: function (c) { return "trial " + c.raw.x + ": batch size " + sizes[c.raw.y]; } } },
      },
      scales: {
        x: trialAxis,
        y: {
          title: { display: true, text: "batch size" },
          min: -0.5,
          max: sizes.length - 0.5,
          // One tick per batch size (y is its index), labelled with the size.
          afterBuildTicks: function (axis) { axis.ticks = sizes.map(function (_, i) { return { value: i }; }); },
          ticks: { callback: function (v) { return sizes[v]; } },
        },
      },
    },
  });

  const costPoints = data.trials.filter(function (t) { return t.cost !== null; }).map(function (t) {
    return { x: t.trial_number, y: t.cost, outcome: t.outcome, batch_size: t.batch_size };
  });
  const costSets = byOutcome(costPoints);
  if (data.default_cost !== null && data.trials.length > 0) {
    costSets.push({
      type: "line",
      label: "default batch size " + data.default_batch_size + ": mean converged cost",
      data: [
        { x: data.trials[0].trial_number, y: data.default_cost },
        { x: data.trials[data.trials.length - 1].trial_number, y: data.default_cost },
      ],
      borderColor: "#616161",
      borderDash: [6, 4],
      pointRadius: 0,
      showLine: true,
    });
  }
  new Chart(document.getElementById("cost-chart"), {
    type: "scatter",
    data: { datasets: costSets },
    options: {
      plugins: {
        title: { display: true, text: "Cost of each finished trial" },
        tooltip: { callbacks: { label: function (c) {
          return c.raw.batch_size === undefined ? kJ(c.raw.y)
            : "trial " + c.raw.x + " (batch size " + c.raw.batch_size + "): " + kJ(c.raw.y);
        } } },
      },
      scales: { x: trialAxis, y: { title: { display: true, text: "cost (kJ)" }, ticks: { callback: function (v) { return v / 1000; } } } },
    },
  });

  const armsCanvas = document.getElementById("arms-chart");
  if (armsCanvas && data.arms.length > 0) {
    new Chart(armsCanvas, {
      type: "bar",
      data: {
        labels: data.arms.map(function (a) { return String(a.batch_size); }),
        datasets: [
          {
            label: "95% credible band of the cost",
            data: data.arms.map(function (a) { return a.low === null ? null : [a.low, a.high]; }),
            backgroundColor: "rgba(21, 101, 192, 0.25)",
            borderColor: "#1565c0",
            borderWidth: 1,
            minBarLength: 2,
          },
          {
            type: "line",
            label: "posterior mean cost",
            data: data.arms.map(function (a) { return a.mean; }),
            showLine: false,
            pointRadius: 6,
            pointStyle: "line",
            borderWidth: 3,
            borderColor: "#0d47a1",
            backgroundColor: "#0d47a1",
          },
        ],
      },
      options: {
        plugins: { title: { display: true, text: "Posterior cost per arm (batch size)" } },
        scales: {
          x: { title: { display: true, text: "batch size" } },
          y: {
            beginAtZero: false, // the bands matter, not the distance from zero
            title: { display: true, text: "cost (kJ)" },
            ticks: { callback: function (v) { return v / 1000; } },
          },
        },
      },
    });
  }
})();
