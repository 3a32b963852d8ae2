// Acoustics: the mode selector (POST /api/v1/acoustics/recall), each zone's targets against its
// measured room and the design's prediction per band, the latest measurement's decay curves
// (GET /api/v1/acoustics/measurements/{id}) and the progress of a measurement or an
// adaptation. Live from the `acoustics` topic (SoundFieldControl.snapshot()).
import { $$, applyPermissions, byId, command, fmt, getJson, h, isShown, live, scheduler } from "../core.js";
import { drawChart } from "../chart.js";

const section = byId("page-acoustics");
const METRICS = { t30_s: ["T30", "s", 2], c80_db: ["C80", "dB", 1] };
let metric = "t30_s";
let builtFor = "";
let decayFor = "";   // the measurement whose curves are drawn

function table(values, bands) {
  /** A mode's per-band dict ({"125": v}) or a list in band order, as a list. */
  if (Array.isArray(values)) return values;
  return bands.map((b) => values?.[String(b)] ?? null);
}

function build(state) {
  const key = JSON.stringify([Object.keys(state.modes ?? {}), Object.keys(state.zones ?? {})]);
  if (key === builtFor) return;
  builtFor = key;
  byId("mode-buttons").replaceChildren(...Object.entries(state.modes ?? {}).map(([name, m]) =>
    h("button.mode", {
      type: "button", dataset: { mode: name, needs: "run" }, title: m.description ?? "",
      onclick: async () => {
        byId("acoustics-reason").textContent = "";
        byId("acoustics-reason").textContent = await command("/api/v1/acoustics/recall", { mode: name });
      },
    }, m.title || name)));
  applyPermissions(byId("mode-buttons"));
  byId("zones").replaceChildren(...Object.keys(state.zones ?? {}).map((name) =>
    h("article.zone", { dataset: { zone: name } },
      h("h3", {}, `Zone ${name} `, h("span.badge.zone-state"), " ", h("span.zone-mode")),
      h("button.secondary.adapt", {
        type: "button", dataset: { needs: "run maintain" },
        title: "Measure the zone and adapt its field to the mode (takes a while; sound plays)",
        onclick: async () => {
          const mode = live.state.acoustics?.zones?.[name]?.mode;
          const reason = byId("acoustics-reason");
          reason.textContent = "";
          reason.textContent = mode
            ? await command(`/api/v1/acoustics/zones/${encodeURIComponent(name)}/adapt`, { mode })
            : "Recall a mode first: the zone adapts to its mode.";
        },
      }, "Adapt to this mode"),
      h("p.reason.zone-error"),
      h("div.tabs", {}, Object.entries(METRICS).map(([k, [label]]) => h("button.tab", {
        type: "button", dataset: { metric: k },
        onclick: () => { metric = k; render(); },
      }, label))),
      h("canvas.chart.bands"),
      h("div.table-wrap", {}, h("table.bands", {}, h("thead"), h("tbody"))),
      h("p.dim.zone-notes"))));
  applyPermissions(byId("zones"));
}

