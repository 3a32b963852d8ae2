// Machinery: every axis with its position against its limits, speed, load and state; a move
// and a stop per axis; the reason when the safety supervisor refuses. Live from the `devices`,
// `telemetry` and `axes` topics; commands over REST.
import {
  $, api, applyPermissions, byId, command, fmt, isShown, live, scheduler,
} from "../core.js";

const section = byId("page-machinery");
const axes = new Map();  // device id -> {el, device, points}
let supervised = {};     // the supervisor's axes (axes topic): id -> state, limits, move

function isAxis(device) {
  return Boolean(device.commands?.move_to?.moves_machinery) || device.id in supervised;
}

function card(device) {
  const el = byId("axis-card").content.firstElementChild.cloneNode(true);
  el.dataset.device = device.id;
  $(el, ".name").textContent = device.name || device.id;
  $(el, ".id").textContent = device.id;
  const form = $(el, "form.move");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const args = { position: Number(form.position.value) };
    if (form.speed.value) args.speed = Number(form.speed.value);
    await run(device.id, "move_to", args, el);
  });
  $(el, "button.stop").addEventListener("click", () => run(device.id, "stop", {}, el));
  applyPermissions(el);
  byId("axes").append(el);
  const a = { el, device, points: null };
  loadPoints(a);
  return a;
}

async function run(id, name, args, el) {
  const reason = $(el, ".reason");
  reason.textContent = "";
  // Stopping an axis is everyone's right (the stop permission), and the supervisor also ends
  // the move it is running: its route, not the device command (run or maintain).
  reason.textContent = name === "stop" && id in supervised
    ? await command("/api/v1/machinery/stop", { axes: [id] })
    : await command(`/api/v1/devices/${encodeURIComponent(id)}/commands/${name}`, args);
}

async function loadPoints(a) {
  try {
    const res = await api(`/api/v1/devices/${encodeURIComponent(a.device.id)}/points`);
    if (!res.ok) return;
    a.points = Object.fromEntries((await res.json()).map((p) => [p.name, p]));
    render();
  } catch { /* the live values still show; the travel uses the command's limits */ }
}

function limits(a) {
  const sv = supervised[a.device.id];
  const spec = a.device.commands?.move_to?.args?.position;
  const min = sv?.soft_min ?? a.points?.position?.min ?? spec?.min ?? 0;
  const max = sv?.soft_max ?? a.points?.position?.max ?? spec?.max ?? 1;
  return { min, max: max > min ? max : min + 1 };
}

function value(id, point) {
  const r = live.state.telemetry?.[`${id}/${point}`];
  return r && r.q !== "bad" ? r.v : undefined;
}

function renderCard(a) {
  const el = a.el, id = a.device.id;
  const v = (p) => value(id, p);
  $(el, ".position").textContent = fmt(v("position"), 1);
  $(el, ".velocity").textContent = fmt(v("velocity"), 0);
  $(el, ".load").textContent = fmt(v("load"), 1);
  $(el, ".target-value").textContent = fmt(v("target_position"), 0);
  const { min, max } = limits(a);
  $(el, ".limits").textContent = `${fmt(min, 0)} … ${fmt(max, 0)} mm`;
  const frac = (x) => `${Math.max(0, Math.min(1, (x - min) / (max - min))) * 100}%`;
  if (typeof v("position") === "number") $(el, ".carriage").style.bottom = frac(v("position"));
  const target = $(el, ".travel .target");
  if (typeof v("target_position") === "number") {
    target.style.display = "block";
    target.style.bottom = frac(v("target_position"));
  }
  const drive = v("fault") ? `fault ${v("fault_code") ?? ""}` : v("moving") ? "moving"
    : v("enabled") ? "enabled" : v("ready") ? "ready" : "—";
  $(el, ".drive").textContent = drive;
  const health = live.state.devices?.[id]?.health;
  if (health) {
    const badge = $(el, ".state");
    badge.textContent = health.state;
    badge.className = `state badge ${health.state === "online" ? "ok"
      : health.state === "degraded" ? "warn" : "bad"}`;
    badge.title = health.reason || "";
  }
  const sv = supervised[id];
  const axisState = $(el, ".axis-state");
  axisState.textContent = sv ? sv.state : "";
  axisState.hidden = !sv;
  const move = sv?.move != null
    ? (live.state.axes?.moves ?? []).find((m) => m.id === sv.move) : null;
  const bar = $(el, ".move-progress");
  bar.hidden = !move;
  if (move) {
    $(bar, "progress").value = move.progress ?? 0;
    $(bar, ".remaining").textContent = typeof move.remaining_s === "number"
      ? `${move.remaining_s.toFixed(1)} s left` : move.state;
  }
  $(el, ".abort").textContent = sv?.last_abort ? `Last abort: ${sv.last_abort}` : "";
}

const render = scheduler(() => {
  const devices = live.state.devices ?? {};
  for (const d of Object.values(devices)) {
    if (!axes.has(d.id) && isAxis(d)) axes.set(d.id, card(d));
  }
  for (const a of axes.values()) {
    if (a.device.id in supervised) a.el.setAttribute("data-supervised", "");
    renderCard(a);
  }
  const empty = axes.size === 0 && live.state.devices !== undefined;
  byId("axes-empty").hidden = !empty;
});

export const page = {
  id: "machinery",
  init() {
    live.on("devices", () => render());
    live.on("telemetry", () => { if (isShown(section)) render(); });
    live.on("axes", (s) => {
      supervised = s?.axes ?? {};
      render();
    });
  },
  show() { render(); },
  reset() {
    axes.clear();
    supervised = {};
    byId("axes").replaceChildren();
  },
};
