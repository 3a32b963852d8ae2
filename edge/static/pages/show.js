// Show: the cue lists (REST GET /api/v1/show) with the current and standby cues and what runs
// (the `playback` topic, docs/playback.md); GO (also the space bar), back, stop, pause/resume,
// panic. The GO debounce is visible: after an accepted GO the button counts the list's
// go_debounce_s down; a GO inside it is sent anyway and the service's refusal is shown.
import {
  $, $$, applyPermissions, byId, command, duration, getJson, h, isShown, live, may, scheduler,
  timeOf,
} from "../core.js";

const section = byId("page-show");
const DEFAULT_DEBOUNCE_S = 0.3;  // controller/show/model.py: CueList.go_debounce_s

let show = null;        // GET /api/v1/show (the cues), or null
let showKey = "";       // what it was loaded for: a new show loads again
let selected = null;    // the list the buttons drive
let debounceTimer = null;

function snapshot() {
  return live.state.playback ?? {};
}

function listOf(id) {
  return (snapshot().lists ?? []).find((l) => l.id === id) ?? null;
}

function showList(id) {
  return show?.lists?.find((l) => l.id === id) ?? null;
}

function debounceOf(id) {
  return showList(id)?.go_debounce_s ?? DEFAULT_DEBOUNCE_S;
}

function reason(text) {
  byId("show-reason").textContent = text;
}

async function send(name, body = {}) {
  reason("");
  const why = await command(`/api/v1/playback/${name}`, body);
  reason(why);
  return why === "";
}

async function go() {
  const goButton = byId("show-go");
  if (goButton.disabled || !selected) return;
  goButton.classList.add("pressed");
  setTimeout(() => goButton.classList.remove("pressed"), 150);
  await send("go", { list: selected });
}

async function loadShow(snap) {
  const key = JSON.stringify([snap.show, (snap.lists ?? []).map((l) => l.id)]);
  if (key === showKey) return;
  showKey = key;
  show = snap.show ? await getJson("/api/v1/show", (why) => reason(`Cue list: ${why}`)) : null;
  buildLists();
  render();
}

/** The list tabs and every list's cue table (rebuilt when the show changes). */
function buildLists() {
  const snap = snapshot();
  const lists = snap.lists ?? [];
  if (!lists.some((l) => l.id === selected)) selected = snap.default_list ?? lists[0]?.id ?? null;
  byId("show-title").textContent = snap.show?.title ?? "No show loaded";
  const tabs = byId("show-lists");
  tabs.replaceChildren(...lists.map((l) => h("button.tab", {
    type: "button",
    dataset: { list: l.id },
    onclick: () => { selected = l.id; render(); },
  }, l.name || l.id)));
  tabs.hidden = lists.length < 2;
  const body = byId("cue-rows");
  body.replaceChildren();
  for (const l of show?.lists ?? []) {
    for (const cue of l.cues ?? []) {
      const kinds = [...(cue.actions ?? []), ...(cue.parts ?? []).flatMap((p) => p.actions ?? [])]
        .map((a) => a.kind);
      const flags = [cue.follow ? "follow" : "", cue.auto_continue_s ? `auto ${cue.auto_continue_s} s` : ""]
        .filter(Boolean).join(", ");
      const row = h("tr.cue", { dataset: { list: l.id, cue: String(cue.number) } },
        h("td.number", {}, String(cue.number)),
        h("td.label", {}, h("div", {}, cue.label ?? ""), cue.notes ? h("small", {}, cue.notes) : null),
        h("td.kinds", {}, [...new Set(kinds)].join(", ")),
        h("td.flags", {}, flags));
      row.addEventListener("click", () => {
        if (!may("run")) return;
        send("standby", { list: l.id, cue: String(cue.number) });
      });
      body.append(row);
    }
  }
}

function cueText(c) {
  return c ? `${c.number}${c.label ? ` · ${c.label}` : ""}` : "—";
}

function progress(value, label, cls = "") {
  return h(`div.bar${cls ? `.${cls}` : ""}`, {},
    h("progress", { max: "1", value: String(Math.max(0, Math.min(1, value ?? 0))) }),
    h("span", {}, label));
}

function renderRunning(list) {
  const box = byId("show-running");
  const running = list?.running ?? [];
  box.replaceChildren(...running.map((r) => h("article.running-cue", { dataset: { cue: r.number } },
    h("h3", {}, `${r.number}${r.label ? ` · ${r.label}` : ""}`,
      h("span.badge", {}, r.state)),
    progress(r.progress, typeof r.remaining_s === "number"
      ? `${duration(r.remaining_s)} left` : `${duration(r.elapsed_s)} elapsed`),
    h("ul.actions", {}, (r.actions ?? []).map((a) => h(`li.action.${a.state}`, {},
      h("span.kind", {}, `${a.part ? `part ${a.part}: ` : ""}${a.kind}`),
      h("span.badge", {}, a.state),
      progress(a.progress, typeof a.remaining_s === "number" ? duration(a.remaining_s)
        : a.state === "pending" ? "in its delay" : ""),
      a.reason ? h("p.why", {}, a.reason) : null))))));
  byId("show-idle").hidden = running.length > 0;
}

