// The SRE page at `/sre`, driven in headless Chromium against a running node.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  ADMIN_EMAIL,
  ADMIN_PASSWORD,
  BASE_URL,
  eventually,
  expectNoProblems,
  launch,
  screenshot,
  setKnobs,
  uniqueEmail,
  withPage,
} from "./support.mjs";

let browser;

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

async function signIn(page, email, password) {
  await page.goto("/sre");
  await page.getByLabel("Admin e-mail").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function post(pathname, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${BASE_URL}${pathname}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: await response.json() };
}

/** A customer of our own, to place orders through the API. */
async function customerToken() {
  const { status, body } = await post("/api/auth/register", {
    name: "Metrics Feeder",
    email: uniqueEmail("feeder"),
    password: "correct-horse-battery",
  });
  assert.equal(status, 201);
  return body.token;
}

function placeOrder(token) {
  return post(
    "/api/orders",
    {
      pickupLocation: { lat: 40.7128, lng: -74.006, address: "123 Main St" },
      deliveryAddress: { address: "456 Oak Ave", coordinates: { lat: 40.6782, lng: -73.9442 } },
      packageDetails: { weight: 1.5, description: "SRE test parcel" },
    },
    token,
  );
}

test("an admin sees the live supervisor tree, the circuits, orders by status and the charts", async () => {
  await withPage(browser, "sre-1280", undefined, async (page) => {
    await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    const tree = page.locator("#tree");
    await tree.locator('[data-actor="root"]').waitFor();
    for (const actor of ["telemetry", "adapters", "adapter-cms", "adapter-wms", "adapter-ros", "orders"]) {
      assert.equal(await tree.locator(`[data-actor="${actor}"]`).count(), 1, `${actor} is in the tree`);
    }
    assert.match(await tree.locator('[data-actor="adapter-cms"] .tree-meta').first().textContent(), /restarts?.*mailbox \d+/);
    for (const system of ["cms", "wms", "ros"]) {
      const card = page.locator(`.service[data-service="${system}"]`);
      assert.equal(await card.getAttribute("data-circuit"), "CLOSED", system);
      assert.equal(await card.getByRole("button", { name: /Recover/ }).count(), 1);
    }

    // Orders settling move the status bars and the charts.
    const ready = page.locator('.status-bar[data-status="READY_FOR_DELIVERY"] .status-bar-count');
    await ready.waitFor();
    const readyBefore = Number(await ready.textContent());
    const token = await customerToken();
    for (let i = 0; i < 3; i += 1) assert.equal((await placeOrder(token)).status, 202);
    await eventually(
      async () => Number(await ready.textContent()) >= readyBefore + 3,
      30_000,
      "three more orders counted as ready",
    );
    await eventually(
      async () => (await page.locator("#chart-throughput .chart-value").textContent()) !== "— orders/s",
      10_000,
      "a throughput sample",
    );
    await eventually(
      async () => (await page.locator("#chart-latency .chart-line").count()) > 0,
      10_000,
      "a step latency sample",
    );
    assert.equal(await page.locator("#freshness").getAttribute("data-state"), "ok");
    assert.match(await page.locator("#dlq-message").textContent(), /not available|No dead letters/);
    await screenshot(page, "sre-1280");
    expectNoProblems(page);
  });
});

test("an open circuit shows as OPEN and the recover button closes it", async () => {
  await setKnobs("wms", { outage: true });
  try {
    await withPage(browser, "sre-circuit", undefined, async (page) => {
      await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
      const card = page.locator('.service[data-service="wms"]');
      await card.waitFor();
      const token = await customerToken();
      assert.equal((await placeOrder(token)).status, 202);
      await page.locator('.service[data-service="wms"][data-circuit="OPEN"]').waitFor({ timeout: 20_000 });
      assert.match(await card.locator(".last-error").textContent(), /^Last error: \S/);
      await screenshot(page, "sre-circuit-open-1280");

      await setKnobs("wms", {});
      await card.getByRole("button", { name: /Recover/ }).click();
      await page.locator('.service[data-service="wms"][data-circuit="CLOSED"]').waitFor({ timeout: 10_000 });
      await eventually(
        async () => /closed/i.test(await page.locator("#live-region").textContent()),
        5000,
        "the recovery to be announced",
      );
      expectNoProblems(page);
    });
  } finally {
    await setKnobs("wms", {});
  }
});

test("a customer account is refused on the SRE page", async () => {
  await withPage(browser, "sre-customer", undefined, async (page) => {
    const email = uniqueEmail("not-an-admin");
    const { status } = await post("/api/auth/register", { name: "Not Admin", email, password: "correct-horse-battery" });
    assert.equal(status, 201);
    await signIn(page, email, "correct-horse-battery");
    await page.getByRole("alert").filter({ hasText: "not an operator account" }).waitFor();
    assert.equal(await page.locator("#console").isVisible(), false);
    expectNoProblems(page);
  });
});

test("the SRE page fits a phone screen", async () => {
  await withPage(browser, "sre-phone", { width: 390, height: 844 }, async (page) => {
    await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.locator('#tree [data-actor="root"]').waitFor();
    await page.locator(".service").first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px`);
    await screenshot(page, "sre-phone");
    expectNoProblems(page);
  });
});
