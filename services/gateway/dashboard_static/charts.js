// Charts on the vendored uPlot (MIT, vendor/uplot/LICENSE): rolling time series and depth charts.
import uPlot from "./vendor/uplot/uPlot.esm.js";

const AXIS = { stroke: "#8b96a5", grid: { stroke: "#222a33", width: 1 }, ticks: { stroke: "#2a313c" } };
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#8b96a5"];

function widthOf(element) {
  return Math.max(240, Math.floor(element.clientWidth || element.parentElement.clientWidth || 320));
}

/**
 * A rolling time series: `push(tSeconds, values)` appends one point per series (null: no value),
 * keeping the last `keep` points. `points: true` draws dots only (sparse samples such as latencies).
 */
export class TimeSeries {
  constructor(element, labels, { height = 170, keep = 600, points = false, yLabel = "", windowS = 300 } = {}) {
    this.keep = keep;
    this.data = [[], ...labels.map(() => [])];
    const series = labels.map((label, index) => ({
      label,
      stroke: COLORS[index % COLORS.length],
      width: 1.5,
      spanGaps: !points,
      ...(points ? { paths: () => null, points: { show: true, size: 5, fill: COLORS[index % COLORS.length] } } : {}),
    }));
    this.plot = new uPlot(
      {
        width: widthOf(element),
        height,
        series: [{}, ...series],
        axes: [AXIS, { ...AXIS, label: yLabel, size: 56 }],
        // At least the last `windowS` seconds up to now, so a few points do not stretch over the axis.
        scales: {
          x: { time: true, range: (_, min) => {
            // The newest point, not uPlot's max: for a single point uPlot proposes a day-wide range.
            const now = Date.now() / 1000;
            const times = this.data[0];
            const last = times.length ? times[times.length - 1] : now;
            return [Math.min(min ?? now, now - windowS), Math.max(last, now)];
          } },
          y: { range: (_, min, max) => {
            if (min === null || max === null || min === max) return [(min ?? 0) - 1, (max ?? 0) + 1];
            const pad = (max - min) * 0.12;
            return [min >= 0 ? Math.max(0, min - pad) : min - pad, max + pad];
          } },
        },
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      },
      this.data,
      element,
    );
    new ResizeObserver(() => this.plot.setSize({ width: widthOf(element), height })).observe(element);
  }

  push(t, values) {
    const [times, ...columns] = this.data;
    // uPlot needs ascending x: a late sample goes where it belongs.
    let at = times.length;
    while (at > 0 && times[at - 1] > t) at -= 1;
    times.splice(at, 0, t);
    columns.forEach((column, index) => column.splice(at, 0, values[index] ?? null));
    if (times.length > this.keep) this.data.forEach((column) => column.splice(0, times.length - this.keep));
    // Redraw once per animation frame however many points arrived in it.
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => {
        this.scheduled = false;
        this.plot.setData(this.data);
      });
    }
  }
}

/** Cumulative depth: bids to the left of the mid in green, asks to the right in red. */
export class DepthChart {
  constructor(element, height = 150) {
    this.plot = new uPlot(
      {
        width: widthOf(element),
        height,
        series: [
          { label: "price" },
          { label: "bids", stroke: "#3fb950", fill: "rgba(63,185,80,.18)", paths: uPlot.paths.stepped({ align: 1 }) },
          { label: "asks", stroke: "#f85149", fill: "rgba(248,81,73,.18)", paths: uPlot.paths.stepped({ align: -1 }) },
        ],
        axes: [AXIS, { ...AXIS, size: 50 }],
        scales: { x: { time: false } },
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
      },
      [[], [], []],
      element,
    );
    new ResizeObserver(() => this.plot.setSize({ width: widthOf(element), height })).observe(element);
  }

  /** `bids` and `asks` as the API sends them: [[price, quantity], ...] as decimal strings, best first. */
  update(bids, asks) {
    const bidPoints = [];
    let total = 0;
    for (const [price, quantity] of bids) {
      total += Number(quantity);
      bidPoints.push([Number(price), total]);
    }
    bidPoints.reverse();
    const askPoints = [];
    total = 0;
    for (const [price, quantity] of asks) {
      total += Number(quantity);
      askPoints.push([Number(price), total]);
    }
    const xs = [...bidPoints.map((p) => p[0]), ...askPoints.map((p) => p[0])];
    const bidSeries = [...bidPoints.map((p) => p[1]), ...askPoints.map(() => null)];
    const askSeries = [...bidPoints.map(() => null), ...askPoints.map((p) => p[1])];
    this.plot.setData([xs, bidSeries, askSeries]);
  }
}
