// Shared by the browser tests: where the node under test is, how Chromium starts,
// screenshots, and small helpers that talk to the node directly.
//
// scripts/browser-tests.sh starts a node and sets BASE_URL, ADMIN_EMAIL,
// ADMIN_PASSWORD, SIM_CONTROL_URL and SCREENSHOT_DIR.

import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through scripts/browser-tests.sh`);
  return value;
}

export const BASE_URL = required("BASE_URL").replace(/\/$/, "");
export const ADMIN_EMAIL = process.env.ADMIN_EMAIL || "admin@swiftlogistics.local";
export const ADMIN_PASSWORD = required("ADMIN_PASSWORD");
export const SIM_CONTROL_URL = (process.env.SIM_CONTROL_URL || "").replace(/\/$/, "");
export const SCREENSHOT_DIR = path.resolve(process.env.SCREENSHOT_DIR || "screenshots");
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

/** How long an order may take to get through three simulated systems. */
export const ORDER_TIMEOUT_MS = 30_000;

/**
 * Headless Chromium as this machine needs it: no sandbox (root), no GPU, and no
 * background connections to Google's services, which the closed network refuses.
 */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Console messages a healthy page may log; anything else fails the test. */
const EXPECTED_CONSOLE = [
  // The socket being cut on purpose, or /ws not offered by this node.
  /WebSocket connection to .* failed/,
  /WebSocket is closed before the connection is established/,
  // Responses the test provokes: a failed login, a blocked request.
  /Failed to load resource: the server responded with a status of (401|403|404|409|422)/,
  /Failed to load resource: net::ERR_FAILED/,
];

/**
 * A fresh context (its own sessionStorage) and page at `viewport`. Uncaught errors
 * and unexpected console errors (a CSP violation among them) are collected in
 * `page.problems`, which `expectNoProblems` checks.
 */
export async function openPage(browser, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport, baseURL: BASE_URL });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`uncaught: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    if (!EXPECTED_CONSOLE.some((pattern) => pattern.test(text))) page.problems.push(`console: ${text}`);
  });
  return page;
}

/**
 * Runs `body` with a fresh page; when it fails, saves `failed-<name>.png` to show
 * what the page looked like. The page's context is closed either way.
 */
export async function withPage(browser, name, viewport, body) {
  const page = await openPage(browser, viewport);
  try {
    await body(page);
  } catch (err) {
    await screenshot(page, `failed-${name}`).catch(() => {});
    throw err;
  } finally {
    await page.context().close();
  }
}

export function expectNoProblems(page) {
  assert.deepEqual(page.problems, [], "the page logged errors");
}

export async function screenshot(page, name, options = {}) {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, animations: "disabled", ...options });
  return file;
}

let counter = 0;
export function uniqueEmail(prefix) {
  counter += 1;
  return `${prefix}-${Date.now().toString(36)}-${process.pid}-${counter}@example.com`;
}

/** True when the node offers the WebSocket endpoint (anything but 404 without an upgrade). */
export async function nodeHasWebSocket() {
  const response = await fetch(`${BASE_URL}/ws`, { signal: AbortSignal.timeout(5000) });
  await response.arrayBuffer();
  return response.status !== 404;
}

/** Sets one simulator's knobs (replacing all of them) through the control API. */
export async function setKnobs(system, knobs) {
  assert.ok(SIM_CONTROL_URL, "SIM_CONTROL_URL is not set");
  const response = await fetch(`${SIM_CONTROL_URL}/knobs/${system}`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(knobs),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(response.status, 200, `setting the ${system} knobs`);
}

/** GET on the node's API with a bearer token. */
export async function apiGet(pathname, token) {
  const response = await fetch(`${BASE_URL}${pathname}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  const body = await response.json();
  assert.equal(response.status, 200, `GET ${pathname}: ${JSON.stringify(body)}`);
  return body;
}

/** Polls `probe` until it returns a truthy value, or fails after `timeoutMs`. */
export async function eventually(probe, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last) return last;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.fail(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
}

/** The session the tracking page keeps in sessionStorage. */
export async function trackingSession(page) {
  const saved = await page.evaluate(() => sessionStorage.getItem("swiftlogistics.tracking"));
  assert.ok(saved, "the tracking page keeps a session after signing in");
  return JSON.parse(saved);
}

/** Registers a new customer through the tracking page's form. */
export async function registerThroughPage(page, name) {
  await page.goto("/");
  await page.getByRole("tab", { name: "Create account" }).click();
  await page.getByLabel("Full name").fill(name);
  const email = uniqueEmail(name.toLowerCase().replace(/\W+/g, "-"));
  await page.locator("#register-email").fill(email);
  await page.locator("#register-password").fill("correct-horse-battery");
  await page.getByRole("button", { name: "Create account", exact: true }).click();
  await page.locator("#order-form").waitFor({ state: "visible" });
  return email;
}

/** Places an order with the form and returns its id, as the page shows it. */
export async function placeOrderThroughPage(page, description) {
  await page.getByLabel("Contents").fill(description);
  const placed = page.waitForResponse((r) => r.url().endsWith("/api/orders") && r.request().method() === "POST");
  await page.getByRole("button", { name: "Place order" }).click();
  const response = await placed;
  const body = await response.json();
  assert.equal(response.status(), 202, JSON.stringify(body));
  await page.locator("#detail-id", { hasText: body.orderId }).waitFor();
  return body.orderId;
}
