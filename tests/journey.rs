//! The order journey of DESIGN section 4 end to end: real HTTP in, real SOAP, TCP and
//! REST out to the simulators, every branch of the saga driven by simulator knobs.

mod common;

use common::{periodic_check, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;
use swiftlogistics::domain::System;
use swiftlogistics::protocols::simulator::ControlledSimulator;

const JOURNEY: Duration = Duration::from_secs(20);

fn active(sim: &dyn ControlledSimulator, kind: &str) -> usize {
    sim.summary().active.get(kind).copied().unwrap_or_default()
}

#[tokio::test]
async fn an_order_travels_through_cms_wms_and_ros_to_ready_for_delivery() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;

    let order = app.order(&token, &order_id).await;
    assert_eq!(
        order["integrationStatus"],
        json!({"cms": "COMPLETED", "wms": "COMPLETED", "ros": "COMPLETED"})
    );
    assert!(order["route"]["routeId"].is_string(), "{order}");
    assert!(order["warehouse"]["pickingLocation"].is_string(), "{order}");
    let statuses: Vec<&str> = order["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        [
            "RECEIVED",
            "CMS_VALIDATED",
            "INVENTORY_RESERVED",
            "ROUTE_OPTIMIZED",
            "READY_FOR_DELIVERY"
        ]
    );
    let seqs: Vec<u64> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let sims = app.runtime.simulators.as_ref().unwrap();
    assert_eq!(active(&sims[System::Wms], "reservations"), 1);
    assert_eq!(active(&sims[System::Ros], "routes"), 1);
}

#[tokio::test]
async fn an_unknown_customer_fails_with_the_reason_and_nothing_to_undo() {
    let app = spawn_app().await;
    let (token, user_id) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Cms].knobs().update(|k| {
        k.refuse_customers.insert(user_id.clone());
    });
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
        .await;
    let order = app.order(&token, &order_id).await;
    assert!(
        order["failureReason"]
            .as_str()
            .unwrap()
            .contains("the customer could not be validated"),
        "{order}"
    );
    assert_eq!(order["integrationStatus"]["wms"], "PENDING");
    assert_eq!(sims[System::Wms].summary().effects, 0);
}

#[tokio::test]
async fn no_stock_compensates_the_customer_order_in_cms_and_fails() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Wms].knobs().update(|k| k.refuse_all = true);
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
        .await;
    let order = app.order(&token, &order_id).await;
    assert!(
        order["failureReason"]
            .as_str()
            .unwrap()
            .contains("the warehouse has no stock"),
        "{order}"
    );
    assert_eq!(order["integrationStatus"]["cms"], "COMPENSATED");
    assert_eq!(active(&sims[System::Cms], "cancelledOrders"), 1);
    assert_eq!(active(&sims[System::Wms], "reservations"), 0);
}

#[tokio::test]
async fn no_route_releases_the_reservation_then_cancels_in_cms() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Ros].knobs().update(|k| k.refuse_all = true);
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
        .await;
    let order = app.order(&token, &order_id).await;
    let statuses: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"FAILED"));
    assert!(statuses.contains(&"COMPENSATING"));
    // Reverse order: the WMS release is announced before the CMS cancellation.
    let messages: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let wms = messages
        .iter()
        .position(|m| m.starts_with("WMS compensated"))
        .expect("wms undone");
    let failed = messages.len() - 1;
    assert!(wms < failed, "{messages:?}");
    assert_eq!(active(&sims[System::Wms], "reservations"), 0);
    assert_eq!(active(&sims[System::Ros], "routes"), 0);
    assert_eq!(active(&sims[System::Cms], "cancelledOrders"), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_until_the_system_is_back() {
    let app = spawn_app_with(json!({
        "saga": {"max_attempts": 1000, "backoff_base_ms": 10, "backoff_max_ms": 50},
        "circuit": {"open_secs": 1}
    }))
    .await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Ros].knobs().update(|k| k.outage = true);
    let order_id = app.place(&token).await;
    let control = app.runtime.control();
    use swiftlogistics::actors::RuntimeControl;
    let failing = periodic_check(
        || async {
            control
                .services_health()
                .await
                .iter()
                .any(|h| h.service.as_str() == "ros" && h.total_failures >= 3)
        },
        JOURNEY,
    )
    .await;
    assert!(failing, "ROS calls should fail during the outage");
    assert_eq!(app.status_of(&token, &order_id).await, "INVENTORY_RESERVED");
    sims[System::Ros].knobs().update(|k| k.outage = false);
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    assert_eq!(active(&sims[System::Ros], "routes"), 1);
}

#[tokio::test]
async fn an_exhausted_retry_budget_compensates_and_fails_with_the_reason() {
    let app =
        spawn_app_with(json!({"saga": {"max_attempts": 3}, "circuit": {"open_secs": 1}})).await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Wms].knobs().update(|k| k.outage = true);
    let order_id = app.place(&token).await;
    // The reservation may have happened before the failures, so it is released as
    // part of the undo; that waits for the warehouse system to come back.
    app.wait_for_status(&token, &order_id, "COMPENSATING", JOURNEY)
        .await;
    sims[System::Wms].knobs().update(|k| k.outage = false);
    app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
        .await;
    let order = app.order(&token, &order_id).await;
    assert!(
        order["failureReason"]
            .as_str()
            .unwrap()
            .contains("the warehouse did not answer in time"),
        "{order}"
    );
    assert_eq!(active(&sims[System::Cms], "cancelledOrders"), 1);
    assert_eq!(active(&sims[System::Wms], "reservations"), 0);
}

