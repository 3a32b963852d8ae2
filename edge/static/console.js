// Flytower operator console: live state over /ws, commands over the REST API.
//
// Access control (edge/api_auth.py): on load the console asks /api/v1/auth/me who it is. A 401
// shows the sign-in form instead of the pages. The session is an HttpOnly cookie that the
// browser sends with every same-origin fetch and with the WebSocket, so this script never holds
// its secret. Any later 401 (the session expired or was revoked) or the WebSocket closed by
// policy (1008) ends the session here and brings the form back. Controls the role may not use
// are disabled from the permissions /me lists: an element's `data-needs` names the permissions
// any one of which enables it. That is a courtesy; the server checks every request itself.
// Without access control /me answers `via: "open"` and there is no sign-in at all.
const axes = new Map();           // device id -> {el, device, values}
const machineryAxes = new Set();  // axes the safety supervisor runs (their Stop goes through it)
const $ = (root, sel) => root.querySelector(sel);
const byId = (id) => document.getElementById(id);
const LOGIN = "/api/v1/auth/login";
const ME = "/api/v1/auth/me";
const CHECK_EVERY_MS = 30_000;   // notice an expired session on an idle console too

let me = null;          // {name, role, via, permissions} while signed in
let ws = null;          // the live WebSocket, null while none is wanted or it is reconnecting
let checkTimer = null;

function fmt(v, digits = 0) {
  return typeof v === "number" ? v.toFixed(digits) : "—";
}

// --- requests ---------------------------------------------------------------------------

/** The reason in an error answer: `detail` (a string, or pydantic's list), else the status. */
async function reasonOf(res) {
  const body = await res.clone().json().catch(() => ({}));
  const d = body.detail;
  if (Array.isArray(d)) return d.map((x) => x?.msg ?? String(x)).join("; ");
  return typeof d === "string" && d ? d : `${res.status} ${res.statusText}`.trim();
}

/** fetch for the API: JSON in, the session cookie along; a 401 signs this console out, a 403
 * refreshes the permissions (the role may have changed), and the caller shows the reason. */
async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401 && me !== null) signedOut(`Signed out: ${await reasonOf(res)}`);
  if (res.status === 403 && me !== null) checkSession();
  return res;
}

function notice(text) {
  byId("notice").textContent = text;
}

// --- machinery cards ----------------------------------------------------------------------

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
    await command(device.id, "move_to", args, el);
  });
  $(el, "button.stop").addEventListener("click", () => command(device.id, "stop", {}, el));
  if (machineryAxes.has(device.id)) el.setAttribute("data-supervised", "");
  applyPermissions(el);
  byId("axes").append(el);
  return { el, device, values: {} };
}

