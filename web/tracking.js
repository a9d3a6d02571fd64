// The tracking page: sign in or register, place orders, list them, and follow one
// order's steps live. Updates arrive over the WebSocket at /ws; whenever the socket is
// down (server without /ws, a proxy that blocks WebSockets, a restart) the page polls
// the status endpoint every second instead, and on reconnecting it resubscribes with
// the last sequence number seen per order so the server replays what was missed.

import {
  ApiError,
  FINAL_STATUSES,
  announce,
  api,
  byId,
  clearFieldErrors,
  formatDateTime,
  formatTime,
  h,
  keepFresh,
  logOut,
  randomKey,
  sessionStore,
  showFieldErrors,
  statusLabel,
  statusPill,
  usableSession,
  whileBusy,
} from "/static/common.js";

const session = sessionStore("swiftlogistics.tracking");
const PAGE_SIZE = 20;
const POLL_MS = 1000;
const LIST_POLL_MS = 5000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
/**
 * How the page words each back-office system's step and the status its success
 * reaches. The steps themselves, and their order, come from the order's
 * `integrationStatus`; a system without words here is shown by its name.
 */
const STEP_WORDS = {
  cms: { label: "CMS", name: "Customer verification", done: "CMS_VALIDATED" },
  wms: { label: "WMS", name: "Inventory reservation", done: "INVENTORY_RESERVED" },
  ros: { label: "ROS", name: "Route planning", done: "ROUTE_OPTIMIZED" },
};
const STEP_STATE_LABELS = {
  PENDING: "Waiting",
  IN_PROGRESS: "In progress",
  COMPLETED: "Done",
  FAILED: "Failed",
  COMPENSATED: "Undone",
  SKIPPED: "Not started",
};

const state = {
  user: null,
  token: null,
  /** Order summaries by id, and their ids in list order (newest first). */
  orders: new Map(),
  order: [],
  nextCursor: null,
  selectedId: null,
  /** The selected order: its document, its events by seq, and the steps last read. */
  detail: null,
  /**
   * Events pushed for each followed order, by seq. Kept whether or not the order is
   * on screen, so an update that lands while its document is being fetched is not lost.
   */
  events: new Map(),
  orderKey: null,
  live: null,
  timers: [],
};

// ---------------------------------------------------------------------------
// Live updates

/**
 * The WebSocket subscription to the watched orders. Reconnects with exponential
 * backoff and jitter; on each (re)connect it subscribes to every watched order with
 * `since` = the last seq seen, so the server replays exactly what was missed.
 */
class LiveUpdates {
  constructor({ token, onUpdate, onTransport, onGap }) {
    this.token = token;
    this.onUpdate = onUpdate;
    this.onTransport = onTransport;
    this.onGap = onGap;
    /** orderId -> last seq applied (0 when nothing yet). */
    this.watched = new Map();
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    this.transport = "connecting";
  }

  start() {
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close(1000, "signed out");
    this.socket = null;
  }

  isLive() {
    return this.transport === "websocket";
  }

  /** Follows `orderId` from after `seq`; a higher seq seen earlier is kept. */
  watch(orderId, seq) {
    const known = this.watched.get(orderId);
    if (known !== undefined && known >= seq) return;
    this.watched.set(orderId, seq);
    if (known === undefined) this.subscribe(orderId);
  }

  /** Records that a watched order's `seq` has been applied (from a fetched document). */
  seen(orderId, seq) {
    const known = this.watched.get(orderId);
    if (known !== undefined && seq > known) this.watched.set(orderId, seq);
  }

  lastSeq(orderId) {
    return this.watched.get(orderId) || 0;
  }