#[tokio::test]
async fn cancel_before_delivery_undoes_every_step_and_ends_cancelled() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    let response = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_for_status(&token, &order_id, "CANCELLED", JOURNEY)
        .await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    assert_eq!(active(&sims[System::Wms], "reservations"), 0);
    assert_eq!(active(&sims[System::Ros], "routes"), 0);
    assert_eq!(active(&sims[System::Cms], "cancelledOrders"), 1);
    let again = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn a_cancel_during_a_slow_reservation_still_releases_it() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Wms].knobs().update(|k| k.latency_ms = 300);
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "CMS_VALIDATED", JOURNEY)
        .await;
    let response = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_for_status(&token, &order_id, "CANCELLED", JOURNEY)
        .await;
    let released = periodic_check(
        || async { active(&sims[System::Wms], "reservations") == 0 },
        JOURNEY,
    )
    .await;
    assert!(
        released,
        "the reservation made while cancelling must be released"
    );
}

#[tokio::test]
async fn drivers_take_ready_orders_out_and_deliver_them() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let driver = app.driver_token().await;
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    app.assign(&order_id, &driver).await;
    for status in ["OUT_FOR_DELIVERY", "DELIVERED"] {
        let response = app
            .http
            .post(app.url(&format!("/api/orders/{order_id}/delivery")))
            .bearer_auth(&driver)
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{status}");
        assert_eq!(app.status_of(&token, &order_id).await, status);
    }
    let cancel = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 409);
}

#[tokio::test]
async fn the_circuit_opens_after_three_failures_and_recover_closes_it() {
    let app = spawn_app_with(
        json!({"saga": {"max_attempts": 1000, "backoff_base_ms": 5, "backoff_max_ms": 20}}),
    )
    .await;
    let (token, _) = app.register_client().await;
    let admin = app.admin_token().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Cms].knobs().update(|k| k.outage = true);
    let order_id = app.place(&token).await;
    let opened = periodic_check(
        || async { app.service_health(&admin, "cms").await["circuit"] == "OPEN" },
        JOURNEY,
    )
    .await;
    assert!(opened, "{}", app.service_health(&admin, "cms").await);
    let cms = app.service_health(&admin, "cms").await;
    assert_eq!(cms["consecutiveFailures"], 3);
    // While open, the order waits instead of burning its retries.
    let parked = periodic_check(
        || async { app.service_health(&admin, "cms").await["waiting"] == 1 },
        JOURNEY,
    )
    .await;
    assert!(parked, "{}", app.service_health(&admin, "cms").await);
    sims[System::Cms].knobs().update(|k| k.outage = false);
    let recovered: Value = app
        .http
        .post(app.url("/api/services/cms/recover"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recovered["service"]["circuit"], "CLOSED", "{recovered}");
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;
}

#[tokio::test]
async fn a_panicking_adapter_is_restarted_and_orders_in_flight_complete() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let admin = app.admin_token().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Wms].knobs().update(|k| k.latency_ms = 200);
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(app.place(&token).await);
    }
    let wms_busy = periodic_check(
        || async {
            use swiftlogistics::actors::RuntimeControl;
            app.runtime
                .control()
                .services_health()
                .await
                .iter()
                .any(|h| h.service.as_str() == "wms" && h.in_flight > 0)
        },
        JOURNEY,
    )
    .await;
    assert!(wms_busy);
    assert!(
        app.runtime
            .control()
            .crash_adapter(swiftlogistics::domain::System::Wms)
    );
    for order_id in &orders {
        app.wait_for_status(&token, order_id, "READY_FOR_DELIVERY", JOURNEY)
            .await;
    }
    let tree: Value = app
        .http
        .get(app.url("/api/telemetry/supervision"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let adapters = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "adapters")
        .expect("adapters node")
        .clone();
    let wms = adapters["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "adapter-wms")
        .expect("wms node")
        .clone();
    assert_eq!(wms["restarts"], 1, "{tree}");
    assert_eq!(wms["status"], "running", "{tree}");
    assert_eq!(active(&sims[System::Wms], "reservations"), orders.len());
}

#[tokio::test]
async fn intake_answers_503_with_retry_after_when_in_flight_work_is_full() {
    let app = spawn_app_with(json!({"orders": {"max_in_flight": 3}})).await;
    let (token, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Cms].knobs().update(|k| k.latency_ms = 2000);
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..20 {
        let response = app.place_order(&token, &common::order_body()).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
        // Let the order's actor take its admission slot before the next request.
        let taken = accepted;
        periodic_check(
            || async { app.runtime.orders.admission().in_flight() >= taken.min(3) },
            JOURNEY,
        )
        .await;
    }
    let refused = refused.expect("intake must refuse once 3 orders are in flight");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(accepted, 3);
}
