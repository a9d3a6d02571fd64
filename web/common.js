// Shared by the tracking page and the SRE page: the API client, the session kept in
// sessionStorage, and a small DOM builder. Server strings only ever reach the page
// as text nodes or attribute values, never as markup.

/** An API answer that is not a success, with the server's error code and details. */
export class ApiError extends Error {
  constructor(status, code, message, details, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = Array.isArray(details) ? details : [];
    this.retryAfter = retryAfter;
  }
}

const DEFAULT_TIMEOUT_MS = 15000;

/**
 * Calls the API and returns `{status, data, headers}`; throws ApiError for any answer
 * outside 2xx, for timeouts (status 0, code TIMEOUT) and for network failures
 * (status 0, code NETWORK).
 */
export async function api(path, options = {}) {
  const { method = "GET", body, token, headers = {}, timeoutMs = DEFAULT_TIMEOUT_MS, accept = "json" } = options;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const sent = { ...headers };
  if (body !== undefined) sent["content-type"] = "application/json";
  if (token) sent.authorization = `Bearer ${token}`;
  try {
    const response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "omit",
    });
    const text = await response.text();
    let data = text;
    if (accept === "json" || !response.ok) {
      try {
        data = text ? JSON.parse(text) : null;
      } catch {
        data = text;
      }
    }
    if (!response.ok) {
      const error = (data && typeof data === "object" && data.error) || {};
      throw new ApiError(
        response.status,
        typeof error.code === "string" ? error.code : `HTTP_${response.status}`,
        typeof error.message === "string" ? error.message : `the server answered ${response.status}`,
        error.details,
        response.headers.get("retry-after"),
      );
    }
    return { status: response.status, data, headers: response.headers };
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if (err && err.name === "AbortError") {
      throw new ApiError(0, "TIMEOUT", "The server did not answer in time.");
    }
    throw new ApiError(0, "NETWORK", "Cannot reach the server.");
  } finally {
    clearTimeout(timer);
  }
}

/** The claims of a JWT, or null when it cannot be read. The server still decides. */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

/** Milliseconds until the token expires (negative once it has), or null. */
function msUntilExpiry(token) {
  const claims = tokenClaims(token);
  return claims && typeof claims.exp === "number" ? claims.exp * 1000 - Date.now() : null;
}

/**
 * The signed-in account of one page, kept in sessionStorage (per tab, gone when the
 * tab closes): the short-lived access token, the refresh token that renews it, and
 * the user. An expired access token without a refresh token is dropped on read.
 */
export function sessionStore(key) {
  return {
    get() {
      let saved = null;
      try {
        saved = JSON.parse(sessionStorage.getItem(key) || "null");
      } catch {
        saved = null;
      }
      if (!saved || typeof saved.token !== "string") return null;
      const left = msUntilExpiry(saved.token);
      if (left !== null && left <= 0 && typeof saved.refreshToken !== "string") {
        sessionStorage.removeItem(key);
        return null;
      }
      return saved;
    },
    /** `login` is the answer of POST /api/auth/login or /refresh. */
    set(login) {
      const { token, refreshToken, user } = login;
      sessionStorage.setItem(key, JSON.stringify({ token, refreshToken, user }));
    },
    clear() {
      sessionStorage.removeItem(key);
    },
  };
}

/** Renew this long before the access token expires. */
const RENEW_AHEAD_MS = 60000;
const RENEW_RETRY_MS = 10000;

/**
 * Exchanges the saved refresh token for a new pair (the old one is spent) and saves
 * it. Returns the saved session, or null when the server refused (the session was
 * revoked or has ended): the page must sign in again.
 */
export async function refreshSession(store) {
  const saved = store.get();
  if (!saved || typeof saved.refreshToken !== "string") return null;
  try {
    const { data } = await api("/api/auth/refresh", { method: "POST", body: { refreshToken: saved.refreshToken } });
    store.set(data);
    return store.get();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      store.clear();
      return null;
    }
    throw err;
  }
}

/**
 * A saved session whose access token is good for now: the saved one, or a renewed
 * one if it has expired; null when there is none (sign in).
 */
export async function usableSession(store) {
  const saved = store.get();
  if (!saved) return null;
  const left = msUntilExpiry(saved.token);
  if (left === null || left > 5000) return saved;
  try {
    return await refreshSession(store);
  } catch {
    return null;
  }
}

