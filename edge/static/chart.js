// A small line chart on <canvas>: series of [x, y] points, axes with a few ticks, sized to its
// box at the device's pixel ratio. No library: the console is served with no CDN.

const COLOURS = ["#4aa3ff", "#e0a100", "#2fb36d", "#e0453a", "#b07cff", "#5fd3d3"];

function ticks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(v);
  return out;
}

/**
 * Draw `series` ([{points: [[x, y], ...], colour?, label?, dashed?}]) on `canvas`.
 * Options: xLabel(x) and yLabel(y) format ticks; xMin/xMax/yMin/yMax fix the ranges;
 * logX draws x on a log scale (frequencies); bands: [[x0, x1, colour]] shades x ranges.
 */
export function drawChart(canvas, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  if (w === 0 || hgt === 0) return;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(hgt * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const pts = series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#8b95a3";
  if (pts.length === 0) {
    g.fillText(opts.empty ?? "no data yet", 12, hgt / 2);
    return;
  }
  const fx = opts.logX ? Math.log10 : (x) => x;
  let xMin = opts.xMin ?? Math.min(...pts.map((p) => p[0]));
  let xMax = opts.xMax ?? Math.max(...pts.map((p) => p[0]));
  let yMin = opts.yMin ?? Math.min(...pts.map((p) => p[1]));
  let yMax = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
  if (xMax <= xMin) xMax = xMin + 1;
  if (yMax <= yMin) { yMin -= 1; yMax += 1; }
  const pad = (yMax - yMin) * 0.05;
  if (opts.yMin === undefined) yMin -= pad;
  if (opts.yMax === undefined) yMax += pad;
  const legend = series.filter((s) => s.label).length > 1 || opts.legend;
  const left = 56, right = 10, top = legend ? 26 : 10, bottom = 24;
  const X = (x) => left + ((fx(x) - fx(xMin)) / (fx(xMax) - fx(xMin))) * (w - left - right);
  const Y = (y) => top + (1 - (y - yMin) / (yMax - yMin)) * (hgt - top - bottom);
  for (const [x0, x1, colour] of opts.bands ?? []) {
    g.fillStyle = colour;
    g.fillRect(X(x0), top, X(x1) - X(x0), hgt - top - bottom);
  }
  g.strokeStyle = "#2a313b";
  g.fillStyle = "#8b95a3";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const y of ticks(yMin, yMax)) {
    g.beginPath();
    g.moveTo(left, Y(y));
    g.lineTo(w - right, Y(y));
    g.stroke();
    g.fillText(opts.yLabel ? opts.yLabel(y) : String(+y.toPrecision(4)), left - 6, Y(y));
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const xs = opts.xTicks ?? (opts.logX ? [] : ticks(xMin, xMax, Math.max(2, Math.floor(w / 110))));
  for (const x of xs) {
    if (x < xMin || x > xMax) continue;
    g.textAlign = X(x) > w - right - 24 ? "right" : X(x) < left + 24 ? "left" : "center";
    g.fillText(opts.xLabel ? opts.xLabel(x) : String(+x.toPrecision(4)), X(x), hgt - bottom + 6);
  }
  series.forEach((s, i) => {
    g.strokeStyle = s.colour ?? COLOURS[i % COLOURS.length];
    g.fillStyle = g.strokeStyle;
    g.lineWidth = 2;
    g.setLineDash(s.dashed ? [6, 4] : []);
    g.beginPath();
    let pen = false;
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) { pen = false; continue; }
      if (pen) g.lineTo(X(x), Y(y));
      else g.moveTo(X(x), Y(y));
      pen = true;
    }
    g.stroke();
    if (s.markers) {
      for (const [x, y] of s.points) {
        if (Number.isFinite(x) && Number.isFinite(y)) g.fillRect(X(x) - 3, Y(y) - 3, 6, 6);
      }
    }
  });
  g.setLineDash([]);
  // The legend: the labelled series, right-aligned along the top.
  const labelled = series.map((s, i) => [s, i]).filter(([s]) => s.label);
  if (legend) {
    g.textAlign = "left";
    g.textBaseline = "middle";
    let x = w - right;
    for (const [s, i] of labelled.reverse()) {
      const width = g.measureText(s.label).width;
      x -= width + 24;
      g.fillStyle = s.colour ?? COLOURS[i % COLOURS.length];
      g.fillRect(x, 10, 12, 4);
      g.fillStyle = "#c3cad4";
      g.fillText(s.label, x + 16, 12);
    }
  }
}
