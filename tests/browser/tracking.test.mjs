// The tracking page at `/`, driven in headless Chromium against a running node.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  ORDER_TIMEOUT_MS,
  apiGet,
  eventually,
  expectNoProblems,
  launch,
  nodeHasWebSocket,
  placeOrderThroughPage,
  registerThroughPage,
  screenshot,
  setKnobs,
  trackingSession,
  withPage,
} from "./support.mjs";

const PHONE = { width: 390, height: 844 };
const MAIN_LINE = ["RECEIVED", "CMS_VALIDATED", "INVENTORY_RESERVED", "ROUTE_OPTIMIZED", "READY_FOR_DELIVERY"];

let browser;
let webSocketOffered;

before(async () => {
  browser = await launch();
  webSocketOffered = await nodeHasWebSocket();
});

after(async () => {
  await browser?.close();
});

const statusPill = (page, status) => page.locator(`#detail-status .pill[data-status="${status}"]`);

const historyStatuses = (page) =>
  page.locator("#history .timeline-item").evaluateAll((items) => items.map((item) => item.dataset.status));

/** Order updates the page received over its WebSocket(s), parsed. */
function recordSocketUpdates(page) {
  const updates = [];
  page.on("websocket", (socket) => {
    socket.on("framereceived", ({ payload }) => {
      try {
        const message = JSON.parse(String(payload));
        if (message.type === "order-update") updates.push(message);
      } catch {
        // not JSON: not what this test looks at
      }
    });
  });
  return updates;
}

test("a new customer registers, places an order and sees it reach READY_FOR_DELIVERY without a reload", async () => {
  // A slower route optimiser keeps the order in flight long enough to be watched.
  await setKnobs("ros", { latencyMs: 800 });
  try {
    await withPage(browser, "ready-1280", undefined, async (page) => {
      const updates = recordSocketUpdates(page);
      await registerThroughPage(page, "Ada Lovelace");
      await page.evaluate(() => {
        window.sameDocument = true;
      });
      await screenshot(page, "tracking-signed-in-1280");

      const orderId = await placeOrderThroughPage(page, "Browser test parcel");
      await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });

      assert.equal(await page.evaluate(() => window.sameDocument), true, "the page was not reloaded");
      for (const step of ["cms", "wms", "ros"]) {
        assert.equal(await page.locator(`.step[data-step="${step}"]`).getAttribute("data-state"), "COMPLETED", step);
      }
      assert.equal(await page.locator('.step[data-step="delivery"]').getAttribute("data-state"), "IN_PROGRESS");
      const row = page.locator(`.order-row[data-order-id="${orderId}"]`);
      assert.equal(await row.getAttribute("aria-current"), "true");
      assert.equal(await row.locator(".pill").getAttribute("data-status"), "READY_FOR_DELIVERY");
      assert.deepEqual(await historyStatuses(page), MAIN_LINE);
      assert.equal(await page.locator("#detail-progress").getAttribute("aria-valuenow"), "75");
      await page.locator("#facts", { hasText: "Warehouse" }).waitFor();

      const badge = page.locator("#connection");
      if (webSocketOffered) {
        assert.equal(await badge.getAttribute("data-state"), "websocket");
        assert.equal((await badge.textContent()).trim(), "Live");
        const pushed = updates.filter((u) => u.orderId === orderId).map((u) => u.status);
        assert.ok(pushed.includes("READY_FOR_DELIVERY"), `READY_FOR_DELIVERY arrived over the socket: ${pushed}`);
      } else {
        assert.equal(await badge.getAttribute("data-state"), "polling");
      }
      await screenshot(page, "tracking-ready-1280");
      expectNoProblems(page);
    });
  } finally {
    await setKnobs("ros", {});
  }
});

test("an order the CMS refuses shows FAILED with the reason", async () => {
  try {
    await withPage(browser, "refused-1280", undefined, async (page) => {
      await registerThroughPage(page, "Refused Customer");
      const { user } = await trackingSession(page);
      await setKnobs("cms", { refuseCustomers: [user.id] });
      await placeOrderThroughPage(page, "Parcel for an unknown customer");
      await statusPill(page, "FAILED").waitFor({ timeout: ORDER_TIMEOUT_MS });
      const alert = page.locator("#detail-failure");
      await alert.waitFor({ state: "visible" });
      assert.match(await alert.textContent(), /^Failed: \S/);
      await page.locator('.step[data-step="cms"][data-state="FAILED"]').waitFor();
      assert.equal(await page.locator('.step[data-step="delivery"]').getAttribute("data-state"), "SKIPPED");
      assert.equal(await page.locator("#cancel-order").isVisible(), false, "a failed order cannot be cancelled");
      await screenshot(page, "tracking-failed-1280");
      expectNoProblems(page);
    });
  } finally {
    await setKnobs("cms", {});
  }
});

