// Equipment and telemetry: the device list with health (the `devices` topic), a chart of one
// point over time (REST history, then live from the `telemetry` topic), the alarms with
// acknowledge (the `alarms` topic, edge/api_alarms.py), the maintenance due list and the work
// orders (REST, edge/api_maintenance.py; polled while the page is shown).
import {
  $$, applyPermissions, byId, command, fmt, getJson, h, isShown, live, scheduler, timeOf,
} from "../core.js";
import { drawChart } from "../chart.js";

const section = byId("page-equipment");
const WINDOW_S = 300;  // the chart shows the last five minutes
const MAINTENANCE_EVERY_MS = 10_000;
const SEVERITY = { critical: "bad", major: "bad", minor: "warn", warning: "warn", info: "" };

let chosen = null;   // {device, point}
let samples = [];    // [[epoch s, value]]
let lastTs = 0;
let maintenanceTimer = null;
let pointsOf = {};   // device -> [point names] (numeric ones)

function healthClass(state) {
  return state === "online" ? "ok" : state === "degraded" ? "warn" : state === "unknown" ? "" : "bad";
}

const renderDevices = scheduler(() => {
  const devices = Object.values(live.state.devices ?? {});
  const alarms = live.state.alarms?.alarms ?? [];
  const body = byId("device-rows");
  body.replaceChildren(...devices.map((d) => {
    const n = alarms.filter((a) => a.device === d.id && a.state !== "shelved").length;
    return h("tr", { dataset: { device: d.id }, class: chosen?.device === d.id ? "chosen" : "" },
      h("td", {}, h("div", {}, d.name || d.id), h("small", {}, `${d.id} · ${d.device_class}`)),
      h("td", {}, h(`span.badge.health.${healthClass(d.health?.state)}`,
        { title: d.health?.reason ?? "" }, d.health?.state ?? "—")),
      h("td.reason", {}, d.health?.reason ?? ""),
      h("td", {}, n ? h("span.badge.warn", {}, `${n} alarm${n > 1 ? "s" : ""}`) : ""),
      h("td", {}, h("button.secondary", {
        type: "button", onclick: () => choose(d.id, null),
      }, "Chart")));
  }));
  for (const select of [byId("chart-device"), byId("work-order-form").elements.namedItem("device")]) {
    const have = $$(select, "option").map((o) => o.value).join();
    if (have !== devices.map((d) => d.id).join()) {
      const was = select.value;
      select.replaceChildren(...devices.map((d) => h("option", { value: d.id }, d.id)));
      if (was) select.value = was;
    }
  }
  if (chosen) byId("chart-device").value = chosen.device;
});

async function choose(device, point) {
  if (!pointsOf[device]) {
    const pts = await getJson(`/api/v1/devices/${encodeURIComponent(device)}/points`) ?? [];
    pointsOf[device] = pts.filter((p) => ["float", "int"].includes(p.dtype) && p.access !== "w")
      .map((p) => p.name);
  }
  const names = pointsOf[device];
  const p = point && names.includes(point) ? point
    : names.includes("position") ? "position" : names[0] ?? null;
  chosen = p ? { device, point: p } : null;
  byId("chart-device").value = device;
  byId("chart-point").replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  if (p) byId("chart-point").value = p;
  samples = [];
  lastTs = 0;
  renderDevices();
  if (!chosen) {
    byId("chart-title").textContent = `${device}: no numeric points to chart`;
    drawChart(byId("chart"), []);
    return;
  }
  byId("chart-title").textContent = `${device} · ${p}`;
  const start = Date.now() / 1000 - WINDOW_S;
  const hist = await getJson(
    `/api/v1/devices/${encodeURIComponent(device)}/points/${encodeURIComponent(p)}/history`
    + `?start=${start.toFixed(3)}&limit=5000`,
    (why) => { byId("chart-title").textContent = `${device} · ${p}: ${why}`; });
  if (hist && chosen?.device === device && chosen.point === p) {
    const old = hist.ts.map((t, i) => [t, hist.quality[i] === "bad" ? NaN : hist.values[i]]);
    samples = [...old, ...samples].sort((a, b) => a[0] - b[0]);
    lastTs = samples.length ? samples[samples.length - 1][0] : 0;
  }
  renderChart();
}

const renderChart = scheduler(() => {
  if (!isShown(section)) return;
  const now = Date.now() / 1000;
  samples = samples.filter(([t]) => t >= now - WINDOW_S);
  const latest = samples.length ? samples[samples.length - 1][1] : undefined;
  byId("chart-value").textContent = fmt(latest, 2);
  drawChart(byId("chart"), [{ points: samples.map(([t, v]) => [t - now, v]) }], {
    xMin: -WINDOW_S, xMax: 0, xLabel: (x) => (x === 0 ? "now" : `${Math.round(x)} s`),
    empty: chosen ? "no readings in the last five minutes" : "choose a device",
  });
});

function onTelemetry(state) {
  if (!chosen) return;
  const r = state?.[`${chosen.device}/${chosen.point}`];
  if (r && typeof r.ts === "number" && r.ts > lastTs) {
    lastTs = r.ts;
    samples.push([r.ts, r.q === "bad" || typeof r.v !== "number" ? NaN : r.v]);
    renderChart();
  }
}

