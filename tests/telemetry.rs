//! Supervision telemetry as an SRE uses it: the restart history, mailbox figures,
//! one order's actor and the Prometheus exposition.

mod common;

use common::{TestApp, periodic_check, spawn_app, spawn_app_with};
use serde_json::Value;
use std::time::Duration;
use swiftlogistics::domain::System;

const WAIT: Duration = Duration::from_secs(15);

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_adapter_crash_is_in_the_restart_history_with_its_reason() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    let (status, _) = get(&app, &client, "/api/telemetry/events").await;
    assert_eq!(status, 403, "only admins read the history");

    let (_, started) = get(&app, &admin, "/api/telemetry/events?kind=started").await;
    let names: Vec<_> = started["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap().to_owned())
        .collect();
    for actor in ["root", "adapters", "adapter-wms", "orders", "notifier"] {
        assert!(names.iter().any(|n| n == actor), "{actor} in {started}");
    }

    assert!(app.runtime.control().crash_adapter(System::Wms));
    let path = "/api/telemetry/events?actor=adapter-wms";
    let restarted = periodic_check(
        || async {
            kinds(&get(&app, &admin, path).await.1)
                .first()
                .map(String::as_str)
                == Some("restarted")
        },
        WAIT,
    )
    .await;
    let (_, page) = get(&app, &admin, path).await;
    assert!(restarted, "{page}");
    assert_eq!(
        kinds(&page),
        ["restarted", "restarting", "failed", "started"]
    );
    let failed = &page["events"][2];
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("fault injected into the wms adapter"),
        "the panic message is the reason: {failed}"
    );
    assert!(!failed["node"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed["at"].as_str().is_some(), "{failed}");

    let (_, only_failures) = get(
        &app,
        &admin,
        "/api/telemetry/events?actor=adapter&kind=failed",
    )
    .await;
    assert_eq!(kinds(&only_failures), ["failed"]);

    let (_, first) = get(&app, &admin, &format!("{path}&limit=2")).await;
    assert_eq!(kinds(&first), ["restarted", "restarting"]);
    let before = first["nextBefore"].as_u64().expect("a next page");
    let (_, second) = get(&app, &admin, &format!("{path}&limit=2&before={before}")).await;
    assert_eq!(kinds(&second), ["failed", "started"]);
    assert!(second.get("nextBefore").is_none(), "{second}");

    let (status, _) = get(&app, &admin, "/api/telemetry/events?kind=exploded").await;
    assert_eq!(status, 400);
    app.runtime.shutdown().await;
}

