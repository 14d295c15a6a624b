// The Overview's resource graphs: CPU and memory per container over a chosen window (uPlot), from
// /usage/?window=…, with the monitor's newest point appended each time the live part is pushed.
(() => {
  const card = document.querySelector("[data-usage-url]");
  if (!card || !window.uPlot) return;
  const COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2"];
  const MIB = 1024 * 1024;
  const percent = (v) => (v == null ? "—" : `${v.toFixed(1)} %`);
  const bytes = (v) => (v == null ? "—" : v >= 1024 * MIB ? `${(v / 1024 / MIB).toFixed(2)} GiB` : `${(v / MIB).toFixed(1)} MiB`);
  const KINDS = [["cpu", percent, 1], ["memory", bytes, MIB]];
  let chosen = card.querySelector("[aria-pressed=true]").dataset.window;
  let data = null;
  let loadedAt = 0;
  let plots = [];

  function draw() {
    for (const plot of plots) plot.destroy();
    plots = [];
    const empty = data.times.length === 0;
    card.dataset.points = String(data.times.length); // for tests: how many moments are drawn
    card.querySelector("[data-graph-empty]").hidden = !empty;
    for (const [kind, format, least] of KINDS) {
      const element = card.querySelector(`[data-graph="${kind}"]`);
      element.hidden = empty;
      if (empty) continue;
      const options = {
        width: Math.max(300, element.clientWidth),
        height: 170,
        scales: {
          x: { time: true, range: () => [data.from, data.to] },
          y: { range: (u, min, max) => [0, Math.max(least, (max || 0) * 1.15)] },
        },
        axes: [{}, { size: 80, values: (u, ticks) => ticks.map(format) }],
        series: [
          { value: (u, t) => (t == null ? "—" : new Date(t * 1000).toLocaleString()) },
          ...data.containers.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5, value: (u, v) => format(v) })),
        ],
      };
      plots.push(new uPlot(options, [data.times, ...data[kind]], element));
    }
  }

  async function load(name) {
    const answer = await fetch(`${card.dataset.usageUrl}?window=${encodeURIComponent(name)}`, { headers: { Accept: "application/json" } });
    if (!answer.ok) return;
    data = await answer.json();
    chosen = name;
    loadedAt = data.to;
    for (const button of card.querySelectorAll("[data-window]")) button.setAttribute("aria-pressed", String(button.dataset.window === name));
    card.dataset.shown = name; // for tests and styles: which window is drawn
    draw();
  }

  // The live part carries the newest point: appended to a window of raw points, or a reason to read a
  // window of averages again once a new average can exist.
  function pushed() {
    const holder = document.querySelector(card.dataset.point);
    if (!data || !holder || !holder.dataset.point) return;
    const point = JSON.parse(holder.dataset.point);
    if (data.step !== point.step) {
      if (point.t - loadedAt >= data.step) load(chosen);
      return;
    }
    if (data.times.length && point.t <= data.times[data.times.length - 1]) return;
    if (Object.keys(point.cpu).some((name) => !data.containers.includes(name))) return load(chosen);
    const span = data.to - data.from;
    data.times.push(point.t);
    data.containers.forEach((name, i) => {
      data.cpu[i].push(point.cpu[name] ?? null);
      data.memory[i].push(point.memory[name] ?? null);
    });
    data.to = Math.max(data.to, point.t);
    data.from = data.to - span;
    const keep = data.times.findIndex((t) => t >= data.from);
    if (keep > 0) {
      data.times.splice(0, keep);
      for (const kind of ["cpu", "memory"]) for (const values of data[kind]) values.splice(0, keep);
    }
    if (plots.length !== KINDS.length) return draw();
    card.dataset.points = String(data.times.length);
    KINDS.forEach(([kind], i) => plots[i].setData([data.times, ...data[kind]]));
  }

  card.addEventListener("click", (event) => {
    const button = event.target.closest("[data-window]");
    if (button) load(button.dataset.window);
  });
  document.body.addEventListener("htmx:wsAfterMessage", pushed);
  document.body.addEventListener("htmx:afterSwap", pushed);
  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => data && draw(), 200);
  });
  load(chosen);
})();