  /** Reconnects now, if a retry is pending (the tab came back, the network returned). */
  /** A renewed access token: used for the next connection, and sent on the open one
   * so the server does not close the session when the old token expires. */
  renew(token) {
    this.token = token;
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "renew", token }));
    }
  }

  nudge() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  subscribe(orderId) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    const message = { type: "subscribe", orderId };
    const since = this.watched.get(orderId);
    if (since) message.since = since;
    this.socket.send(JSON.stringify(message));
  }

  setTransport(transport) {
    if (this.transport === transport) return;
    this.transport = transport;
    this.onTransport(transport);
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(this.token)}`;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.retry();
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.attempt = 0;
      this.setTransport("websocket");
      for (const orderId of this.watched.keys()) this.subscribe(orderId);
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.retry();
    });
  }

  retry() {
    if (this.stopped) return;
    this.setTransport("polling");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.type === "order-update") {
      const { orderId, seq } = message;
      if (typeof orderId !== "string" || typeof seq !== "number") return;
      const last = this.watched.get(orderId);
      if (last === undefined || seq <= last) return; // not ours, or a duplicate
      this.watched.set(orderId, seq);
      if (seq > last + 1 && last > 0) this.onGap(orderId);
      this.onUpdate(message);
    } else if (message.type === "error") {
      console.warn("tracking:", message.code, message.message);
      if (message.code === "UNAUTHORIZED") signOut("Your session has ended. Please sign in again.");
    }
  }
}

function showTransport(transport) {
  const badge = byId("connection");
  badge.hidden = false;
  badge.dataset.state = transport;
  const text = {
    websocket: "Live",
    polling: "Polling",
    connecting: "Connecting…",
    offline: "Offline",
  }[transport];
  byId("connection-text").textContent = text;
  badge.title = {
    websocket: "Updates arrive instantly over a WebSocket",
    polling: "Live connection unavailable: checking for updates every second",
    connecting: "Connecting for live updates",
    offline: "The server cannot be reached",
  }[transport];
}

// ---------------------------------------------------------------------------
// Session

function showSignedOut(message) {
  byId("loading").hidden = true;
  byId("workspace").hidden = true;
  byId("auth").hidden = false;
  byId("who").hidden = true;
  byId("sign-out").hidden = true;
  byId("connection").hidden = true;
  const error = byId("login-form").querySelector("[data-form-error]");
  error.textContent = message || "";
}

function signOut(message) {
  logOut(session);
  stopWorkspace();
  state.user = null;
  state.token = null;
  showSignedOut(message);
  selectTab("login");
  byId("login-email").focus();
}

/** `login`: the answer of POST /api/auth/login. */
function signedIn(login) {
  session.set(login);
  startWorkspace(login.token, login.user);
}

/** Every API call of the page: a 401 ends the session. */
async function call(path, options = {}) {
  try {
    const result = await api(path, { ...options, token: state.token });
    if (state.live && byId("connection").dataset.state === "offline") showTransport(state.live.transport);
    return result;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your session has ended. Please sign in again.");
    } else if (err instanceof ApiError && err.status === 0 && state.live && !state.live.isLive()) {
      showTransport("offline");
    }
    throw err;
  }
}

function selectTab(which) {
  for (const name of ["login", "register"]) {
    const tab = byId(`tab-${name}`);
    const selected = name === which;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    byId(`${name}-form`).hidden = !selected;
  }
}

function setUpAuth() {
  byId("tab-login").addEventListener("click", () => selectTab("login"));
  byId("tab-register").addEventListener("click", () => selectTab("register"));
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      const next = tab.id === "tab-login" ? "register" : "login";
      selectTab(next);
      byId(`tab-${next}`).focus();
    });
  }

  const login = byId("login-form");
  login.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = login.querySelector("[data-form-error]");
    error.textContent = "";
    const email = login.elements.email.value.trim();
    const password = login.elements.password.value;
    if (!email || !password) {
      error.textContent = "Enter your e-mail address and password.";
      return;
    }
    await whileBusy(login, "Signing in…", async () => {
      try {
        const { data } = await api("/api/auth/login", { method: "POST", body: { email, password } });
        login.reset();
        signedIn(data);
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

  const register = byId("register-form");
  register.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = register.querySelector("[data-form-error]");
    error.textContent = "";
    clearFieldErrors(register);
    const f = register.elements;
    const body = { name: f.name.value.trim(), email: f.email.value.trim(), password: f.password.value };
    if (f.company.value.trim()) body.company = f.company.value.trim();
    if (f.phone.value.trim()) body.phone = f.phone.value.trim();
    await whileBusy(register, "Creating account…", async () => {
      try {
        // The answer is the same whether or not the address had an account; signing
        // in with the chosen password tells which.
        await api("/api/auth/register", { method: "POST", body });
        const credentials = { email: body.email, password: body.password };
        const { data } = await api("/api/auth/login", { method: "POST", body: credentials });
        register.reset();
        signedIn(data);
      } catch (err) {
        const unplaced = showFieldErrors(register, err);
        error.textContent =
          err.status === 401
            ? "This e-mail address already has an account with another password. Sign in instead."
            : err.details.length
              ? unplaced.join(". ") || "Please correct the highlighted fields."
              : err.message;
      }
    });
  });

  byId("sign-out").addEventListener("click", () => signOut(""));
}

// ---------------------------------------------------------------------------
// Workspace

function startWorkspace(token, user) {
  stopWorkspace();
  state.token = token;
  state.user = user;
  byId("loading").hidden = true;
  byId("auth").hidden = true;
  byId("workspace").hidden = false;
  const who = byId("who");
  who.textContent = user && user.email ? user.email : "";
  who.hidden = !who.textContent;
  byId("sign-out").hidden = false;
  showTransport("connecting");

  state.live = new LiveUpdates({
    token,
    onUpdate: applyUpdate,
    onTransport: showTransport,
    onGap: (orderId) => {
      if (orderId === state.selectedId) refreshDetail(orderId);
    },
  });
  state.live.start();
  state.stopRenewing = keepFresh(
    session,
    (fresh) => {
      state.token = fresh;
      if (state.live) state.live.renew(fresh);
    },
    () => signOut("Your session has ended. Please sign in again."),
  );
  state.timers.push(setInterval(pollSelected, POLL_MS));
  state.timers.push(setInterval(pollList, LIST_POLL_MS));

  loadOrders(false).then(() => {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("order");
    if (wanted) selectOrder(wanted, { scroll: false });
  });
}

function stopWorkspace() {
  if (state.stopRenewing) state.stopRenewing();
  state.stopRenewing = null;
  if (state.live) state.live.stop();
  state.live = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  state.orders.clear();
  state.order = [];
  state.nextCursor = null;
  state.selectedId = null;
  state.detail = null;
  state.events.clear();
  byId("orders").replaceChildren();
  byId("detail-body").hidden = true;
  byId("detail-empty").hidden = false;
}

// ---------------------------------------------------------------------------
// Placing an order

/** The server's field paths, mapped to the form's input names. */
const ORDER_FIELDS = {
  "pickupLocation.address": "pickupAddress",
  "pickupLocation.lat": "pickupLat",
  "pickupLocation.lng": "pickupLng",
  "pickupLocation.coordinates.lat": "pickupLat",
  "pickupLocation.coordinates.lng": "pickupLng",
  "deliveryAddress.address": "deliveryAddress",
  "deliveryAddress.lat": "deliveryLat",
  "deliveryAddress.lng": "deliveryLng",
  "deliveryAddress.coordinates.lat": "deliveryLat",
  "deliveryAddress.coordinates.lng": "deliveryLng",
  "packageDetails.weight": "weight",
  "packageDetails.dimensions": "dimensions",
  "packageDetails.description": "description",
  specialInstructions: "specialInstructions",
};

function numberOrNull(input) {
  const value = input.value.trim();
  if (value === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

function orderBody(form) {
  const f = form.elements;
  const text = (input) => input.value.trim() || undefined;
  const body = {
    pickupLocation: { address: text(f.pickupAddress), lat: numberOrNull(f.pickupLat), lng: numberOrNull(f.pickupLng) },
    deliveryAddress: {
      address: text(f.deliveryAddress),
      coordinates: { lat: numberOrNull(f.deliveryLat), lng: numberOrNull(f.deliveryLng) },
    },
    packageDetails: {
      weight: numberOrNull(f.weight),
      dimensions: text(f.dimensions),
      description: text(f.description),
      fragile: f.fragile.checked,
    },
    specialInstructions: text(f.specialInstructions),
  };
  return body;
}

function setUpOrderForm() {
  const form = byId("order-form");
  // One key per order the user means to place: a retry after a lost answer reuses
  // it, so the server does not create the order twice. Editing the form starts over.
  form.addEventListener("input", () => {
    state.orderKey = null;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector("[data-form-error]");
    error.textContent = "";
    clearFieldErrors(form);
    state.orderKey = state.orderKey || randomKey();
    const body = orderBody(form);
    await whileBusy(form, "Placing order…", async () => {
      try {
        const { data } = await call("/api/orders", {
          method: "POST",
          body,
          headers: { "idempotency-key": state.orderKey },
        });
        state.orderKey = null;
        announce(`Order ${data.orderId} placed.`);
        await loadOrders(false);
        await selectOrder(data.orderId, { scroll: true });
      } catch (err) {
        if (err.status === 401) return;
        const unplaced = showFieldErrors(form, err, ORDER_FIELDS);
        if (err.details.length) {
          error.textContent = unplaced.join(". ") || "Please correct the highlighted fields.";
          const first = form.querySelector("[aria-invalid=true]");
          if (first) first.focus();
        } else if (err.status === 503) {
          error.textContent = `We are very busy right now. Try again in ${err.retryAfter || "a few"} seconds.`;
        } else {
          error.textContent = err.message;
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------
// The list of orders

async function loadOrders(more) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (more && state.nextCursor) params.set("cursor", state.nextCursor);
  const errorLine = byId("orders-error");
  try {
    const { data } = await call(`/api/orders?${params}`);
    errorLine.textContent = "";
    if (!more) {
      state.order = [];
    }
    for (const summary of data.orders || []) {
      rememberOrder(summary);
      if (!state.order.includes(summary.orderId)) state.order.push(summary.orderId);
    }
    if (!more) {
      // Orders newer than the first page (placed elsewhere) stay known but the list
      // shows the page as the server ordered it.
      const firstPage = (data.orders || []).map((o) => o.orderId);
      state.order = firstPage.concat(state.order.filter((id) => !firstPage.includes(id)));
    }
    state.nextCursor = data.nextCursor || null;
    renderOrders();
  } catch (err) {
    if (err.status !== 401) errorLine.textContent = `Could not load your orders: ${err.message}`;
  }
}

/** Keeps the newest known state of an order and follows it while it can change. */
function rememberOrder(summary) {
  const known = state.orders.get(summary.orderId);
  if (known && typeof known.seq === "number" && known.seq > summary.seq) return;
  state.orders.set(summary.orderId, { ...known, ...summary });
  if (state.live) {
    state.live.seen(summary.orderId, summary.seq || 0);
    if (!FINAL_STATUSES.has(summary.status)) state.live.watch(summary.orderId, summary.seq || 0);
  }
}

function addressLine(location) {
  if (!location) return "";
  if (location.address) return location.address;
  const point = location.coordinates || location;
  if (typeof point.lat === "number") return `${point.lat.toFixed(4)}, ${point.lng.toFixed(4)}`;
  return "";
}

function renderOrders() {
  const list = byId("orders");
  const items = state.order
    .map((id) => state.orders.get(id))
    .filter(Boolean)
    .map((order) => {
      const selected = order.orderId === state.selectedId;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "order-row",
            "aria-current": selected ? "true" : undefined,
            dataset: { orderId: order.orderId },
            on: { click: () => selectOrder(order.orderId, { scroll: true }) },
          },
          h("span", { class: "order-id", text: order.orderId }),
          h("span", { class: "order-row-route", text: `To ${addressLine(order.deliveryAddress) || "—"}` }),
          h(
            "span",
            { class: "order-row-foot" },
            h("span", { class: "order-row-time muted", text: formatDateTime(order.createdAt) }),
            statusPill(order.status),
          ),
        ),
      );
    });
  list.replaceChildren(...items);
  byId("orders-empty").hidden = items.length > 0;
  byId("more-orders").hidden = !state.nextCursor;
}

function setUpList() {
  byId("refresh-orders").addEventListener("click", () => loadOrders(false));
  byId("more-orders").addEventListener("click", () => loadOrders(true));
}

async function pollList() {
  if (!state.live || state.live.isLive() || document.hidden) return;
  await loadOrders(false).catch(() => {});
}

// ---------------------------------------------------------------------------
// The selected order

async function selectOrder(orderId, { scroll }) {
  state.selectedId = orderId;
  history.replaceState(null, "", `#order=${encodeURIComponent(orderId)}`);
  renderOrders();
  byId("detail-empty").hidden = true;
  await refreshDetail(orderId);
  if (scroll && window.matchMedia("(max-width: 1023px)").matches) {
    byId("detail").scrollIntoView({ behavior: "smooth", block: "start" });
  }
}