function renderZone(el, z, state) {
  const bands = state.bands_hz ?? [];
  const mode = state.modes?.[z.mode];
  el.querySelector(".zone-state").textContent = z.state;
  el.querySelector(".zone-state").className = `badge zone-state ${z.state === "playing" ? "ok"
    : z.state === "failed" ? "bad" : "warn"}`;
  el.querySelector(".zone-mode").textContent = mode ? mode.title || z.mode : z.mode ?? "no mode";
  el.querySelector(".zone-error").textContent = z.error ?? "";
  for (const tab of $$(el, ".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.metric === metric));
  const [label, unit, digits] = METRICS[metric];
  const target = table(mode?.[metric], bands);
  const room = table(z.room?.[metric], bands);
  const predicted = table(z.design?.prediction?.[metric], bands);
  const adapted = z.adaptation?.result?.measured?.[metric] ?? null;
  const series = [
    { label: "target", points: bands.map((b, i) => [b, target[i]]), colour: "#2fb36d", markers: true },
    { label: `room (${z.room?.source ?? "?"})`, points: bands.map((b, i) => [b, room[i]]),
      colour: "#e0a100", markers: true },
    { label: "predicted", points: bands.map((b, i) => [b, predicted[i]]), colour: "#4aa3ff", dashed: true },
  ];
  if (Array.isArray(adapted)) {
    series.push({ label: "measured (adapted)", points: bands.map((b, i) => [b, adapted[i]]), colour: "#b07cff" });
  }
  const canvas = el.querySelector("canvas");
  drawChart(canvas, series.map((s) => ({ ...s, points: s.points.map(([b, v]) => [b, v ?? NaN]) })), {
    logX: true, xMin: bands[0] / 1.4, xMax: bands[bands.length - 1] * 1.4, xTicks: bands,
    xLabel: (x) => (x >= 1000 ? `${x / 1000}k` : String(x)),
    yLabel: (y) => `${+y.toPrecision(3)} ${unit}`,
  });
  const tol = mode?.tolerances?.[metric];
  const thead = el.querySelector("thead"), tbody = el.querySelector("tbody");
  thead.replaceChildren(h("tr", {}, h("th", {}, `${label} (${unit})`), bands.map((b) => h("th", {}, `${b}`))));
  const row = (name2, values, cls = "") => h(`tr${cls}`, {}, h("th", {}, name2),
    bands.map((_, i) => h("td", {}, fmt(values[i], digits))));
  const rows = [row("target", target), row(`room (${z.room?.source ?? "?"})`, room)];
  if (z.design) rows.push(row("predicted", predicted));
  if (Array.isArray(adapted)) rows.push(row("measured", adapted));
  if (typeof tol === "number") {
    // Where the room (or the prediction) is off its target by more than one JND.
    const off = bands.map((_, i) => {
      const v = predicted[i] ?? room[i];
      return typeof v === "number" && typeof target[i] === "number" && Math.abs(v - target[i]) > tol;
    });
    rows.push(h("tr.jnd", {}, h("th", {}, `± 1 JND (${tol} ${unit})`),
      off.map((bad) => h(`td.${bad ? "off" : "on"}`, {}, bad ? "off" : "ok"))));
  }
  tbody.replaceChildren(...rows);
  const notes = z.design?.notes ?? [];
  el.querySelector(".zone-notes").textContent = [
    z.loop?.note, ...notes, z.paths ? `paths: ${z.paths}` : "",
  ].filter(Boolean).join(" · ");
}

function renderProgress(state) {
  const box = byId("acoustics-progress");
  const items = [];
  const m = state.measurement;
  if (m) {
    items.push(h("div.bar", { dataset: { measurement: m.id } },
      h("progress", { max: "100", value: String(m.percent ?? 0) }),
      h("span", {}, `measurement ${m.id}: ${m.state}${m.error ? ` (${m.error})` : ""}`
        + ` · ${fmt(m.percent, 0)} % of ${fmt(m.seconds, 1)} s`)));
  }
  const a = state.adaptation;
  if (a) {
    const done = a.state === "done" ? 1 : (a.iteration ?? 0) / Math.max(1, a.iterations ?? 1);
    items.push(h("div.bar", { dataset: { adaptation: a.id } },
      h("progress", { max: "1", value: String(done) }),
      h("span", {}, `adapting zone ${a.zone} to ${a.mode}: ${a.phase ?? a.state}`
        + ` · iteration ${a.iteration ?? 0} of ${a.iterations ?? "?"}`
        + `${(a.worst_jnd ?? []).length ? ` · worst ${a.worst_jnd.map((j) => fmt(j, 2)).join(" → ")} JND` : ""}`
        + `${a.error ? ` · ${a.error}` : ""}${a.converged === true ? " · converged"
          : a.converged === false ? " · not converged" : ""}`)));
  }
  if (!items.length) items.push(h("p.dim", {}, "No measurement or adaptation has run since the service started."));
  box.replaceChildren(...items);
}

async function loadDecay(state) {
  const m = state.measurement;
  let id = m && m.state === "done" ? m.id : null;
  if (!id && decayFor === "") {
    const list = await getJson("/api/v1/acoustics/measurements");
    id = list?.measurements?.[0]?.id ?? null;
    if (!id) decayFor = "none";
  }
  if (!id || id === decayFor) return;
  decayFor = id;
  const result = await getJson(`/api/v1/acoustics/measurements/${encodeURIComponent(id)}`,
    (why) => { byId("decay-title").textContent = why; });
  const pair = result?.pairs?.find((p) => p.metrics?.curves?.length);
  if (!pair) {
    byId("decay-title").textContent = `measurement ${id}: no decay curves`;
    return;
  }
  byId("decay-title").textContent = `measurement ${id} · output ${pair.output} → input ${pair.input}`;
  drawDecay(pair.metrics.curves);
}

let curves = [];
function drawDecay(next = curves) {
  curves = next;
  drawChart(byId("decay"), curves.filter((c) => !c.error).map((c) => ({
    label: `${c.band_hz} Hz`,
    points: c.time_s.map((t, i) => [t, c.level_db[i] ?? NaN]),
  })), { yMin: -70, yMax: 0, xLabel: (x) => `${+x.toFixed(2)} s`, yLabel: (y) => `${y} dB`,
    empty: "no measurement yet" });
}

const render = scheduler(() => {
  const state = live.state.acoustics ?? {};
  byId("acoustics-none").hidden = state.configured !== false;
  byId("acoustics-body").hidden = state.configured === false;
  if (!isShown(section) || !state.configured) return;
  build(state);
  const active = new Set(Object.values(state.zones ?? {}).map((z) => z.mode));
  for (const b of $$(byId("mode-buttons"), "button.mode")) {
    b.setAttribute("aria-pressed", String(active.has(b.dataset.mode)));
  }
  for (const el of $$(byId("zones"), "article.zone")) {
    const z = state.zones?.[el.dataset.zone];
    if (z) renderZone(el, z, state);
  }
  renderProgress(state);
  loadDecay(state);
});

export const page = {
  id: "acoustics",
  init() {
    live.on("acoustics", () => render());
    window.addEventListener("resize", () => { if (isShown(section)) { render(); drawDecay(); } });
  },
  show() {
    render();
    drawDecay();
  },
  reset() {
    builtFor = "";
    decayFor = "";
    curves = [];
    byId("zones").replaceChildren();
    byId("mode-buttons").replaceChildren();
  },
};