async function command(id, name, args, el) {
  const reason = $(el, ".reason");
  reason.textContent = "";
  try {
    // Stopping an axis is everyone's right (the stop permission), and the supervisor also
    // ends the move it is running: its route, not the device command (run or maintain).
    const res = name === "stop" && machineryAxes.has(id)
      ? await api("/api/v1/machinery/stop", { method: "POST", body: { axes: [id] } })
      : await api(`/api/v1/devices/${encodeURIComponent(id)}/commands/${name}`, {
        method: "POST", body: args,
      });
    if (!res.ok && res.status !== 401) reason.textContent = `Refused: ${await reasonOf(res)}`;
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
  const res = await api(`/api/v1/devices/${encodeURIComponent(a.device.id)}/points`);
  if (!res.ok) return;
  a.points = Object.fromEntries((await res.json()).map((p) => [p.name, p]));
  render(a);
}

// --- live state ---------------------------------------------------------------------------

function connect() {
  const link = byId("link");
  const sock = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws = sock;
  sock.onopen = () => { link.textContent = "live"; link.className = "badge ok"; };
  sock.onclose = (ev) => {
    if (ws !== sock) return;  // closed on purpose: signed out
    ws = null;
    link.textContent = "offline";
    link.className = "badge bad";
    if (ev.code === 1008) {
      signedOut(`Signed out: ${ev.reason || "the service refused this session"}`);
      return;
    }
    // A handshake refused before it opened reaches a browser as 1006, without its reason:
    // ask who we are (a 401 signs out), and reconnect only if still signed in.
    setTimeout(async () => {
      if (me !== null && ws === null && (await checkSession()) && ws === null) connect();
    }, 1000);
  };
  sock.onmessage = (ev) => {
    if (ws !== sock) return;
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
    if (msg.type === "machinery" && msg.snapshot) {
      for (const id of Object.keys(msg.snapshot.axes ?? {})) {
        machineryAxes.add(id);
        axes.get(id)?.el.setAttribute("data-supervised", "");
      }
    }
    if (msg.ok === false && msg.detail) notice(`Refused: ${msg.detail}`);  // a command's answer
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

// --- hold-to-run and E-stop ---------------------------------------------------------------

// Hold-to-run (docs/machinery.md): machinery moves only while the enable is renewed; it is
// renewed every 200 ms while the button is held, and released when it is let go, the pointer
// is lost, or the window loses focus.
const holder = `console ${Math.random().toString(36).slice(2, 8)}`;
const holdButton = byId("hold");
let holding = null;

async function renew() {
  try {
    const res = await api("/api/v1/machinery/enable", { method: "POST", body: { holder } });
    if (res.ok) return true;
    if (res.status !== 401) notice(`Hold to run refused: ${await reasonOf(res)}`);
    hold(false);
  } catch {
    /* the link is down: the next renewal tries again, the drives stop on their own */
  }
  return false;
}

function hold(on) {
  if (on && holding === null) {
    notice("");
    holding = setInterval(renew, 200);
    renew().then((ok) => { if (ok && holding !== null) holdButton.classList.add("held"); });
  } else if (!on && holding !== null) {
    clearInterval(holding);
    holding = null;
    holdButton.classList.remove("held");
    if (me === null) return Promise.resolve();  // signed out: the enable lapses by itself
    return api(`/api/v1/machinery/enable?holder=${encodeURIComponent(holder)}`, { method: "DELETE" })
      .catch(() => undefined);
  }
  return Promise.resolve();
}

holdButton.addEventListener("pointerdown", (ev) => {
  if (holdButton.disabled) return;
  try { holdButton.setPointerCapture(ev.pointerId); } catch { /* a synthetic pointer */ }
  hold(true);
});
for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
  holdButton.addEventListener(name, () => hold(false));
}
window.addEventListener("blur", () => hold(false));
byId("estop").addEventListener("click", async () => {
  notice("");
  try {
    const res = await api("/api/v1/machinery/estop", {
      method: "POST", body: { reason: "console E-stop" },
    });
    if (!res.ok && res.status !== 401) notice(`E-stop refused: ${await reasonOf(res)}`);
  } catch (err) {
    notice(`E-stop NOT sent: ${err}`);
  }
});

// --- who is signed in -----------------------------------------------------------------------

/** Enable what the role may use, disable the rest (``data-needs``: any one permission). */
function applyPermissions(root) {
  const granted = new Set(me?.permissions ?? []);
  for (const el of root.querySelectorAll("[data-needs]")) {
    if (el.dataset.title === undefined) el.dataset.title = el.title;
    const ok = el.dataset.needs.split(/\s+/).some((p) => granted.has(p));
    el.disabled = !ok;
    const wanted = el.dataset.needs.split(/\s+/).join(" or ");
    el.title = ok ? el.dataset.title : `${me?.role ?? "signed out"}: needs the ${wanted} permission`;
  }
}

function showUser() {
  document.body.dataset.via = me.via;
  byId("user-name").textContent = me.name;
  byId("user-role").textContent = me.role;
  applyPermissions(document);
}

/** Ask /me again: false after a 401 (signed out), true otherwise (also when unreachable). */
async function checkSession() {
  if (me === null) return false;
  try {
    const res = await api(ME);
    if (!res.ok) return me !== null;
    const who = await res.json();
    if (me === null) return false;
    if (who.role !== me.role || who.permissions.join() !== me.permissions.join()) {
      me = who;
      showUser();
    }
  } catch {
    /* unreachable: the WebSocket shows offline and keeps trying */
  }
  return me !== null;
}

function start(who) {
  me = who;
  document.body.dataset.auth = "signed-in";
  byId("signin-error").textContent = "";
  notice("");
  showUser();
  api("/api/v1/health").then((r) => (r.ok ? r.json() : null)).then((h) => {
    if (h) byId("venue").textContent = `${h.venue} · node ${h.node}`;
  }).catch(() => undefined);
  connect();
  checkTimer = setInterval(checkSession, CHECK_EVERY_MS);
}

function showSignIn(message = "") {
  document.body.dataset.auth = "signed-out";
  byId("signin-error").textContent = message;
  const name = byId("signin-name"), password = byId("signin-password");
  password.value = "";
  (name.value ? password : name).focus();
}

/** End this console's session: stop the live feed, forget the state, show the form. */
function signedOut(message) {
  if (me === null) return;
  hold(false);
  me = null;
  clearInterval(checkTimer);
  const sock = ws;
  ws = null;
  sock?.close(1000);
  axes.clear();
  machineryAxes.clear();
  byId("axes").replaceChildren();
  byId("venue").textContent = "";
  showSignIn(message);
}

/** Who are we? Signed in (or no access control): start; else the sign-in form. */
async function begin(message = "") {
  let res;
  try {
    res = await fetch(ME, { credentials: "same-origin" });
  } catch (err) {
    showSignIn(`The service cannot be reached (${err.message}): trying again`);
    setTimeout(() => begin(message), 2000);
    return;
  }
  if (res.ok) start(await res.json());
  else showSignIn(res.status === 401 ? message : await reasonOf(res));
}

const form = byId("signin");
const signInButton = byId("signin-button");
let lockedUntil = 0;

function lockout(seconds) {
  lockedUntil = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((lockedUntil - Date.now()) / 1000);
    if (left <= 0) {
      signInButton.disabled = false;
      byId("signin-error").textContent = "";
      return;
    }
    signInButton.disabled = true;
    byId("signin-error").textContent = `Too many failed sign-ins: wait ${left} s`;
    setTimeout(tick, 250);
  };
  tick();
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = byId("signin-error");
  const name = byId("signin-name").value.trim();
  const password = byId("signin-password").value;
  if (!name || !password) {
    error.textContent = name ? "Enter your password." : "Enter your name.";
    (name ? byId("signin-password") : byId("signin-name")).focus();
    return;
  }
  if (Date.now() < lockedUntil) return;
  error.textContent = "";
  signInButton.disabled = true;
  signInButton.textContent = "Signing in…";
  try {
    const res = await fetch(LOGIN, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name, password }),
    });
    if (res.ok) {
      byId("signin-password").value = "";
      await res.body?.cancel();  // the session's secret is in the cookie; not kept here
      await begin("Signed in, but this browser did not keep the session cookie");
    } else if (res.status === 429) {
      lockout(Number(res.headers.get("retry-after")) || 1);
    } else {
      error.textContent = await reasonOf(res);
      byId("signin-password").select();
    }
  } catch (err) {
    error.textContent = `The service cannot be reached: ${err.message}`;
  } finally {
    signInButton.textContent = "Sign in";
    if (Date.now() >= lockedUntil) signInButton.disabled = false;
  }
});

byId("signout").addEventListener("click", async () => {
  await hold(false);
  try {
    await fetch("/api/v1/auth/logout", { method: "POST", credentials: "same-origin" });
  } catch { /* the cookie stays, but this console forgets the session either way */ }
  signedOut("Signed out.");
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") checkSession();  // a tablet waking up
});

begin();