/** The order and seq the document was last read again for (see refreshDetail). */
let rereadFor = null;

/** Reads the order document (with its history) and shows it. */
async function refreshDetail(orderId) {
  try {
    const { data } = await call(`/api/orders/${encodeURIComponent(orderId)}`);
    if (state.selectedId !== orderId) return;
    // Updates pushed while the document was on its way are kept: events are merged
    // by seq, and the newest event decides the status shown.
    const events = eventsOf(orderId);
    for (const event of data.history || []) events.set(event.seq, event);
    state.detail = { order: data, events, steps: stepsFromDocument(data) };
    rememberOrder(data);
    if (state.live) state.live.watch(orderId, data.seq || 0);
    renderOrders();
    renderDetail();
    // The document is older than what the socket said: read it again for the steps,
    // the warehouse and the route that came with the newer events.
    // Once per seq, so a document that never catches up cannot keep the page polling.
    const newest = currentEvent(state.detail);
    if (newest && newest.seq > (data.seq || 0) && rereadFor !== `${orderId}:${newest.seq}`) {
      rereadFor = `${orderId}:${newest.seq}`;
      refreshDetailSoon(orderId);
    }
  } catch (err) {
    if (err.status === 404) {
      state.selectedId = null;
      state.detail = null;
      byId("detail-body").hidden = true;
      byId("detail-empty").hidden = false;
      byId("detail-empty").textContent = "That order was not found.";
    } else if (err.status !== 401) {
      byId("detail-error").textContent = `Could not load the order: ${err.message}`;
    }
  }
}

