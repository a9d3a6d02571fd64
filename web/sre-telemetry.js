// The SRE page's telemetry panels: the restart history (filterable, paged), the
// mailboxes per actor family, and the look-up of one order's actor. Self-contained:
// sre.js starts and stops it with the session and hands it its authorised `get`.

import { byId, formatDateTime, h } from "/static/common.js";

const POLL_MS = 2000;
const PAGE = 25;

const panel = {
  get: null,
  onError: null,
  timer: null,
  /** `before` of the page shown; null for the newest. */
  before: null,
  /** `before` of the pages above this one, to go back. */
  newer: [],
};

/** Starts the panels; `get(path)` answers `{ data }` or throws, `onError(err)` is true when the session ended. */
export function startTelemetry(get, onError) {
  panel.get = get;
  panel.onError = onError;
  setUp();
  refresh();
  panel.timer = setInterval(refresh, POLL_MS);
}

export function stopTelemetry() {
  clearInterval(panel.timer);
  panel.timer = null;
}

let wired = false;
function setUp() {
  if (wired) return;
  wired = true;
  byId("events-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    panel.before = null;
    panel.newer = [];
    loadEvents();
  });
  byId("events-older").addEventListener("click", () => {
    const next = byId("events-older").dataset.before;
    if (!next) return;
    panel.newer.push(panel.before);
    panel.before = Number(next);
    loadEvents();
  });
  byId("events-newer").addEventListener("click", () => {
    panel.before = panel.newer.length ? panel.newer.pop() : null;
    loadEvents();
  });
  byId("order-lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUpOrder();
  });
}

async function refresh() {
  if (document.hidden) return;
  // Only the first page follows new events; an older page stays put while read.
  if (panel.before === null) loadEvents();
  loadMailboxes();
}

async function fetchInto(path, errorId, what, render) {
  const error = byId(errorId);
  try {
    const { data } = await panel.get(path);
    error.textContent = "";
    render(data);
  } catch (err) {
    if (panel.onError(err)) return;
    error.textContent = `Cannot read ${what}: ${err.message}`;
  }
}

// ---------------------------------------------------------------------------
// Restart history

function eventsPath() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const actor = byId("events-actor").value.trim();
  const kind = byId("events-kind").value;
  if (actor) params.set("actor", actor);
  if (kind) params.set("kind", kind);
  if (panel.before !== null) params.set("before", String(panel.before));
  return `/api/telemetry/events?${params}`;
}

function loadEvents() {
  return fetchInto(eventsPath(), "events-error", "the restart history", renderEvents);
}

function renderEvents(page) {
  const events = Array.isArray(page.events) ? page.events : [];
  byId("events-rows").replaceChildren(
    ...events.map((e) =>
      h(
        "tr",
        { dataset: { event: String(e.event) } },
        h("td", { text: formatDateTime(e.at) }),
        h("td", { text: e.actor }),
        h("td", {}, h("span", { class: "pill", dataset: { status: String(e.event) }, text: e.event })),
        h("td", { class: "event-detail", text: e.detail || "" }),
        h("td", { text: e.node }),
      ),
    ),
  );
  byId("events-table").hidden = events.length === 0;
  byId("events-empty").hidden = events.length !== 0;
  const older = byId("events-older");
  older.dataset.before = page.nextBefore ? String(page.nextBefore) : "";
  older.disabled = !page.nextBefore;
  byId("events-newer").disabled = panel.before === null;
}

// ---------------------------------------------------------------------------
// Mailboxes

function ms(value) {
  return typeof value === "number" ? `${value < 10 ? value.toFixed(2) : value.toFixed(0)} ms` : "–";
}

function loadMailboxes() {
  return fetchInto("/api/telemetry/mailboxes", "mailboxes-error", "the mailboxes", renderMailboxes);
}

function renderMailboxes(data) {
  const families = Array.isArray(data.families) ? data.families : [];
  const row = (name, m, cls) =>
    h(
      "tr",
      { class: cls, dataset: { mailbox: name } },
      h("th", { scope: "row", text: name }),
      h("td", { class: "num", text: String(m.depth) }),
      h("td", { class: "num", text: Number(m.perSecond || 0).toFixed(1) }),
      h("td", { class: "num", text: ms(m.waitP50Ms) }),
      h("td", { class: "num", text: ms(m.waitP99Ms) }),
    );
  byId("mailbox-rows").replaceChildren(
    ...families.flatMap((f) => [row(f.family, f, "family-row"), ...(f.actors || []).filter(() => f.actors.length > 1).map((a) => row(a.actor, a, "member-row"))]),
  );
  byId("mailboxes-summary").textContent = data.timing ? `Last ${data.windowSecs} s` : `Last ${data.windowSecs} s · timing off`;
}

// ---------------------------------------------------------------------------
// One order's actor

async function lookUpOrder() {
  const id = byId("order-lookup-id").value.trim();
  const out = byId("order-actor");
  if (!id) return;
  await fetchInto(`/api/telemetry/orders/${encodeURIComponent(id)}`, "order-lookup-error", `order ${id}`, (a) => {
    const item = (term, value) => h("div", {}, h("dt", { text: term }), h("dd", { text: value }));
    const step = a.inFlight ? `${a.inFlight.operation} (attempt ${a.inFlight.attempt})` : "none";
    const timer = a.nextTimer ? `${a.nextTimer.kind} at ${formatDateTime(a.nextTimer.dueAt)}` : "none";
    out.replaceChildren(
      item("Order", a.orderId),
      item("Status", a.status || "–"),
      item("Shard", `${a.shard} of ${a.shards}`),
      item("Node", a.node),
      item("Actor", a.live ? "live" : "not live"),
      item("Phase", a.phase || "–"),
      item("In-flight step", step),
      item("Next timer", timer),
    );
    out.hidden = false;
  });
}
