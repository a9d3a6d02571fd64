// The SRE page: every 2 s it reads the supervisor tree, the external systems' health,
// the Prometheus metrics and the dead letters, and redraws each panel on its own, so
// one failing source does not blank the others.

import { ApiError, ORDER_STATUSES, announce, api, byId, formatDateTime, formatTime, h, keepFresh, logOut, sessionStore, statusLabel, usableSession, whileBusy } from "/static/common.js";
import { History, drawChart, parseMetrics, sum } from "/static/charts.js";
import { startTelemetry, stopTelemetry } from "/static/sre-telemetry.js";

const session = sessionStore("swiftlogistics.sre");
const POLL_MS = 2000;
/** Two minutes of samples. */
const HISTORY = 60;
/** Without a good poll for this long, the page says its data is stale. */
const STALE_MS = 6000;
/** Statuses an order settles in once processing is over; their sum only grows. */
const SETTLED = ["READY_FOR_DELIVERY", "OUT_FOR_DELIVERY", "DELIVERED", "FAILED", "CANCELLED"];
const DEAD_LETTER_LIMIT = 100;

const state = {
  token: null,
  user: null,
  timer: null,
  polling: false,
  lastGood: 0,
  previous: null,
  throughput: new History(["settled"], HISTORY),
  /** The back-office systems, in the journey's order, as /api/services/health lists them. */
  systems: [],
  latency: new History([], HISTORY),
  inflight: new History(["in flight"], HISTORY),
  /** Mean step latency over all systems in the last interval that had calls. */
  latencyOverall: null,
};

// ---------------------------------------------------------------------------
// Session

function showSignedOut(message) {
  stop();
  byId("loading").hidden = true;
  byId("console").hidden = true;
  byId("auth").hidden = false;
  byId("who").hidden = true;
  byId("sign-out").hidden = true;
  byId("freshness").hidden = true;
  byId("login-form").querySelector("[data-form-error]").textContent = message || "";
}

function signOut(message) {
  logOut(session);
  if (state.stopRenewing) state.stopRenewing();
  state.stopRenewing = null;
  state.token = null;
  state.user = null;
  showSignedOut(message);
  byId("login-email").focus();
}

/** 401: the token is gone or expired; 403: it is not an admin's. */
function endSessionOn(err) {
  if (!(err instanceof ApiError)) return false;
  if (err.status === 401) signOut("Your session has ended. Please sign in again.");
  else if (err.status === 403) signOut("This account is not an operator account. Sign in as an admin.");
  else return false;
  return true;
}

function setUpLogin() {
  const form = byId("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector("[data-form-error]");
    error.textContent = "";
    const email = form.elements.email.value.trim();
    const password = form.elements.password.value;
    if (!email || !password) {
      error.textContent = "Enter the admin e-mail address and password.";
      return;
    }
    await whileBusy(form, "Signing in…", async () => {
      try {
        const { data } = await api("/api/auth/login", { method: "POST", body: { email, password } });
        if (!data.user || data.user.role !== "admin") {
          error.textContent = "This account is not an operator account. Sign in as an admin.";
          return;
        }
        form.reset();
        session.set(data);
        start(data.token, data.user);
      } catch (err) {
        error.textContent =
          err.status === 401
            ? "That e-mail address and password do not match an account."
            : err.status === 429
              ? `Too many attempts. Try again in ${err.retryAfter || "a few"} seconds.`
              : err.message;
      }
    });
  });
  byId("sign-out").addEventListener("click", () => signOut(""));
}

// ---------------------------------------------------------------------------
// Polling