let refreshTimer = null;
/** Several updates in a row cost one read of the document. */
function refreshDetailSoon(orderId) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshDetail(orderId), 150);
}

/** An `order-update` from the socket. */
function applyUpdate(update) {
  const summary = state.orders.get(update.orderId);
  if (summary && !(summary.seq >= update.seq)) {
    state.orders.set(update.orderId, { ...summary, status: update.status, seq: update.seq, updatedAt: update.timestamp });
    renderOrders();
  }
  const detail = state.detail && state.detail.order.orderId === update.orderId ? state.detail : null;
  const before = detail ? currentEvent(detail) : null;
  eventsOf(update.orderId).set(update.seq, {
    seq: update.seq,
    status: update.status,
    message: update.message,
    timestamp: update.timestamp,
    data: update.data,
  });
  if (detail) {
    renderDetail();
    if (!before || before.status !== update.status) announce(`Order ${update.orderId}: ${statusLabel(update.status)}.`);
    // Steps off the main line, the warehouse and the route come with the document.
    refreshDetailSoon(update.orderId);
  }
}

function eventsOf(orderId) {
  let events = state.events.get(orderId);
  if (!events) {
    events = new Map();
    state.events.set(orderId, events);
  }
  return events;
}

/** The newest event known for the selected order. */
function currentEvent(detail) {
  let newest = null;
  for (const event of detail.events.values()) if (!newest || event.seq > newest.seq) newest = event;
  return newest;
}