/**
 * Keeps the access token fresh while the page is signed in: renews it a minute
 * before it expires and hands the new one to `onRenewed`; calls `onEnded` when the
 * server refuses (the session was revoked). Returns a function that stops it.
 */
export function keepFresh(store, onRenewed, onEnded) {
  let timer = null;
  let stopped = false;
  const schedule = (ms) => {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(renew, Math.max(0, ms));
  };
  const renew = async () => {
    try {
      const saved = await refreshSession(store);
      if (stopped) return;
      if (!saved) {
        onEnded();
        return;
      }
      onRenewed(saved.token);
      schedule((msUntilExpiry(saved.token) ?? RENEW_AHEAD_MS * 2) - RENEW_AHEAD_MS);
    } catch {
      schedule(RENEW_RETRY_MS);
    }
  };
  const saved = store.get();
  if (saved) schedule((msUntilExpiry(saved.token) ?? RENEW_AHEAD_MS * 2) - RENEW_AHEAD_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Ends the server-side session (its refresh token and access tokens); best effort. */
export function logOut(store) {
  const saved = store.get();
  store.clear();
  if (!saved) return;
  api("/api/auth/logout", { method: "POST", token: saved.token, body: { refreshToken: saved.refreshToken } }).catch(() => {});
}

/**
 * Builds an element. `attrs`: `class`, `text` (textContent), `dataset` (object),
 * `on` (object of event handlers), `hidden`/`disabled`/`checked`/`value` as
 * properties; anything else is set as an attribute. Children: nodes, strings (as text),
 * arrays; null, undefined and false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  applyAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Like `h`, for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  applyAttrs(node, attrs);
  append(node, children);
  return node;
}

function applyAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "class") node.setAttribute("class", value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (["hidden", "disabled", "checked", "value"].includes(name)) node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** `#id` lookup that fails loudly when the page and its script disagree. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node;
}

/** Says `message` to screen readers through the page's polite live region. */
export function announce(message) {
  const region = document.getElementById("live-region");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after a tick makes repeated messages heard again.
  setTimeout(() => {
    region.textContent = message;
  }, 30);
}

export const STATUS_LABELS = {
  RECEIVED: "Received",
  CMS_VALIDATED: "Customer verified",
  INVENTORY_RESERVED: "Inventory reserved",
  ROUTE_OPTIMIZED: "Route planned",
  READY_FOR_DELIVERY: "Ready for delivery",
  OUT_FOR_DELIVERY: "Out for delivery",
  DELIVERED: "Delivered",
  COMPENSATING: "Undoing steps",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};

export const ORDER_STATUSES = Object.keys(STATUS_LABELS);

/** Statuses after which nothing happens to an order any more. */
export const FINAL_STATUSES = new Set(["DELIVERED", "FAILED", "CANCELLED"]);

export function statusLabel(status) {
  return STATUS_LABELS[status] || String(status || "Unknown");
}

/** A pill showing an order status; its colour comes from `data-status` in the CSS. */
export function statusPill(status) {
  return h("span", { class: "pill", dataset: { status: String(status || "") }, text: statusLabel(status) });
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatTime(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
}

export function formatDateTime(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : dateTimeFormat.format(date);
}

/** A random key for Idempotency-Key headers (works outside secure contexts too). */
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Shows the server's field errors next to the inputs named after their paths. */
export function showFieldErrors(form, error, fieldNames = {}) {
  clearFieldErrors(form);
  const unplaced = [];
  for (const detail of error.details || []) {
    const name = fieldNames[detail.field] || detail.field;
    const input = form.elements.namedItem(name);
    const slot = input && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (input && slot) {
      input.setAttribute("aria-invalid", "true");
      slot.textContent = String(detail.message || "is invalid");
    } else {
      unplaced.push(`${detail.field}: ${detail.message}`);
    }
  }
  return unplaced;
}

export function clearFieldErrors(form) {
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
}

/** Runs `task` with the form's submit button disabled and a busy label. */
export async function whileBusy(form, busyLabel, task) {
  const button = form.querySelector("button[type=submit]");
  const label = button ? button.textContent : "";
  if (button) {
    button.disabled = true;
    button.textContent = busyLabel;
  }
  form.setAttribute("aria-busy", "true");
  try {
    return await task();
  } finally {
    form.removeAttribute("aria-busy");
    if (button) {
      button.disabled = false;
      button.textContent = label;
    }
  }
}