function renderDebounce(list) {
  const goButton = byId("show-go");
  const meter = byId("go-debounce");
  clearTimeout(debounceTimer);
  const window = debounceOf(selected);
  const since = typeof list?.last_go === "number" ? Date.now() / 1000 - list.last_go : Infinity;
  const left = Math.max(0, Math.min(window, window - since));
  if (left > 0) {
    goButton.dataset.state = "debounce";
    meter.value = left / window;
    byId("go-state").textContent = `wait ${left.toFixed(1)} s`;
    debounceTimer = setTimeout(() => renderDebounce(listOf(selected)), 100);
  } else {
    goButton.dataset.state = list?.standby ? "ready" : "end";
    meter.value = 0;
    byId("go-state").textContent = list?.standby ? `next: ${list.standby.number}` : "end of list";
  }
}

const render = scheduler(() => {
  const snap = snapshot();
  const list = listOf(selected);
  for (const tab of $$(byId("show-lists"), ".tab")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.list === selected));
  }
  byId("show-current").textContent = cueText(list?.current);
  byId("show-standby").textContent = cueText(list?.standby);
  byId("show-panic").hidden = !snap.panic;
  byId("show-paused").hidden = !list?.paused;
  byId("show-pause").textContent = list?.paused ? "Resume" : "Pause";
  byId("show-pause").dataset.needs = list?.paused ? "run" : "stop";
  applyPermissions(byId("show-controls"));
  const running = new Set((list?.running ?? []).map((r) => r.number));
  for (const row of $$(byId("cue-rows"), "tr.cue")) {
    const mine = row.dataset.list === selected;
    row.hidden = !mine;
    if (!mine) continue;
    const n = row.dataset.cue;
    row.classList.toggle("current", list?.current?.number === n);
    row.classList.toggle("standby", list?.standby?.number === n);
    row.classList.toggle("running", running.has(n));
  }
  const standbyRow = $(byId("cue-rows"), "tr.cue.standby");
  if (standbyRow && standbyRow.dataset.seen !== "1" && isShown(section)) {
    $$(byId("cue-rows"), "tr.cue").forEach((r) => delete r.dataset.seen);
    standbyRow.dataset.seen = "1";
    standbyRow.scrollIntoView({ block: "nearest" });
  }
  renderRunning(list);
  renderDebounce(list);
});

// The latest playback events from the journal (GOs, refusals, failed actions with their reasons):
// what the snapshot no longer holds once a cue has ended. Read at most once a second, after a
// change, while the page is shown.
let logVersion = -1;
let logTimer = null;

function loadLog() {
  const version = snapshot().version ?? -1;
  if (version === logVersion || logTimer !== null || !isShown(section)) return;
  logTimer = setTimeout(async () => {
    logVersion = snapshot().version ?? -1;
    const got = await getJson("/api/v1/journal?limit=300");
    logTimer = null;
    if (!got) return;
    const events = (got.events ?? []).filter((e) => e.cue_list || e.command === "panic").slice(-8);
    byId("show-log").replaceChildren(...events.reverse().map((e) => h(`li.${e.result}`, {},
      h("span.time", {}, timeOf(e.ts)),
      h(`span.badge.${e.result === "ok" ? "ok" : e.result === "refused" ? "warn" : "bad"}`, {},
        e.result),
      h("span", {}, `${e.command}${e.cue_list ? ` ${e.cue_list}` : ""}${e.cue ? `/${e.cue}` : ""}`),
      h("small", {}, `${e.source}${e.reason ? ` · ${e.reason}` : ""}`))));
    loadLog();  // a change while reading
  }, 300);
}

export const page = {
  id: "show",
  init() {
    byId("show-go").addEventListener("click", go);
    byId("show-back").addEventListener("click", () => send("back", { list: selected }));
    byId("show-stop").addEventListener("click", () => send("stop", { list: selected }));
    byId("show-pause").addEventListener("click", () =>
      send(listOf(selected)?.paused ? "resume" : "pause", { list: selected }));
    byId("show-panic-button").addEventListener("click", () => send("panic"));
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== " " || ev.repeat || ev.ctrlKey || ev.altKey || ev.metaKey) return;
      if (!isShown(section)) return;
      if (ev.target.closest?.("input, textarea, select, [contenteditable]")) return;
      ev.preventDefault();  // not a click on the focused button, not a scroll: GO
      go();
    });
    document.addEventListener("keyup", (ev) => {  // a focused button would click on keyup
      if (ev.key === " " && isShown(section)
          && !ev.target.closest?.("input, textarea, select, [contenteditable]")) {
        ev.preventDefault();
      }
    });
    live.on("playback", (snap) => {
      loadShow(snap ?? {});
      render();
      loadLog();
    });
  },
  show() {
    render();
    loadLog();
  },
  reset() {
    show = null;
    showKey = "";
    selected = null;
    byId("cue-rows").replaceChildren();
    byId("show-running").replaceChildren();
    byId("show-log").replaceChildren();
    logVersion = -1;
    reason("");
  },
};