function start(token, user) {
  state.token = token;
  state.user = user;
  byId("loading").hidden = true;
  byId("auth").hidden = true;
  byId("console").hidden = false;
  const who = byId("who");
  who.textContent = user && user.email ? user.email : "";
  who.hidden = !who.textContent;
  byId("sign-out").hidden = false;
  byId("freshness").hidden = false;
  if (state.stopRenewing) state.stopRenewing();
  state.stopRenewing = keepFresh(
    session,
    (fresh) => {
      state.token = fresh;
    },
    () => signOut("Your session has ended. Please sign in again."),
  );
  drawCharts();
  poll();
  state.timer = setInterval(poll, POLL_MS);
  startTelemetry(get, endSessionOn);
}

function stop() {
  clearInterval(state.timer);
  state.timer = null;
  stopTelemetry();
}

function get(path, accept = "json") {
  return api(path, { token: state.token, accept, timeoutMs: 5000 });
}

async function poll() {
  if (state.polling || !state.token || document.hidden) return;
  state.polling = true;
  try {
    const [tree, health, metrics, dlq, cluster] = await Promise.allSettled([
      get("/api/telemetry/supervision"),
      get("/api/services/health"),
      get("/metrics", "text"),
      get(`/api/admin/dlq?limit=${DEAD_LETTER_LIMIT}`),
      get("/api/cluster"),
    ]);
    for (const result of [tree, health, metrics, dlq, cluster]) {
      if (result.status === "rejected" && endSessionOn(result.reason)) return;
    }
    show(tree, renderTree, "tree-error", "the supervisor tree");
    show(cluster, renderCluster, "cluster-error", "the cluster view");
    show(health, renderServices, "services-error", "the external systems");
    show(metrics, renderMetrics, "metrics-error", "the metrics");
    renderDeadLetters(dlq);
    if ([tree, health, metrics].some((r) => r.status === "fulfilled")) state.lastGood = Date.now();
  } finally {
    state.polling = false;
    showFreshness();
  }
}

function show(result, render, errorId, what) {
  const error = byId(errorId);
  if (result.status === "fulfilled") {
    error.textContent = "";
    render(result.value.data);
  } else {
    error.textContent = `Cannot read ${what}: ${result.reason.message}`;
  }
}

function showFreshness() {
  const badge = byId("freshness");
  const fresh = state.lastGood && Date.now() - state.lastGood < STALE_MS;
  badge.dataset.state = fresh ? "ok" : state.lastGood ? "stale" : "error";
  byId("freshness-text").textContent = state.lastGood ? (fresh ? "Live" : "Stale") : "Cannot reach the node";
  byId("freshness-detail").textContent = state.lastGood ? ` · updated ${formatTime(state.lastGood)}` : "";
}

// ---------------------------------------------------------------------------
// Supervisor tree

function countActors(node) {
  // A summarised family (one actor per order) counts its members too.
  const family = typeof node.count === "number" ? node.count : 0;
  return 1 + family + (node.children || []).reduce((n, child) => n + countActors(child), 0);
}

function treeNode(node) {
  const restarts = Number(node.restarts) || 0;
  const depth = Number(node.mailboxDepth) || 0;
  return h(
    "li",
    { dataset: { actor: String(node.name) } },
    h(
      "div",
      { class: "tree-node" },
      h("span", { class: "status-dot", dataset: { status: String(node.status) }, "aria-hidden": "true" }),
      h("span", { class: "tree-name", text: node.name }),
      h("span", { class: "tree-kind", text: node.kind }),
      typeof node.count === "number" ? h("span", { class: "tree-count", text: `${node.count} live` }) : null,
      node.status !== "running" ? h("span", { class: "pill", dataset: { status: String(node.status) }, text: node.status }) : h("span", { class: "visually-hidden", text: "running" }),
      h(
        "span",
        { class: "tree-meta" },
        h("span", { class: restarts > 0 ? "hot" : undefined, text: `${restarts} restart${restarts === 1 ? "" : "s"}` }),
        h("span", { class: depth > 100 ? "hot" : undefined, text: `mailbox ${depth}` }),
      ),
    ),
    node.children && node.children.length ? h("ul", {}, node.children.map(treeNode)) : null,
  );
}