/** The status to show: the newest event's, or the document's when it is newer. */
function currentStatus(detail) {
  const newest = currentEvent(detail);
  return newest && newest.seq >= (detail.order.seq || 0) ? newest.status : detail.order.status;
}

/** The fallback when the socket is down: the seed's status view, every second. */
let polling = false;
async function pollSelected() {
  if (polling || !state.live || state.live.isLive() || !state.detail || document.hidden) return;
  const { order } = state.detail;
  if (FINAL_STATUSES.has(currentStatus(state.detail))) return;
  polling = true;
  try {
    const { data } = await call(`/api/orders/${encodeURIComponent(order.orderId)}/status`);
    if (!state.detail || state.detail.order.orderId !== data.orderId) return;
    const stepStates = (steps) => (steps || []).map((step) => step.status).join();
    const before = currentStatus(state.detail);
    if (data.status !== before || stepStates(data.steps) !== stepStates(state.detail.steps)) {
      // The document brings the events (and so the status) with it.
      await refreshDetail(data.orderId);
      if (before !== data.status) announce(`Order ${data.orderId}: ${statusLabel(data.status)}.`);
    }
  } catch {
    // The next tick tries again; errors are shown by `call`.
  } finally {
    polling = false;
  }
}

/** The back-office steps of `order`, in the order they run. */
function systemSteps(order) {
  const systems = Object.keys((order && order.integrationStatus) || STEP_WORDS);
  return systems.map((system) => {
    const shown = system.toUpperCase();
    return { system, ...(STEP_WORDS[system] || { label: shown, name: shown, done: null }) };
  });
}

