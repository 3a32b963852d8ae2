// Lighting: a universe grid (512 cells with the levels last sent, the `lighting` topic's
// `levels`), a fixture view with each fixture's live output, and the output's frame rate and
// jitter (`stats`). Cells of patched fixtures are outlined; a cell's title names its fixture.
import { $, $$, byId, fmt, h, isShown, live, scheduler } from "../core.js";

const section = byId("page-lighting");
let universe = null;       // the universe the grid shows
let builtFor = "";         // the patch the grid and fixtures were built for
let cells = [];            // 512 cells of the grid

function owners(state) {
  /** universe -> address -> fixture id, for the cells of patched fixtures. */
  const out = {};
  for (const [id, f] of Object.entries(state.fixtures ?? {})) {
    out[f.universe] ??= {};
    out[f.universe][f.address] = id;
  }
  return out;
}

function build(state) {
  const universes = (state.universes ?? []).map(String);
  const key = JSON.stringify([universes, Object.keys(state.fixtures ?? {})]);
  if (key === builtFor) return;
  builtFor = key;
  if (!universes.includes(String(universe))) universe = universes[0] ?? null;
  byId("universe-tabs").replaceChildren(...universes.map((u) => h("button.tab", {
    type: "button", dataset: { universe: u },
    onclick: () => { universe = u; builtFor = ""; build(live.state.lighting ?? {}); render(); },
  }, `Universe ${u}`)));
  const grid = byId("universe-grid");
  const patched = owners(state)[universe] ?? {};
  const fixtureAt = [];
  for (const [addr, id] of Object.entries(patched)) fixtureAt[Number(addr)] = id;
  cells = [];
  for (let a = 1; a <= 512; a++) {
    const cell = h("div.cell", { dataset: { address: String(a) }, title: `${universe}/${a}` }, "0");
    if (fixtureAt[a]) cell.classList.add("first");
    cell.dataset.fixture = "";
    cells.push(cell);
  }
  // Mark each fixture's footprint: from its address up to the next fixture's (or 8 channels).
  const starts = Object.keys(patched).map(Number).sort((x, y) => x - y);
  starts.forEach((start, i) => {
    const size = Object.keys(state.fixtures[patched[start]]?.output ?? {}).length || 1;
    const end = Math.min(starts[i + 1] ?? 513, start + size);
    for (let a = start; a < end && a <= 512; a++) {
      cells[a - 1].dataset.fixture = patched[start];
      cells[a - 1].classList.add("patched");
      cells[a - 1].title = `${universe}/${a} · ${patched[start]} +${a - start}`;
    }
  });
  grid.replaceChildren(...cells);
  byId("fixture-list").replaceChildren(...Object.entries(state.fixtures ?? {}).map(([id, f]) =>
    h("article.fixture", { dataset: { fixture: id } },
      h("h3", {}, id, h("small", {}, ` ${f.profile} · ${f.universe}/${f.address}`)),
      h("div.swatch"),
      h("dl.attrs"))));
}

function renderStats(stats) {
  byId("lx-rate").textContent = stats?.rate_hz != null
    ? `${fmt(stats.rate_hz, 1)} Hz` : "—";
  byId("lx-nominal").textContent = stats?.rate_hz_nominal != null
    ? `of ${fmt(stats.rate_hz_nominal, 0)} Hz` : "";
  byId("lx-jitter").textContent = stats?.jitter_ms
    ? `${fmt(stats.jitter_ms.p50, 2)} ms p50 · ${fmt(stats.jitter_ms.p99, 1)} ms p99` : "—";
  byId("lx-frames").textContent = stats
    ? `${stats.frames} frames · ${stats.late_frames} late · ${stats.skipped_frames} skipped`
      + ` · ${stats.send_errors} send errors` : "—";
}

function renderFixtures(state) {
  for (const card of $$(byId("fixture-list"), "article.fixture")) {
    const f = state.fixtures?.[card.dataset.fixture];
    if (!f) continue;
    const out = f.output ?? {};
    const dl = $(card, "dl.attrs");
    const rows = Object.entries(out).map(([k, v]) => [h("dt", {}, k),
      h("dd", { dataset: { attribute: k } }, typeof v === "number" ? fmt(v, Number.isInteger(v) ? 0 : 1) : String(v))]);
    dl.replaceChildren(...rows.flat());
    // A colour swatch: intensity times the colour mix where the fixture has one.
    const i = (out.intensity ?? out.dimmer ?? 100) / 100;
    const c = (k) => Math.round(255 * i * ((out[k] ?? (out.red === undefined ? 100 : 0)) / 100));
    $(card, ".swatch").style.background = `rgb(${c("red")}, ${c("green")}, ${c("blue")})`;
  }
}

const render = scheduler(() => {
  const state = live.state.lighting ?? {};
  byId("lighting-none").hidden = state.rendered !== false;
  byId("lighting-body").hidden = state.rendered === false;
  if (!isShown(section) || !state.rendered) return;
  build(state);
  for (const tab of $$(byId("universe-tabs"), ".tab")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.universe === String(universe)));
  }
  renderStats(state.stats);
  const levels = state.levels?.[String(universe)] ?? [];
  for (let a = 0; a < cells.length; a++) {
    const v = levels[a] ?? 0;
    const cell = cells[a];
    if (cell.textContent !== String(v)) {
      cell.textContent = String(v);
      cell.style.setProperty("--level", String(v / 255));
      cell.classList.toggle("lit", v > 0);
    }
  }
  renderFixtures(state);
});

export const page = {
  id: "lighting",
  init() {
    live.on("lighting", () => render());
  },
  show() { render(); },
  reset() {
    builtFor = "";
    universe = null;
    cells = [];
    byId("universe-grid").replaceChildren();
    byId("fixture-list").replaceChildren();
  },
};