function renderTree(root) {
  if (!root || typeof root !== "object") return;
  byId("tree").replaceChildren(treeNode(root));
  const actors = countActors(root);
  byId("tree-summary").textContent = `${actors} actor${actors === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------------------
// Cluster: every node this one hears, with its shards, actors and circuits

function renderCluster(view) {
  if (!view || !Array.isArray(view.nodes)) return;
  const rows = view.nodes.map((node) => {
    const shards = Array.isArray(node.shards) ? node.shards : [];
    const circuits = (node.circuits || []).map((c) =>
      h("span", { class: "pill", dataset: { status: String(c.circuit) }, text: `${String(c.service).toUpperCase()} ${String(c.circuit).replace("_", " ")}` }),
    );
    const name = node.thisNode ? `${node.nodeId} (this node)` : String(node.nodeId);
    const heard = node.thisNode ? "now" : `${((node.lastHeardMsAgo ?? 0) / 1000).toFixed(1)} s ago`;
    return h(
      "tr",
      { dataset: { node: String(node.nodeId) } },
      h("th", { scope: "row", text: node.leaving ? `${name}, draining` : name }),
      h("td", { text: heard }),
      h("td", { class: "num", text: String(shards.length) }),
      h("td", { class: "num", text: String(node.orderActors ?? 0) }),
      h("td", { class: "num", text: String(node.inFlight ?? 0) }),
      h("td", {}, ...circuits),
      h("td", { text: shards.join(" ") }),
    );
  });
  byId("cluster-rows").replaceChildren(...rows);
  byId("cluster-table").hidden = rows.length === 0;
  const sharing = Array.isArray(view.sharing) ? view.sharing.length : 0;
  byId("cluster-summary").textContent = `${view.shards} shards over ${sharing} node${sharing === 1 ? "" : "s"}; seen from ${view.nodeId}`;
}

// ---------------------------------------------------------------------------
// External systems

function stat(term, value) {
  return h("div", {}, h("dt", { text: term }), h("dd", { text: value }));
}

function renderServices(data) {
  const services = (data && data.services) || [];
  const systems = services.map((svc) => String(svc.service));
  if (systems.join() !== state.systems.join()) {
    state.systems = systems;
    state.latency = new History(systems.map((s) => s.toUpperCase()), HISTORY);
  }
  const cards = services.map((svc) => {
    const name = String(svc.service);
    const latency = typeof svc.lastLatencyMs === "number" ? `${svc.lastLatencyMs.toFixed(svc.lastLatencyMs < 10 ? 1 : 0)} ms` : "—";
    const tripped = svc.circuit !== "CLOSED";
    const recover = h("button", {
      type: "button",
      class: tripped ? "btn btn-primary btn-small" : "btn btn-quiet btn-small",
      text: "Recover",
      "aria-label": `Recover ${name.toUpperCase()}: close its circuit and retry waiting requests`,
      on: { click: () => recoverService(name) },
    });
    recover.dataset.recover = name;
    return h(
      "article",
      { class: "service", dataset: { service: name, circuit: String(svc.circuit) }, "aria-label": `${name.toUpperCase()} circuit ${svc.circuit}` },
      h(
        "div",
        { class: "service-head" },
        h("span", { class: "service-name", text: name.toUpperCase() }),
        h("span", { class: "pill", dataset: { status: String(svc.circuit) }, text: String(svc.circuit).replace("_", " ") }),
      ),
      h(
        "dl",
        { class: "stats" },
        stat("Calls", String(svc.totalCalls ?? 0)),
        stat("Failures", String(svc.totalFailures ?? 0)),
        stat("In a row", String(svc.consecutiveFailures ?? 0)),
        stat("Latency", latency),
        stat("In flight", String(svc.inFlight ?? 0)),
        stat("Waiting", String(svc.waiting ?? 0)),
      ),
      svc.lastError ? h("p", { class: "last-error", text: `Last error: ${svc.lastError}` }) : h("p", { class: "last-error-none", text: "No errors" }),
      recover,
    );
  });
  // Keep the card that holds focus: rebuilding it under the keyboard would lose it.
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.recover : null;
  byId("services").replaceChildren(...cards);
  if (focused) {
    const again = document.querySelector(`[data-recover="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

async function recoverService(name) {
  const button = document.querySelector(`[data-recover="${CSS.escape(name)}"]`);
  if (button) button.disabled = true;
  try {
    const { data } = await api(`/api/services/${encodeURIComponent(name)}/recover`, { method: "POST", token: state.token });
    announce(data && data.message ? data.message : `${name.toUpperCase()} recovered.`);
    byId("services-error").textContent = "";
    await poll();
  } catch (err) {
    if (!endSessionOn(err)) byId("services-error").textContent = `Could not recover ${name.toUpperCase()}: ${err.message}`;
  } finally {
    const again = document.querySelector(`[data-recover="${CSS.escape(name)}"]`);
    if (again) again.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Metrics: orders by status and the charts

function renderMetrics(text) {
  const samples = parseMetrics(text);
  const now = Date.now();
  const counts = Object.fromEntries(ORDER_STATUSES.map((status) => [status, sum(samples, "swift_orders", (l) => l.status === status) || 0]));
  renderStatusBars(counts);

  const settled = SETTLED.reduce((n, status) => n + counts[status], 0);
  const latency = {};
  const systems = state.systems;
  for (const system of systems) {
    latency[system] = {
      sum: sum(samples, "swift_step_duration_seconds_sum", (l) => l.system === system),
      count: sum(samples, "swift_step_duration_seconds_count", (l) => l.system === system),
    };
  }
  const current = { at: now, settled, latency };
  const previous = state.previous;
  state.previous = current;
  if (previous) {
    const seconds = (now - previous.at) / 1000;
    const rate = seconds > 0 ? Math.max(0, settled - previous.settled) / seconds : null;
    state.throughput.push([rate]);
    // A system first listed since the previous sample has no calls in it yet.
    const calls0 = { sum: 0, count: null };
    const of = (sample, system) => sample.latency[system] || calls0;
    const total = (sample, part) => systems.reduce((n, system) => n + (of(sample, system)[part] || 0), 0);
    const calls = total(current, "count") - total(previous, "count");
    if (calls > 0) {
      state.latencyOverall = ((total(current, "sum") - total(previous, "sum")) / calls) * 1000;
    }
    state.latency.push(
      systems.map((system) => {
        // A series appears with its first observation: absent before means zero.
        const a = of(previous, system).count === null ? { sum: 0, count: 0 } : of(previous, system);
        const b = latency[system];
        if (b.count === null || b.count <= a.count) return null;
        return ((b.sum - a.sum) / (b.count - a.count)) * 1000;
      }),
    );
  }
  state.inflight.push([sum(samples, "swift_orders_in_flight")]);
  drawCharts();
}

function renderStatusBars(counts) {
  const max = Math.max(1, ...Object.values(counts));
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  byId("orders-total").textContent = `${total} in all`;
  byId("status-bars").replaceChildren(
    ...ORDER_STATUSES.map((status) => {
      const fill = h("span", { class: "status-bar-fill" });
      fill.style.width = `${(counts[status] / max) * 100}%`;
      return h(
        "li",
        { class: "status-bar", dataset: { status } },
        h("span", { text: statusLabel(status) }),
        h("span", { class: "status-bar-track", "aria-hidden": "true" }, fill),
        h("span", { class: "status-bar-count", text: String(counts[status]) }),
      );
    }),
  );
}

function formatRate(value) {
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function formatMs(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function drawCharts() {
  drawChart(byId("chart-throughput"), { title: "Throughput", unit: "orders/s", history: state.throughput, format: formatRate, area: true });
  drawChart(byId("chart-latency"), {
    title: "Step latency (mean)",
    unit: "ms",
    history: state.latency,
    format: formatMs,
    headline: state.latencyOverall,
  });
  drawChart(byId("chart-inflight"), { title: "Orders in flight", unit: "", history: state.inflight, format: (v) => v.toFixed(0), area: true });
}

// ---------------------------------------------------------------------------
// Dead letters

function deadLetterList(data) {
  if (Array.isArray(data)) return data;
  if (data && typeof data === "object") {
    for (const key of ["deadLetters", "messages", "items"]) if (Array.isArray(data[key])) return data[key];
  }
  return [];
}

function renderDeadLetters(result) {
  const message = byId("dlq-message");
  const error = byId("dlq-error");
  const table = byId("dlq-table");
  const queues = byId("dlq-queues");
  if (result.status === "rejected") {
    const err = result.reason;
    if (err.status === 404 || err.status === 501) {
      error.textContent = "";
      message.textContent = "Dead letters are not available on this node (no broker-backed bus).";
      table.hidden = true;
      queues.replaceChildren();
      byId("dlq-summary").textContent = "";
    } else {
      error.textContent = `Cannot read the dead letters: ${err.message}`;
    }
    return;
  }
  error.textContent = "";
  const letters = deadLetterList(result.value.data);
  byId("dlq-summary").textContent = `${letters.length}${letters.length >= DEAD_LETTER_LIMIT ? "+" : ""} message${letters.length === 1 ? "" : "s"}`;
  message.textContent = letters.length ? "" : "No dead letters. Every message was handled.";
  table.hidden = letters.length === 0;
  const names = [...new Set(letters.map((l) => String(l.queue)))];
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.redrive : null;
  queues.replaceChildren(
    ...names.map((queue) => {
      const button = h("button", { type: "button", class: "btn btn-quiet btn-small", text: `Redrive ${queue}`, on: { click: () => redrive(queue, button) } });
      button.dataset.redrive = queue;
      return button;
    }),
  );
  if (focused) {
    const again = queues.querySelector(`[data-redrive="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  byId("dlq-rows").replaceChildren(
    ...letters.map((letter) => {
      const body = String(letter.body ?? "");
      const short = body.length > 120 ? `${body.slice(0, 120)}…` : body;
      return h(
        "tr",
        {},
        h("td", { text: letter.queue }),
        h("td", { text: letter.reason }),
        h("td", { class: "num", text: String(letter.attempts ?? "") }),
        h("td", { class: "nowrap", text: letter.deadLetteredAt ? formatDateTime(letter.deadLetteredAt) : "—" }),
        h(
          "td",
          { class: "dead-message" },
          body.length > 120
            ? h("details", {}, h("summary", { class: "dead-body", text: short }), h("pre", { class: "dead-body", text: body }))
            : h("pre", { class: "dead-body", text: body }),
        ),
      );
    }),
  );
}

async function redrive(queue, button) {
  button.disabled = true;
  try {
    const { data } = await api(`/api/admin/dlq/${encodeURIComponent(queue)}/redrive`, { method: "POST", token: state.token });
    const moved = data && typeof data.redriven === "number" ? data.redriven : data && typeof data.moved === "number" ? data.moved : null;
    const notice = byId("dlq-notice");
    notice.textContent = moved === null ? `Redrove ${queue}.` : `Redrove ${moved} message${moved === 1 ? "" : "s"} from ${queue}.`;
    notice.hidden = false;
    await poll();
  } catch (err) {
    if (!endSessionOn(err)) byId("dlq-error").textContent = `Could not redrive ${queue}: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------

function main() {
  setUpLogin();
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.token) {
      // A gap in the samples is not a drop in throughput: start the rates afresh.
      state.previous = null;
      poll();
    }
  });
  usableSession(session).then((saved) => {
    if (saved && saved.user && saved.user.role === "admin") start(saved.token, saved.user);
    else showSignedOut("");
  });
}

main();