/** The main line of an order's life: received, the systems' steps, then delivery. */
function mainLine(systems) {
  return ["RECEIVED", ...systems.map((step) => step.done), "READY_FOR_DELIVERY", "OUT_FOR_DELIVERY", "DELIVERED"];
}

/** Whether a customer may still cancel an order in `status`: until it is out for delivery. */
function cancellable(systems, status) {
  const at = mainLine(systems).indexOf(status);
  return at >= 0 && at <= systems.length + 1;
}

/** The systems' steps as the status endpoint would give them. */
function stepsFromDocument(order) {
  const integration = order.integrationStatus || {};
  const systems = systemSteps(order);
  const at = mainLine(systems).indexOf(order.status);
  const processing = at >= 0 && at <= systems.length;
  let current = processing;
  return systems.map((step) => {
    const raw = integration[step.system] || "PENDING";
    let status = raw === "REFUSED" ? "FAILED" : raw;
    if (status === "PENDING" && current) {
      status = "IN_PROGRESS";
      current = false;
    }
    const done = (order.history || []).find((e) => e.status === step.done);
    return { step: step.system, name: step.name, status, timestamp: done ? done.timestamp : null, system: step.system };
  });
}

/** The steps to show: derived from the status on the main line (the newest word). */
function currentSteps(detail, status) {
  const systems = systemSteps(detail.order);
  const index = mainLine(systems).indexOf(status);
  if (index < 0) return detail.steps;
  const events = [...detail.events.values()];
  return systems.map((step, i) => {
    const status = index > i ? "COMPLETED" : index === i ? "IN_PROGRESS" : "PENDING";
    const done = events.find((e) => e.status === step.done);
    return { step: step.system, name: step.name, status, timestamp: done ? done.timestamp : null, system: step.system };
  });
}