test("after the socket drops, the page reconnects and catches up with since", async (t) => {
  if (!webSocketOffered) {
    t.skip("this node does not offer /ws yet");
    return;
  }
  let releaseSecond = () => {};
  const secondMayConnect = new Promise((resolve) => {
    releaseSecond = resolve;
  });
  await setKnobs("ros", { latencyMs: 2500 });
  try {
    await withPage(browser, "reconnect-1280", undefined, async (page) => {
      /** Every connection the page opens: what it sent, and the way to the server. */
      const connections = [];
      await page.routeWebSocket(/\/ws(\?|$)/, (socket) => {
        const connection = { socket, sent: [], server: null };
        connections.push(connection);
        socket.onMessage((message) => {
          connection.sent.push(JSON.parse(String(message)));
          if (connection.server) connection.server.send(message);
        });
        if (connections.length === 1) {
          connection.server = socket.connectToServer();
        } else {
          // Held (the page sees an open socket that says nothing) until the test lets
          // it through, so what happened meanwhile can only reach the page by replay.
          secondMayConnect.then(() => {
            connection.server = socket.connectToServer();
            for (const message of connection.sent) connection.server.send(JSON.stringify(message));
          });
        }
      });

      await registerThroughPage(page, "Grace Hopper");
      const { token } = await trackingSession(page);
      await page.locator('#connection[data-state="websocket"]').waitFor();
      const orderId = await placeOrderThroughPage(page, "Parcel that crosses a reconnect");
      await statusPill(page, "INVENTORY_RESERVED").waitFor({ timeout: ORDER_TIMEOUT_MS });
      const seenBefore = (await historyStatuses(page)).length;

      // Cut the socket, and keep the page from reading the order any other way.
      await page.route(/\/api\/orders\/ORD-/, (route) => route.abort());
      await connections[0].socket.close({ code: 4000, reason: "the test cuts the connection" });
      const resubscribe = await eventually(
        () => connections[1]?.sent.find((m) => m.type === "subscribe" && m.orderId === orderId),
        10_000,
        "the page to reconnect and subscribe again",
      );
      assert.equal(resubscribe.since, seenBefore, "resubscribed from the last seq the page had seen");
      await eventually(
        async () => (await apiGet(`/api/orders/${orderId}/status`, token)).status === "READY_FOR_DELIVERY",
        ORDER_TIMEOUT_MS,
        "the order to be ready on the server",
      );
      assert.equal(await statusPill(page, "INVENTORY_RESERVED").count(), 1, "nothing reached the page while cut off");

      await page.unroute(/\/api\/orders\/ORD-/);
      releaseSecond();
      await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });
      assert.deepEqual(await historyStatuses(page), MAIN_LINE, "every step once, in order");
      await screenshot(page, "tracking-after-reconnect-1280");
      expectNoProblems(page);
    });
  } finally {
    releaseSecond();
    await setKnobs("ros", {});
  }
});

test("updates pushed while the order's document is on its way are not lost", async (t) => {
  if (!webSocketOffered) {
    t.skip("this node does not offer /ws yet");
    return;
  }
  await setKnobs("ros", { latencyMs: 800 });
  try {
    await withPage(browser, "late-document-1280", undefined, async (page) => {
      await registerThroughPage(page, "Late Reader");
      let held = 0;
      // The first read of the order's document is taken early and handed to the page
      // only after the socket has told it the rest.
      await page.route(/\/api\/orders\/ORD-[^/?]+$/, async (route) => {
        held += 1;
        if (held > 1) return route.continue();
        const early = await route.fetch();
        const body = await early.json();
        assert.notEqual(body.status, "READY_FOR_DELIVERY", "the held document is an early one");
        await page.locator('.order-row .pill[data-status="READY_FOR_DELIVERY"]').waitFor({ timeout: ORDER_TIMEOUT_MS });
        return route.fulfill({ response: early, json: body });
      });
      await placeOrderThroughPage(page, "Parcel with a late document");
      await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });
      assert.deepEqual(await historyStatuses(page), MAIN_LINE);
      await page.locator("#facts", { hasText: "Route" }).waitFor();
      expectNoProblems(page);
    });
  } finally {
    await setKnobs("ros", {});
  }
});

test("behind a proxy that blocks WebSockets the page polls and still follows the order", async () => {
  await setKnobs("ros", { latencyMs: 800 });
  try {
    await withPage(browser, "polling-1280", undefined, async (page) => {
      let refused = 0;
      // Every socket the page opens is closed at once, as such a proxy would.
      await page.routeWebSocket(/\/ws(\?|$)/, (socket) => {
        refused += 1;
        socket.close({ code: 4001, reason: "blocked by the test" });
      });
      await registerThroughPage(page, "Proxy User");
      await page.locator('#connection[data-state="polling"]').waitFor();
      assert.equal((await page.locator("#connection").textContent()).trim(), "Polling");
      await placeOrderThroughPage(page, "Parcel seen by polling");
      await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });
      assert.deepEqual(await historyStatuses(page), MAIN_LINE);
      assert.ok(refused >= 1, "the page tried the socket");
      expectNoProblems(page);
    });
  } finally {
    await setKnobs("ros", {});
  }
});

test("text from the server is shown as text, never run as markup", async () => {
  await withPage(browser, "markup-1280", undefined, async (page) => {
    await registerThroughPage(page, "Mallory");
    const hostile = '<img src=x onerror="window.pwned=1"><b>bold</b>';
    await page.getByLabel("Address").first().fill(`${hostile} Main St`);
    await placeOrderThroughPage(page, hostile);
    await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });
    const facts = page.locator("#facts");
    assert.match(await facts.textContent(), /<img src=x onerror="window.pwned=1"><b>bold<\/b> Main St/);
    assert.equal(await page.locator("#facts img, #facts b, #orders img").count(), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
    expectNoProblems(page);
  });
});

test("the tracking page fits a phone screen", async () => {
  await withPage(browser, "phone", PHONE, async (page) => {
    await page.goto("/");
    await page.locator("#auth").waitFor({ state: "visible" });
    await screenshot(page, "tracking-sign-in-phone");
    await registerThroughPage(page, "Phone User");
    await placeOrderThroughPage(page, "Parcel from a phone");
    await statusPill(page, "READY_FOR_DELIVERY").waitFor({ timeout: ORDER_TIMEOUT_MS });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px`);
    await screenshot(page, "tracking-ready-phone");
    expectNoProblems(page);
  });
});
