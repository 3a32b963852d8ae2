// Flytower operator console: live state over /ws, commands over the REST API.
const axes = new Map();           // device id -> {el, device, values}
const $ = (root, sel) => root.querySelector(sel);

function fmt(v, digits = 0) {
  return typeof v === "number" ? v.toFixed(digits) : "—";
}

function card(device) {
  const el = document.getElementById("axis-card").content.firstElementChild.cloneNode(true);
  el.dataset.device = device.id;
  $(el, ".name").textContent = device.name || device.id;
  $(el, ".id").textContent = device.id;
  const form = $(el, "form.move");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const args = { position: Number(form.position.value) };
    if (form.speed.value) args.speed = Number(form.speed.value);
    await command(device.id, "move_to", args, el);
  });
  $(el, "button.stop").addEventListener("click", () => command(device.id, "stop", {}, el));
  document.getElementById("axes").append(el);
  return { el, device, values: {} };
}

async function command(id, name, args, el) {
  const reason = $(el, ".reason");
  reason.textContent = "";
  try {
    const res = await fetch(`/api/v1/devices/${encodeURIComponent(id)}/commands/${name}`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(args),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      reason.textContent = `Refused: ${detail || res.statusText}`;
    }
  } catch (err) {
    reason.textContent = `Not sent: ${err}`;
  }
}

function limits(a) {
  const spec = a.device.commands?.move_to?.args?.position;
  return { min: a.points?.position?.min ?? spec?.min ?? 0, max: a.points?.position?.max ?? spec?.max ?? 1 };
}

function render(a) {
  const v = a.values, el = a.el;
  $(el, ".position").textContent = fmt(v.position, 1);
  $(el, ".velocity").textContent = fmt(v.velocity, 0);
  $(el, ".load").textContent = fmt(v.load, 1);
  $(el, ".target-value").textContent = fmt(v.target_position, 0);
  const { min, max } = limits(a);
  const frac = (x) => `${Math.max(0, Math.min(1, (x - min) / (max - min))) * 100}%`;
  if (typeof v.position === "number") $(el, ".carriage").style.bottom = frac(v.position);
  const target = $(el, ".travel .target");
  if (typeof v.target_position === "number") {
    target.style.display = "block";
    target.style.bottom = frac(v.target_position);
  }
  const drive = v.fault ? `fault ${v.fault_code ?? ""}` : v.moving ? "moving"
    : v.enabled ? "enabled" : v.ready ? "ready" : "—";
  $(el, ".drive").textContent = drive;
}

function setHealth(id, h) {
  const a = axes.get(id);
  if (!a) return;
  const badge = $(a.el, ".state");
  badge.textContent = h.state;
  badge.className = `state badge ${h.state === "online" ? "ok" : h.state === "degraded" ? "warn" : "bad"}`;
  badge.title = h.reason || "";
}

async function loadPoints(a) {
  const res = await fetch(`/api/v1/devices/${encodeURIComponent(a.device.id)}/points`);
  if (!res.ok) return;
  a.points = Object.fromEntries((await res.json()).map((p) => [p.name, p]));
  render(a);
}

function connect() {
  const link = document.getElementById("link");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { link.textContent = "live"; link.className = "badge ok"; };
  ws.onclose = () => {
    link.textContent = "offline"; link.className = "badge bad";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "snapshot") {
      for (const d of msg.devices) {
        if (!axes.has(d.id)) {
          const a = card(d);
          axes.set(d.id, a);
          loadPoints(a);
        }
        setHealth(d.id, d.health);
      }
    }
    if (msg.type === "health") {
      for (const [id, h] of Object.entries(msg.health)) setHealth(id, h);
    }
    if (msg.readings) {
      const touched = new Set();
      for (const r of msg.readings) {
        const a = axes.get(r.d);
        if (!a) continue;
        a.values[r.p] = r.q === "bad" ? undefined : r.v;
        touched.add(a);
      }
      touched.forEach(render);
    }
  };
}

// Hold-to-run (docs/machinery.md): machinery moves only while the enable is renewed; it is
// renewed every 200 ms while the button is held, and released when it is let go, the pointer
// is lost, or the window loses focus.
const holder = `console ${Math.random().toString(36).slice(2, 8)}`;
const holdButton = document.getElementById("hold");
let holding = null;

function renew() {
  return fetch("/api/v1/machinery/enable", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ holder }),
  }).catch(() => undefined);
}

function hold(on) {
  if (on && holding === null) {
    holding = setInterval(renew, 200);
    renew().then(() => { if (holding !== null) holdButton.classList.add("held"); });
  } else if (!on && holding !== null) {
    clearInterval(holding);
    holding = null;
    holdButton.classList.remove("held");
    fetch(`/api/v1/machinery/enable?holder=${encodeURIComponent(holder)}`, { method: "DELETE" })
      .catch(() => undefined);
  }
}

holdButton.addEventListener("pointerdown", (ev) => {
  try { holdButton.setPointerCapture(ev.pointerId); } catch { /* a synthetic pointer */ }
  hold(true);
});
for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
  holdButton.addEventListener(name, () => hold(false));
}
window.addEventListener("blur", () => hold(false));
document.getElementById("estop").addEventListener("click", () => {
  fetch("/api/v1/machinery/estop", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ reason: "console E-stop" }),
  });
});

fetch("/api/v1/health").then((r) => r.json()).then((h) => {
  document.getElementById("venue").textContent = `${h.venue} · node ${h.node}`;
});
connect();