const renderAlarms = scheduler(() => {
  const alarms = live.state.alarms?.alarms ?? [];
  byId("alarm-count").textContent = alarms.length ? String(alarms.length) : "";
  const nav = document.querySelector('nav a[data-page="equipment"] .count');
  const unack = alarms.filter((a) => a.state === "active_unack" || a.state === "cleared_unack");
  if (nav) nav.textContent = unack.length ? String(unack.length) : "";
  byId("alarms-empty").hidden = alarms.length > 0;
  const list = byId("alarm-list");
  list.replaceChildren(...alarms.map((a) => {
    const ackable = a.state === "active_unack" || a.state === "cleared_unack";
    const reason = h("p.reason", { role: "status" });
    const item = h(`li.alarm.${a.state}`, { dataset: { alarm: a.id, state: a.state } },
      h(`span.badge.${SEVERITY[a.severity] ?? ""}`, {}, a.severity),
      h("div.what", {},
        h("strong", {}, a.message || a.rule),
        h("small", {}, `${a.device}${a.point ? ` · ${a.point}` : ""} · ${a.state.replace("_", " ")}`
          + ` · since ${timeOf(a.raised_at)}${a.acked_by ? ` · acknowledged by ${a.acked_by}` : ""}`),
        reason),
      ackable ? h("button.ack", {
        type: "button",
        dataset: { needs: "run maintain" },
        onclick: async (ev) => {
          ev.currentTarget.disabled = true;
          reason.textContent = await command(`/api/v1/alarms/${encodeURIComponent(a.id)}/ack`, {});
        },
      }, "Acknowledge") : null);
    return item;
  }));
  applyPermissions(list);
});

async function loadMaintenance() {
  const due = byId("maintenance-rows");
  const m = await getJson("/api/v1/maintenance", (why) => {
    byId("maintenance-note").textContent = why;
  });
  if (m) {
    byId("maintenance-note").textContent = "";
    const order = { overdue: 0, due: 1, ok: 2 };
    const rows = m.devices.filter((d) => d.intervals.length)
      .sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3));
    due.replaceChildren(...rows.flatMap((d) => d.intervals.map((iv) => h("tr",
      { dataset: { device: d.device, state: iv.state } },
      h("td", {}, d.device),
      h("td", {}, iv.kind.replace("_", " ")),
      h("td", {}, h("progress", { max: "1", value: String(Math.min(1, iv.fraction ?? 0)) }),
        h("small", {}, ` ${fmt(100 * (iv.fraction ?? 0), 0)} % of ${fmt(iv.every, 0)}`)),
      h("td", {}, h(`span.badge.${iv.state === "ok" ? "ok" : iv.state === "due" ? "warn" : "bad"}`,
        {}, iv.state))))));
    if (!due.children.length) due.append(h("tr", {}, h("td", { colspan: "4" }, "No service intervals.")));
  }
  await loadOrders();
}

async function loadOrders() {
  const w = await getJson("/api/v1/maintenance/work-orders?limit=50");
  if (!w) return;
  const orders = w.work_orders ?? [];
  const list = byId("work-orders");
  list.replaceChildren(...(orders.length ? orders.map((o) => {
    const open = o.status === "open" || o.status === "assigned";
    const set = (status) => async () => {
      byId("work-order-reason").textContent = await command(
        `/api/v1/maintenance/work-orders/${o.id}`, { status }, "PATCH");
      loadOrders();
    };
    return h("li.order", { dataset: { order: String(o.id), status: o.status } },
      h(`span.badge.${o.status === "done" ? "ok" : o.status === "cancelled" ? "" : "warn"}`, {},
        o.status),
      h("div.what", {}, h("strong", {}, `#${o.id} ${o.title}`),
        h("small", {}, `${o.device} · ${o.kind} · ${o.priority}`
          + `${o.assignee ? ` · ${o.assignee}` : ""}`
          + `${o.due ? ` · due ${new Date(o.due * 1000).toLocaleDateString()}` : ""}`)),
      open ? h("button.secondary.done", { type: "button", dataset: { needs: "maintain" },
        onclick: set("done") }, "Done") : null,
      open ? h("button.secondary.cancel", { type: "button", dataset: { needs: "maintain" },
        onclick: set("cancelled") }, "Cancel") : null);
  }) : [h("li.empty", {}, "No work orders.")]));
  applyPermissions(list);
}

async function openOrder(ev) {
  ev.preventDefault();
  const fields = ev.currentTarget.elements;
  const title = fields.namedItem("title").value.trim();
  const reason = byId("work-order-reason");
  if (!title) {
    reason.textContent = "Say what needs doing.";
    return;
  }
  reason.textContent = await command("/api/v1/maintenance/work-orders", {
    device: fields.namedItem("device").value, title, priority: fields.namedItem("priority").value,
  });
  if (!reason.textContent) fields.namedItem("title").value = "";
  loadOrders();
}

export const page = {
  id: "equipment",
  init() {
    live.on("devices", () => {
      renderDevices();
      const first = Object.keys(live.state.devices ?? {})[0];
      if (!chosen && first && isShown(section)) choose(first, null);
    });
    live.on("telemetry", onTelemetry);
    live.on("alarms", () => { renderAlarms(); renderDevices(); });
    byId("chart-device").addEventListener("change", (ev) => choose(ev.target.value, null));
    byId("work-order-form").addEventListener("submit", openOrder);
    byId("chart-point").addEventListener("change", (ev) =>
      choose(byId("chart-device").value, ev.target.value));
    window.addEventListener("resize", () => renderChart());
  },
  show() {
    renderDevices();
    renderAlarms();
    const first = Object.keys(live.state.devices ?? {})[0];
    if (!chosen && first) choose(first, null);
    else renderChart();
    loadMaintenance();
    clearInterval(maintenanceTimer);
    maintenanceTimer = setInterval(() => { if (isShown(section)) loadMaintenance(); },
      MAINTENANCE_EVERY_MS);
  },
  hide() {
    clearInterval(maintenanceTimer);
  },
  reset() {
    chosen = null;
    samples = [];
    pointsOf = {};
    clearInterval(maintenanceTimer);
    byId("alarm-list").replaceChildren();
    byId("device-rows").replaceChildren();
  },
};