async fn metrics(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test]
async fn mailboxes_show_depth_rate_and_wait_per_family() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    // The notifier hears of updates only while someone on the node watches.
    let (_watching, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws?token={client}",
        app.runtime.http_addr
    ))
    .await
    .expect("the WebSocket opens");
    let app = std::sync::Arc::new(app);
    // Orders keep flowing while the figures are read: they are over the last seconds.
    let feeder = {
        let (app, client) = (app.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                app.place(&client).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let family = |view: &Value, name: &str| {
        view["families"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["family"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let counted = periodic_check(
        || async {
            let (_, view) = get(&app, &admin, "/api/telemetry/mailboxes").await;
            ["adapters", "orders", "notifier", "bridges"]
                .iter()
                .all(|name| {
                    let f = family(&view, name);
                    f["perSecond"].as_f64() > Some(0.0) && f["waitP99Ms"].is_number()
                })
        },
        WAIT,
    )
    .await;
    let (_, view) = get(&app, &admin, "/api/telemetry/mailboxes").await;
    feeder.abort();
    assert!(counted, "{view}");
    assert_eq!(view["timing"], true);
    for name in ["adapters", "orders", "notifier", "bridges"] {
        let f = family(&view, name);
        assert!(f["handled"].as_u64() > Some(0), "{name}: {view}");
        assert!(f["depth"].is_u64(), "{name}: {view}");
        let (p50, p99) = (f["waitP50Ms"].as_f64(), f["waitP99Ms"].as_f64());
        assert!(p50 <= p99, "{name}: {view}");
    }
    let adapters = family(&view, "adapters");
    let members: Vec<_> = adapters["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["actor"].as_str().unwrap())
        .collect();
    assert_eq!(members.len(), 3, "{adapters}");
    assert!(members.contains(&"adapter-wms"), "{adapters}");

    let exposition = metrics(&app).await;
    for series in [
        "swift_mailbox_wait_seconds_bucket{family=\"orders\",actor=\"orders\",le=",
        "swift_mailbox_messages_total{family=\"bridges\",actor=\"bridge-orders\"}",
        "swift_mailbox_depth{family=\"adapters\",actor=\"adapter-cms\"}",
        "swift_order_journey_seconds_bucket{status=\"READY_FOR_DELIVERY\",le=",
        "swift_step_outcomes_total{system=\"wms\",operation=\"wms.reserve\",outcome=\"success\"}",
    ] {
        assert!(exposition.contains(series), "{series} in\n{exposition}");
    }
}

#[tokio::test]
async fn one_orders_actor_can_be_looked_up() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Ros].knobs().update(|k| k.outage = true);
    let order_id = app.place(&client).await;
    let path = format!("/api/telemetry/orders/{order_id}");
    let (status, _) = get(&app, &client, &path).await;
    assert_eq!(status, 403);

    // Stuck on the route: retrying ros.optimize, with a timer for the next attempt.
    let stuck = periodic_check(
        || async {
            let (_, actor) = get(&app, &admin, &path).await;
            actor["live"] == true
                && (actor["inFlight"]["operation"] == "ros.optimize"
                    || actor["nextTimer"]["kind"] == "retry_backoff")
        },
        WAIT,
    )
    .await;
    let (_, actor) = get(&app, &admin, &path).await;
    assert!(stuck, "{actor}");
    assert_eq!(actor["status"], "INVENTORY_RESERVED", "{actor}");
    assert!(
        actor["shard"].as_u64() < actor["shards"].as_u64(),
        "{actor}"
    );
    assert!(!actor["node"].as_str().unwrap().is_empty(), "{actor}");
    assert!(
        ["awaiting_reply", "backing_off"].contains(&actor["phase"].as_str().unwrap()),
        "{actor}"
    );
    assert!(actor["nextTimer"]["dueAt"].is_string(), "{actor}");

    sims[System::Ros].knobs().update(|k| k.outage = false);
    app.wait_for_status(&client, &order_id, "READY_FOR_DELIVERY", WAIT)
        .await;
    let idle = periodic_check(
        || async { get(&app, &admin, &path).await.1["phase"] == "idle" },
        WAIT,
    )
    .await;
    let (_, actor) = get(&app, &admin, &path).await;
    assert!(idle, "{actor}");
    assert_eq!(actor["inFlight"], Value::Null, "{actor}");
    assert_eq!(actor["nextTimer"]["kind"], "idle_check", "{actor}");

    let (status, _) = get(
        &app,
        &admin,
        "/api/telemetry/orders/ORD-20260101-AAAAAAAAAA",
    )
    .await;
    assert_eq!(status, 404);
    app.runtime.shutdown().await;
}

/// Live order actors, from the supervision tree.
async fn live_order_actors(app: &TestApp, admin: &str) -> Option<u64> {
    fn find(node: &Value) -> Option<u64> {
        if node["name"] == "orders" {
            return node["count"].as_u64();
        }
        node["children"].as_array()?.iter().find_map(find)
    }
    find(&get(app, admin, "/api/telemetry/supervision").await.1)
}

/// `n` orders placed one after another, each once it is ready for delivery.
async fn ready_orders(app: &TestApp, client: &str, n: usize) -> Vec<String> {
    let mut orders = Vec::new();
    for _ in 0..n {
        let order_id = app.place(client).await;
        app.wait_for_status(client, &order_id, "READY_FOR_DELIVERY", WAIT)
            .await;
        orders.push(order_id);
    }
    orders
}

/// Cancels an order; the answer's status code.
async fn cancel(app: &TestApp, client: &str, order_id: &str) -> u16 {
    app.http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(client)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("cancel")
        .status()
        .as_u16()
}

#[tokio::test]
async fn order_actors_at_rest_are_passivated_once_idle_long_enough() {
    let app = spawn_app_with(serde_json::json!({"orders": {"passivate_after_secs": 1}})).await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    let orders = ready_orders(&app, &client, 3).await;
    // Each rests until the router's idle check, which stops all three.
    let passivated = periodic_check(
        || async { live_order_actors(&app, &admin).await == Some(0) },
        WAIT,
    )
    .await;
    assert!(passivated, "{:?}", live_order_actors(&app, &admin).await);
    for order_id in &orders {
        let path = format!("/api/telemetry/orders/{order_id}");
        let (_, actor) = get(&app, &admin, &path).await;
        assert_eq!(actor["live"], false, "{actor}");
    }
    // The next command rebuilds the actor from the store.
    assert_eq!(cancel(&app, &client, &orders[1]).await, 200);
    app.wait_for_status(&client, &orders[1], "CANCELLED", WAIT)
        .await;
    app.runtime.shutdown().await;
}

#[tokio::test]
async fn an_idle_time_beyond_any_date_keeps_resting_actors_without_failing() {
    let never = serde_json::json!({"orders": {"passivate_after_secs": u64::MAX}});
    let app = spawn_app_with(never).await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    for _ in 0..2 {
        let order_id = app.place(&client).await;
        app.wait_for_status(&client, &order_id, "READY_FOR_DELIVERY", WAIT)
            .await;
        let path = format!("/api/telemetry/orders/{order_id}");
        let resting = periodic_check(
            || async { get(&app, &admin, &path).await.1["phase"] == "idle" },
            WAIT,
        )
        .await;
        let (_, actor) = get(&app, &admin, &path).await;
        assert!(resting, "{actor}");
        assert_eq!(actor["live"], true, "{actor}");
        assert_eq!(actor["nextTimer"], Value::Null, "{actor}");
    }
    assert_eq!(live_order_actors(&app, &admin).await, Some(2));
    app.runtime.shutdown().await;
}

#[tokio::test]
async fn idle_order_actors_beyond_the_limit_are_passivated_and_revive_when_needed() {
    let app = spawn_app_with(serde_json::json!({"orders": {"max_idle_actors": 2}})).await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    let orders = ready_orders(&app, &client, 6).await;
    // Well before their 30 s idle check, only the two that rested last are kept.
    let bounded = periodic_check(
        || async { live_order_actors(&app, &admin).await == Some(2) },
        WAIT,
    )
    .await;
    assert!(bounded, "{:?}", live_order_actors(&app, &admin).await);
    let (_, first) = get(
        &app,
        &admin,
        &format!("/api/telemetry/orders/{}", orders[0]),
    )
    .await;
    assert_eq!(first["live"], false, "{first}");
    let (_, last) = get(
        &app,
        &admin,
        &format!("/api/telemetry/orders/{}", orders[5]),
    )
    .await;
    assert_eq!(last["live"], true, "{last}");

    // A passivated order is rebuilt from the store by its next command.
    assert_eq!(cancel(&app, &client, &orders[0]).await, 200);
    app.wait_for_status(&client, &orders[0], "CANCELLED", WAIT)
        .await;
    app.runtime.shutdown().await;
}