function deliveryStep(status, events) {
  const at = (wanted) => {
    const event = events.find((e) => e.status === wanted);
    return event ? event.timestamp : null;
  };
  switch (status) {
    case "READY_FOR_DELIVERY":
      return { status: "IN_PROGRESS", detail: "Waiting for a driver", timestamp: at("READY_FOR_DELIVERY") };
    case "OUT_FOR_DELIVERY":
      return { status: "IN_PROGRESS", detail: "Out for delivery", timestamp: at("OUT_FOR_DELIVERY") };
    case "DELIVERED":
      return { status: "COMPLETED", detail: "Delivered", timestamp: at("DELIVERED") };
    case "FAILED":
    case "CANCELLED":
      return { status: "SKIPPED", detail: "Will not be delivered", timestamp: null };
    default:
      return { status: "PENDING", detail: "After the route is planned", timestamp: null };
  }
}

function stepIcon(status) {
  return { COMPLETED: "✓", FAILED: "✕", COMPENSATED: "↺", IN_PROGRESS: "", SKIPPED: "–" }[status];
}

/** One step card; `system` is the back-office system's short name, if any. */
function renderStep(index, key, system, name, status, detailText, timestamp) {
  const icon = stepIcon(status);
  return h(
    "li",
    { class: "step", dataset: { state: status, step: key } },
    h("span", { class: "step-marker", "aria-hidden": "true", text: icon === undefined ? String(index) : icon }),
    h(
      "span",
      { class: "step-body" },
      h("span", { class: "step-name" }, system ? h("span", { class: "step-system", text: `${system} ` }) : null, name),
      h(
        "span",
        { class: "step-state" },
        h("span", { class: "visually-hidden", text: ": " }),
        detailText || STEP_STATE_LABELS[status] || status,
        timestamp ? h("time", { datetime: timestamp, text: ` · ${formatTime(timestamp)}` }) : null,
      ),
    ),
  );
}

function fact(term, ...value) {
  return [h("dt", { text: term }), h("dd", {}, ...value)];
}

