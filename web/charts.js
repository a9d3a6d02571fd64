// Small live line charts in inline SVG, and a parser for the Prometheus text format.
// No libraries: the pages must work without a build step or internet access.

import { h, s } from "/static/common.js";

const WIDTH = 300;
const HEIGHT = 90;
const PAD_TOP = 8;

/**
 * A fixed-length history of samples for several series. `push` appends one sample per
 * series (null for "no data"), dropping the oldest beyond `capacity`.
 */
export class History {
  constructor(names, capacity) {
    this.names = names;
    this.capacity = capacity;
    this.values = names.map(() => []);
  }

  push(samples) {
    this.values.forEach((series, i) => {
      const value = samples[i];
      series.push(typeof value === "number" && Number.isFinite(value) ? value : null);
      if (series.length > this.capacity) series.shift();
    });
  }

  latest(i) {
    const series = this.values[i];
    for (let k = series.length - 1; k >= 0; k -= 1) if (series[k] !== null) return series[k];
    return null;
  }
}

/** A rounded ceiling for the y axis, so the scale does not jitter every sample. */
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

/**
 * Splits a series into runs without gaps, as polyline point lists. The x axis always
 * spans `capacity` samples with the newest at the right edge, so a young history
 * grows in from the right instead of stretching.
 */
function segments(values, capacity, ceiling) {
  const step = WIDTH / Math.max(1, capacity - 1);
  const offset = capacity - values.length;
  const y = (v) => PAD_TOP + (HEIGHT - PAD_TOP) * (1 - Math.min(v, ceiling) / ceiling);
  const runs = [];
  let run = [];
  values.forEach((v, i) => {
    if (v === null) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push([(offset + i) * step, y(v)]);
    }
  });
  if (run.length) runs.push(run);
  return runs;
}

/**
 * Draws `history` into `figure` (a <figure>): a caption with the title and `headline`
 * (by default the latest value of the first series), the lines, and a legend when
 * there are several series.
 * The SVG is described in text for screen readers.
 */
export function drawChart(figure, { title, unit, history, format, area = false, headline }) {
  const all = history.values.flat().filter((v) => v !== null);
  const ceiling = niceCeiling(Math.max(0, ...all));
  const latest = headline === undefined ? history.latest(0) : headline;
  const svg = s(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img", "aria-label": `${title}: ${latest === null ? "no data yet" : `${format(latest)} ${unit}`}` },
    s("line", { class: "chart-grid", x1: 0, x2: WIDTH, y1: PAD_TOP, y2: PAD_TOP }),
    s("line", { class: "chart-grid", x1: 0, x2: WIDTH, y1: (HEIGHT + PAD_TOP) / 2, y2: (HEIGHT + PAD_TOP) / 2 }),
  );
  history.values.forEach((values, i) => {
    for (const run of segments(values, history.capacity, ceiling)) {
      const points = run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      if (area && i === 0 && run.length > 1) {
        const first = run[0][0].toFixed(1);
        const last = run[run.length - 1][0].toFixed(1);
        svg.append(s("polygon", { class: "chart-area", points: `${first},${HEIGHT} ${points} ${last},${HEIGHT}` }));
      }
      if (run.length === 1) {
        const [x, y] = run[0];
        svg.append(s("line", { class: `chart-line chart-dot series-${i}`, x1: x - 0.5, x2: x, y1: y, y2: y }));
      } else {
        svg.append(s("polyline", { class: `chart-line series-${i}`, points }));
      }
    }
  });
  const legend =
    history.names.length > 1
      ? h(
          "div",
          { class: "legend" },
          history.names.map((name, i) => {
            const value = history.latest(i);
            return h(
              "span",
              {},
              h("span", { class: `legend-swatch series-${i}`, "aria-hidden": "true" }),
              `${name} ${value === null ? "—" : `${format(value)} ${unit}`}`,
            );
          }),
        )
      : null;
  const parts = [
    h(
      "figcaption",
      {},
      h("span", { class: "chart-title", text: title }),
      h(
        "span",
        { class: "chart-value" },
        latest === null ? "—" : format(latest),
        h("span", { class: "chart-unit", text: ` ${unit}` }),
      ),
    ),
    svg,
    h("div", { class: "legend", "aria-hidden": "true" }, h("span", { text: `scale 0 – ${format(ceiling)} ${unit}` })),
  ];
  if (legend) parts.push(legend);
  figure.replaceChildren(...parts);
}

function unescapeLabel(value) {
  return value.replace(/\\(["\\n])/g, (_, c) => (c === "n" ? "\n" : c));
}

function parseValue(raw) {
  if (raw === "+Inf" || raw === "Inf") return Infinity;
  if (raw === "-Inf") return -Infinity;
  return Number(raw);
}

/** Samples of the Prometheus text format: `[{name, labels, value}]`. */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
  for (const raw of String(text).split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const match = line.exec(raw.trim());
    if (!match) continue;
    const labels = {};
    if (match[2]) {
      for (const [, key, value] of match[2].matchAll(label)) labels[key] = unescapeLabel(value);
    }
    const value = parseValue(match[3]);
    if (!Number.isNaN(value)) samples.push({ name: match[1], labels, value });
  }
  return samples;
}

/** Sum of the samples named `name` whose labels match `filter`. */
export function sum(samples, name, filter = () => true) {
  let total = 0;
  let found = false;
  for (const sample of samples) {
    if (sample.name === name && filter(sample.labels)) {
      total += sample.value;
      found = true;
    }
  }
  return found ? total : null;
}
