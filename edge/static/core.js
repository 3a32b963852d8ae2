// The console's shared core: requests (with the 401/403 handling), the live WebSocket and its
// topics (a snapshot, then RFC 6902 patches: edge/ws_topics.py), the signed-in user's
// permissions, and small DOM helpers. The pages (static/pages/*.js) build on this only.

export const byId = (id) => document.getElementById(id);
export const $ = (root, sel) => root.querySelector(sel);
export const $$ = (root, sel) => [...root.querySelectorAll(sel)];

/** The topics every page together needs; one subscription on one socket. */
export const TOPICS = ["devices", "telemetry", "playback", "axes", "alarms", "lighting", "acoustics"];

export function fmt(v, digits = 0) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "—";
}

/** `h("div.card", {title: "x"}, child, "text")`: an element; `on*` attributes are listeners,
 * `dataset` an object of data attributes. */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** Seconds as "1:05" or "12.3 s". */
export function duration(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "";
  if (s >= 60) return `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
  return `${s.toFixed(1)} s`;
}

export function timeOf(epoch) {
  return typeof epoch === "number" ? new Date(epoch * 1000).toLocaleTimeString() : "—";
}

// --- who is signed in -----------------------------------------------------------------------

export const session = {
  me: null,  // {name, role, via, permissions} while signed in
  signedOut: (_message) => undefined,  // set by console.js
  check: async () => false,  // ask /me again (console.js)
};

export function may(permissions) {
  const granted = new Set(session.me?.permissions ?? []);
  return permissions.split(/\s+/).some((p) => granted.has(p));
}

/** Enable what the role may use, disable the rest (``data-needs``: any one permission). */
export function applyPermissions(root = document) {
  const els = root.matches?.("[data-needs]") ? [root, ...$$(root, "[data-needs]")]
    : $$(root, "[data-needs]");
  for (const el of els) {
    if (el.dataset.title === undefined) el.dataset.title = el.title;
    const ok = may(el.dataset.needs);
    el.disabled = !ok;
    const wanted = el.dataset.needs.split(/\s+/).join(" or ");
    el.title = ok ? el.dataset.title
      : `${session.me?.role ?? "signed out"}: needs the ${wanted} permission`;
  }
}

// --- requests -------------------------------------------------------------------------------

/** The reason in an error answer: `detail` (a string, or pydantic's list), else the status. */
export async function reasonOf(res) {
  const body = await res.clone().json().catch(() => ({}));
  const d = body.detail;
  if (Array.isArray(d)) return d.map((x) => x?.msg ?? String(x)).join("; ");
  return typeof d === "string" && d ? d : `${res.status} ${res.statusText}`.trim();
}

/** fetch for the API: JSON in, the session cookie along; a 401 signs this console out, a 403
 * refreshes the permissions (the role may have changed), and the caller shows the reason. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401 && session.me !== null) {
    session.signedOut(`Signed out: ${await reasonOf(res)}`);
  }
  if (res.status === 403 && session.me !== null) session.check();
  return res;
}

/** A command: the refusal's reason (shown by the caller), or "" when it was done. */
export async function command(path, body, method = "POST") {
  try {
    const res = await api(path, { method, body });
    if (res.ok || res.status === 401) return "";
    return `Refused: ${await reasonOf(res)}`;
  } catch (err) {
    return `Not sent: ${err.message ?? err}`;
  }
}

/** GET as JSON, or null (with the reason in `onError`) when it fails. */
export async function getJson(path, onError = () => undefined) {
  try {
    const res = await api(path);
    if (res.ok) return await res.json();
    onError(await reasonOf(res), res.status);
  } catch (err) {
    onError(String(err.message ?? err), 0);
  }
  return null;
}

export function notice(text) {
  byId("notice").textContent = text;
}

// --- JSON Patch -----------------------------------------------------------------------------

/** The keys of a JSON pointer ("" is the whole document; `~1` is `/`, `~0` is `~`). */
export function pointer(path) {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error(`bad JSON pointer '${path}'`);
  return path.slice(1).split("/").map((k) => k.replaceAll("~1", "/").replaceAll("~0", "~"));
}

/** Apply RFC 6902 `add` / `remove` / `replace` operations to `doc`; the new document (the
 * containers on the way are changed in place). */
export function applyPatch(doc, ops) {
  for (const op of ops) {
    const keys = pointer(op.path);
    if (keys.length === 0) {
      if (op.op === "remove") doc = null;
      else doc = op.value;
      continue;
    }
    let parent = doc;
    for (const k of keys.slice(0, -1)) {
      parent = Array.isArray(parent) ? parent[Number(k)] : parent?.[k];
      if (parent === null || typeof parent !== "object") {
        throw new Error(`patch path '${op.path}' does not exist`);
      }
    }
    const last = keys[keys.length - 1];
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : Number(last);
      if (op.op === "add") parent.splice(i, 0, op.value);
      else if (op.op === "remove") parent.splice(i, 1);
      else if (op.op === "replace") parent[i] = op.value;
      else throw new Error(`unsupported patch op '${op.op}'`);
    } else if (op.op === "add" || op.op === "replace") {
      parent[last] = op.value;
    } else if (op.op === "remove") {
      delete parent[last];
    } else {
      throw new Error(`unsupported patch op '${op.op}'`);
    }
  }
  return doc;
}

// --- the live link ----------------------------------------------------------------------------

const listeners = new Map();  // topic -> Set of fn(state)

export const live = {
  state: {},  // topic -> the server's state, as the snapshot and its patches make it
  seq: {},
  socket: null,

  /** Call `fn(state)` on every change of `topic` (and now, if there is a state already). */
  on(topic, fn) {
    if (!listeners.has(topic)) listeners.set(topic, new Set());
    listeners.get(topic).add(fn);
    if (topic in this.state) fn(this.state[topic]);
  },

  /** Apply one topic message; true when it was one. */
  receive(msg) {
    const topic = msg.type;
    if (typeof msg.seq !== "number" || !TOPICS.includes(topic)) return false;
    if ("snapshot" in msg) {
      this.state[topic] = msg.snapshot;
    } else if (Array.isArray(msg.patch)) {
      if (this.seq[topic] === undefined) return true;  // before its snapshot (resubscribing)
      if (this.seq[topic] !== msg.seq - 1) {  // a lost message: start that topic again
        console.warn(`${topic}: seq ${msg.seq} after ${this.seq[topic]}; resubscribing`);
        this.resubscribe();
        return true;
      }
      try {
        this.state[topic] = applyPatch(this.state[topic], msg.patch);
      } catch (err) {  // our state is not the server's: start again
        console.warn(`${topic}: ${err.message}; resubscribing`);
        this.resubscribe();
        return true;
      }
    }
    this.seq[topic] = msg.seq;
    for (const fn of listeners.get(topic) ?? []) {
      try {
        fn(this.state[topic]);
      } catch (err) {
        console.error(`${topic} listener`, err);
      }
    }
    return true;
  },

  resubscribe() {
    this.state = {};
    this.seq = {};
    this.send({ type: "subscribe", topics: TOPICS });
  },

  send(msg) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  },

  clear() {
    this.state = {};
    this.seq = {};
  },
};

/** Open the WebSocket (and keep it open while signed in); `onLink(up)` shows the link. */
export function connect(onLink) {
  const sock = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  live.socket = sock;
  sock.onopen = () => {
    live.clear();
    sock.send(JSON.stringify({ type: "subscribe", topics: TOPICS }));
    onLink(true);
  };
  sock.onclose = (ev) => {
    if (live.socket !== sock) return;  // closed on purpose: signed out
    live.socket = null;
    onLink(false);
    if (ev.code === 1008) {
      session.signedOut(`Signed out: ${ev.reason || "the service refused this session"}`);
      return;
    }
    // A handshake refused before it opened reaches a browser as 1006, without its reason:
    // ask who we are (a 401 signs out), and reconnect only if still signed in.
    setTimeout(async () => {
      if (session.me !== null && live.socket === null && (await session.check())
          && live.socket === null) {
        connect(onLink);
      }
    }, 1000);
  };
  sock.onmessage = (ev) => {
    if (live.socket !== sock) return;
    const msg = JSON.parse(ev.data);
    if (live.receive(msg)) return;
    if (msg.type === "error" && msg.detail) notice(`Live link: ${msg.detail}`);
  };
}

export function disconnect() {
  const sock = live.socket;
  live.socket = null;
  sock?.close(1000);
  live.clear();
}

// --- pages ------------------------------------------------------------------------------------

/** Coalesce renders to one per animation frame. */
export function scheduler(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

export function isShown(section) {
  return !section.hidden && document.body.dataset.auth === "signed-in";
}