function renderDetail() {
  const detail = state.detail;
  if (!detail) return;
  const { order } = detail;
  const events = [...detail.events.values()].sort((a, b) => a.seq - b.seq);
  const status = currentStatus(detail);
  const newest = currentEvent(detail);
  byId("detail-body").hidden = false;
  byId("detail-empty").hidden = true;
  byId("detail-error").textContent = "";
  byId("detail-id").textContent = order.orderId;
  byId("detail-created").textContent = `Placed ${formatDateTime(order.createdAt)}`;

  const statusBox = byId("detail-status");
  if (statusBox.dataset.status !== status) {
    statusBox.dataset.status = status;
    statusBox.replaceChildren(statusPill(status));
  }

  // Why it failed: the document's reason, or the one carried by the newest event.
  const failure = byId("detail-failure");
  const eventReason = newest && newest.data && typeof newest.data.reason === "string" ? newest.data.reason : null;
  const reason = status === "COMPENSATING" ? eventReason || order.failureReason : order.failureReason || eventReason;
  const shown = reason && (status === "FAILED" || status === "COMPENSATING" || status === "CANCELLED");
  failure.hidden = !shown;
  if (shown) {
    failure.replaceChildren(
      h("strong", { text: status === "CANCELLED" ? "Cancelled: " : status === "COMPENSATING" ? "Undoing steps: " : "Failed: " }),
      h("span", { class: "failure-reason", text: reason }),
    );
  }

  // Steps that never ran on an order that has ended will not run any more.
  const ended = status === "FAILED" || status === "CANCELLED";
  const steps = currentSteps(detail, status).map((step) =>
    ended && (step.status === "PENDING" || step.status === "IN_PROGRESS") ? { ...step, status: "SKIPPED" } : step,
  );
  const delivery = deliveryStep(status, events);
  const systems = systemSteps(order);
  const total = systems.length + 1;
  const completed = steps.filter((s) => s.status === "COMPLETED").length + (delivery.status === "COMPLETED" ? 1 : 0);
  const percentage = Math.round((completed / total) * 100);
  const progress = byId("detail-progress");
  progress.setAttribute("aria-valuenow", String(percentage));
  progress.setAttribute("aria-valuetext", `${completed} of ${total} steps done`);
  progress.dataset.state = FINAL_STATUSES.has(status) && status !== "DELIVERED" ? "stopped" : "running";
  byId("detail-progress-bar").style.width = `${percentage}%`;

  byId("steps").replaceChildren(
    ...steps.map((step, i) =>
      renderStep(i + 1, systems[i].system, systems[i].label, systems[i].name, step.status, null, step.timestamp),
    ),
    renderStep(total, "delivery", null, "Delivery", delivery.status, delivery.detail, delivery.timestamp),
  );

  const pkg = order.packageDetails || {};
  const packageText = [
    typeof pkg.weight === "number" ? `${pkg.weight} kg` : null,
    typeof pkg.dimensions === "string" ? `${pkg.dimensions} cm` : null,
    pkg.description || null,
    pkg.fragile ? "fragile" : null,
  ]
    .filter(Boolean)
    .join(" · ");
  const facts = [
    fact("Pickup", addressLine(order.pickupLocation)),
    fact("Delivery", addressLine(order.deliveryAddress)),
    fact("Package", packageText || "—"),
  ];
  if (order.warehouse) {
    const where = order.warehouse.pickingLocation ? ` · ${order.warehouse.pickingLocation}` : "";
    facts.push(fact("Warehouse", `${order.warehouse.warehouse}${where}`));
  }
  if (order.route) {
    const distance = typeof order.route.distance === "number" ? `${order.route.distance.toFixed(1)} km` : "";
    const eta = order.route.eta ? formatDateTime(order.route.eta) || String(order.route.eta) : "";
    facts.push(fact("Route", [distance, eta ? `arrives about ${eta}` : ""].filter(Boolean).join(" · ") || "planned"));
  }
  if (order.specialInstructions) facts.push(fact("Instructions", order.specialInstructions));
  byId("facts").replaceChildren(...facts.flat());

  byId("cancel-order").hidden = !cancellable(systems, status);

  byId("history").replaceChildren(
    ...events.map((event) =>
      h(
        "li",
        { class: "timeline-item", dataset: { status: event.status } },
        h("time", { datetime: event.timestamp, text: formatTime(event.timestamp) }),
        h("span", { class: "timeline-status", text: statusLabel(event.status) }),
        h("span", { class: "timeline-message", text: event.message }),
      ),
    ),
  );
}

function setUpCancel() {
  const button = byId("cancel-order");
  let armed = false;
  let disarm = null;
  button.addEventListener("click", async () => {
    if (!state.detail) return;
    if (!armed) {
      armed = true;
      button.textContent = "Confirm: cancel this order";
      button.classList.add("armed");
      disarm = setTimeout(() => {
        armed = false;
        button.textContent = "Cancel order";
        button.classList.remove("armed");
      }, 5000);
      return;
    }
    clearTimeout(disarm);
    armed = false;
    button.classList.remove("armed");
    button.disabled = true;
    button.textContent = "Cancelling…";
    const orderId = state.detail.order.orderId;
    try {
      const { data } = await call(`/api/orders/${encodeURIComponent(orderId)}/cancel`, { method: "POST" });
      announce(data.message || "Cancellation requested.");
      await refreshDetail(orderId);
    } catch (err) {
      if (err.status !== 401) byId("detail-error").textContent = err.message;
    } finally {
      button.disabled = false;
      button.textContent = "Cancel order";
    }
  });
}

// ---------------------------------------------------------------------------

function main() {
  setUpAuth();
  setUpOrderForm();
  setUpList();
  setUpCancel();
  const resume = () => {
    if (state.live) state.live.nudge();
  };
  window.addEventListener("online", resume);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) resume();
  });
  usableSession(session).then((saved) => {
    if (saved) startWorkspace(saved.token, saved.user);
    else showSignedOut("");
  });
}

main();
