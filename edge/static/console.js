// Flytower operator console: the shell (sign-in, header, navigation, hold-to-run, E-stop) around
// the pages in static/pages/*.js; live state over /ws topics (static/core.js), commands over REST.
//
// Access control (edge/api_auth.py): on load the console asks /api/v1/auth/me who it is. A 401
// shows the sign-in form instead of the pages. The session is an HttpOnly cookie that the
// browser sends with every same-origin fetch and with the WebSocket, so this script never holds
// its secret. Any later 401 (the session expired or was revoked) or the WebSocket closed by
// policy (1008) ends the session here and brings the form back. Controls the role may not use
// are disabled from the permissions /me lists: an element's `data-needs` names the permissions
// any one of which enables it. That is a courtesy; the server checks every request itself.
// Without access control /me answers `via: "open"` and there is no sign-in at all.
import {
  api, applyPermissions, byId, command, connect, disconnect, live, notice, reasonOf, session,
} from "./core.js";
import { page as show } from "./pages/show.js";
import { page as machinery } from "./pages/machinery.js";
import { page as lighting } from "./pages/lighting.js";
import { page as acoustics } from "./pages/acoustics.js";
import { page as equipment } from "./pages/equipment.js";

const LOGIN = "/api/v1/auth/login";
const ME = "/api/v1/auth/me";
const CHECK_EVERY_MS = 30_000;   // notice an expired session on an idle console too
const PAGES = [show, machinery, lighting, acoustics, equipment];
const DEFAULT_PAGE = "machinery";
let checkTimer = null;
let current = null;

// --- pages ------------------------------------------------------------------------------------

function pageOf(name) {
  return PAGES.find((p) => p.id === name) ?? null;
}

/** Show the page the address names (#show, …), else the last one used, else machinery. */
function route() {
  const wanted = location.hash.slice(1);
  let remembered = null;
  try { remembered = localStorage.getItem("flytower.page"); } catch { /* private mode */ }
  const next = pageOf(wanted) ?? pageOf(remembered) ?? pageOf(DEFAULT_PAGE);
  for (const p of PAGES) byId(`page-${p.id}`).hidden = p !== next;
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    if (a.dataset.page === next.id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current !== next) current?.hide?.();
  current = next;
  try { localStorage.setItem("flytower.page", next.id); } catch { /* private mode */ }
  if (session.me !== null) next.show?.();
}

window.addEventListener("hashchange", route);

function linkShown(up) {
  const link = byId("link");
  link.textContent = up ? "live" : "offline";
  link.className = `badge ${up ? "ok" : "bad"} signed-in-only`;
}

// --- hold-to-run and E-stop -----------------------------------------------------------------

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
    if (session.me === null) return Promise.resolve();  // signed out: the enable lapses
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
byId("estop-reset").addEventListener("click", async () => {
  notice(await command("/api/v1/machinery/estop/reset", {}));
});

live.on("axes", (s) => {
  const latched = Boolean(s?.estop?.latched);
  byId("estop-banner").hidden = !latched;
  byId("estop-reason").textContent = latched ? s.estop.reason ?? "" : "";
  document.body.classList.toggle("estop-latched", latched);
});

// --- who is signed in -----------------------------------------------------------------------

function showUser() {
  document.body.dataset.via = session.me.via;
  byId("user-name").textContent = session.me.name;
  byId("user-role").textContent = session.me.role;
  applyPermissions(document);
}

/** Ask /me again: false after a 401 (signed out), true otherwise (also when unreachable). */
async function checkSession() {
  if (session.me === null) return false;
  try {
    const res = await api(ME);
    if (!res.ok) return session.me !== null;
    const who = await res.json();
    if (session.me === null) return false;
    if (who.role !== session.me.role
        || who.permissions.join() !== session.me.permissions.join()) {
      session.me = who;
      showUser();
    }
  } catch {
    /* unreachable: the WebSocket shows offline and keeps trying */
  }
  return session.me !== null;
}

function start(who) {
  session.me = who;
  document.body.dataset.auth = "signed-in";
  byId("signin-error").textContent = "";
  notice("");
  showUser();
  api("/api/v1/health").then((r) => (r.ok ? r.json() : null)).then((hl) => {
    if (hl) byId("venue").textContent = `${hl.venue} · node ${hl.node}`;
  }).catch(() => undefined);
  connect(linkShown);
  checkTimer = setInterval(checkSession, CHECK_EVERY_MS);
  route();
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
  if (session.me === null) return;
  hold(false);
  session.me = null;
  clearInterval(checkTimer);
  disconnect();
  linkShown(false);
  for (const p of PAGES) p.reset?.();
  byId("venue").textContent = "";
  showSignIn(message);
}

session.signedOut = signedOut;
session.check = checkSession;

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

for (const p of PAGES) p.init();
begin();
