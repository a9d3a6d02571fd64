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
    // A node on its own is the whole cluster: it owns every shard.
    const own = page.locator("#cluster-rows tr").first();
    await own.waitFor();
    assert.match(await own.locator("th").textContent(), /\(this node\)/);
    assert.ok(Number(await own.locator("td.num").first().textContent()) > 0, "it owns the shards");
    assert.match(await page.locator("#cluster-summary").textContent(), /shards over 1 node/);
    for (const system of ["cms", "wms", "ros"]) {
      const card = page.locator(`.service[data-service="${system}"]`);
      assert.equal(await card.getAttribute("data-circuit"), "CLOSED", system);
      assert.equal(await card.getByRole("button", { name: /Recover/ }).count(), 1);
    }

    // Orders settling move the status bars and the charts.
    const ready = page.locator('.status-bar[data-status="READY_FOR_DELIVERY"] .status-bar-count');
    await ready.waitFor();
    const readyBefore = Number(await ready.textContent());
    // A steady trickle for a few sampling intervals, so the charts draw lines.
    const token = await customerToken();
    const waves = 6;
    for (let wave = 0; wave < waves; wave += 1) {
      const placed = await Promise.all([placeOrder(token), placeOrder(token)]);
      for (const { status } of placed) assert.equal(status, 202);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    await eventually(
      async () => Number(await ready.textContent()) >= readyBefore + 2 * waves,
      30_000,
      "the new orders counted as ready",
    );
    await eventually(
      async () => (await page.locator("#chart-throughput polyline.chart-line").count()) > 0,
      10_000,
      "throughput drawn as a line",
    );
    assert.notEqual(await page.locator("#chart-throughput .chart-value").textContent(), "— orders/s");
    await eventually(
      async () => (await page.locator("#chart-latency .chart-line").count()) > 0,
      10_000,
      "a step latency sample",
    );
    assert.match(await page.locator("#chart-latency .chart-value").textContent(), /^\d/);
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

test("dead letters are listed as text and a queue can be redriven", async () => {
  // The in-process bus of the test node keeps no dead letters (RabbitMQ does), so the
  // two dead-letter endpoints are answered here, in the shape the node gives them.
  await withPage(browser, "sre-dead-letters", undefined, async (page) => {
    const hostile = '<img src=x onerror="window.pwned=1">{"orderId":"ORD-1"}';
    const redriven = [];
    await page.route(/\/api\/admin\/dlq\?/, (route) =>
      route.fulfill({
        json: {
          deadLetters: [
            { queue: "orders.shard.3", reason: "rejected", attempts: 1, body: hostile, deadLetteredAt: "2026-02-04T16:20:30Z" },
            { queue: "steps.wms", reason: "delivery_limit", attempts: 5, body: "x".repeat(400), deadLetteredAt: null },
          ],
        },
      }),
    );
    await page.route(/\/api\/admin\/dlq\/[^/]+\/redrive$/, (route) => {
      redriven.push(decodeURIComponent(new URL(route.request().url()).pathname.split("/")[4]));
      return route.fulfill({ json: { queue: "orders.shard.3", redriven: 1 } });
    });
    await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    const rows = page.locator("#dlq-rows tr");
    await rows.first().waitFor();
    assert.equal(await rows.count(), 2);
    assert.equal(await rows.first().locator("td").first().textContent(), "orders.shard.3");
    assert.equal(await rows.first().locator(".dead-body").textContent(), hostile);
    assert.equal(await page.locator("#dlq-rows img").count(), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
    await screenshot(page, "sre-dead-letters-1280");
    await page.getByRole("button", { name: "Redrive orders.shard.3" }).click();
    await page.locator("#dlq-notice", { hasText: "Redrove 1 message from orders.shard.3" }).waitFor();
    assert.deepEqual(redriven, ["orders.shard.3"]);
    expectNoProblems(page);
  });
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
