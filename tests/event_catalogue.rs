//! Seed 000's event catalogue from a running node (issue 10, item 3): a consumer of
//! its own on `events_exchange` of a real broker sees every order's events, in the
//! order they happened, in the seed's envelope, carrying what the systems answered.
//! Runs with `SWIFT_TEST_BACKEND=real` (RabbitMQ at `RABBITMQ_URL`, in a namespace of
//! its own).

mod common;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_seed_consumer_follows_every_order_on_events_exchange() {
    if std::env::var("SWIFT_TEST_BACKEND").as_deref() != Ok("real") {
        eprintln!("skipped: runs with SWIFT_TEST_BACKEND=real (needs RabbitMQ)");
        return;
    }
    let url = std::env::var("RABBITMQ_URL").expect("SWIFT_TEST_BACKEND=real needs RABBITMQ_URL");
    let namespace = format!("ec{}", uuid::Uuid::new_v4().simple());
    let app = common::spawn_app_with(json!({"bus": {"namespace": namespace}})).await;

    // The seed's notification service: a queue of its own bound to everything.
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue")
        .name()
        .to_string();
    channel
        .queue_bind(
            queue.as_str().into(),
            format!("{namespace}.events_exchange").as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let (client, _) = app.register_client().await;
    let admin = app.admin_token().await;
    let login: Value = app
        .http
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": common::DRIVER_EMAIL, "password": common::DRIVER_PASSWORD}))
        .send()
        .await
        .expect("driver login")
        .json()
        .await
        .expect("login body");
    let driver = login["token"].as_str().expect("token").to_owned();
    let delivered = app.place(&client).await;
    app.wait_for_status(&client, &delivered, "READY_FOR_DELIVERY", WAIT)
        .await;
    let response = app
        .http
        .post(app.url(&format!("/api/orders/{delivered}/assign")))
        .bearer_auth(&admin)
        .json(&json!({"driverId": login["user"]["id"]}))
        .send()
        .await
        .expect("assign");
    assert!(
        response.status().is_success(),
        "assign: {}",
        response.status()
    );
    for status in ["OUT_FOR_DELIVERY", "DELIVERED"] {
        let response = app
            .http
            .post(app.url(&format!("/api/orders/{delivered}/delivery")))
            .bearer_auth(&driver)
            .json(&json!({"status": status}))
            .send()
            .await
            .expect("delivery");
        assert!(
            response.status().is_success(),
            "{status}: {}",
            response.status()
        );
    }
    let cancelled = app.place(&client).await;
    app.wait_for_status(&client, &cancelled, "READY_FOR_DELIVERY", WAIT)
        .await;
    let response = app
        .http
        .post(app.url(&format!("/api/orders/{cancelled}/cancel")))
        .bearer_auth(&client)
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    app.wait_for_status(&client, &cancelled, "CANCELLED", WAIT)
        .await;

    // One catalogue event per entry of each order's history, as seed 000 names it.
    let catalogue_name = |status: &str| match status {
        "RECEIVED" => ("order.created".to_owned(), "ORDER_CREATED"),
        "CMS_VALIDATED" => ("cms.success".to_owned(), "cms.success"),
        "INVENTORY_RESERVED" => ("wms.success".to_owned(), "wms.success"),
        "ROUTE_OPTIMIZED" => ("ros.success".to_owned(), "ros.success"),
        other => (format!("order.status.{other}"), "order.update"),
    };
    let mut expected = BTreeMap::new();
    for (order, end) in [(&delivered, "DELIVERED"), (&cancelled, "CANCELLED")] {
        let history = app.order(&client, order).await["history"]
            .as_array()
            .expect("history")
            .clone();
        let events: Vec<(String, &str, String)> = history
            .iter()
            .map(|event| {
                let status = event["status"].as_str().expect("status").to_owned();
                let (key, kind) = catalogue_name(&status);
                (key, kind, status)
            })
            .collect();
        let statuses: Vec<&str> = events.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            statuses[..5],
            [
                "RECEIVED",
                "CMS_VALIDATED",
                "INVENTORY_RESERVED",
                "ROUTE_OPTIMIZED",
                "READY_FOR_DELIVERY"
            ]
        );
        assert_eq!(statuses.last(), Some(&end));
        expected.insert(order.clone(), events);
    }
    let total: usize = expected.values().map(Vec::len).sum();

    // Everything published so far, grouped by order in arrival order.
    let mut seen: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + WAIT;
    while count < total {
        assert!(
            Instant::now() < deadline,
            "{count} of {total} events: {seen:?}"
        );
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        let Some(message) = got else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let envelope: Value = serde_json::from_slice(&message.delivery.data).expect("JSON");
        let order = envelope["data"]["orderId"]
            .as_str()
            .expect("data.orderId")
            .to_owned();
        seen.entry(order)
            .or_default()
            .push((message.delivery.routing_key.to_string(), envelope));
        count += 1;
    }

    for (order, events) in &expected {
        let got = &seen[order];
        let names: Vec<(String, &str, String)> = got
            .iter()
            .map(|(key, envelope)| {
                (
                    key.clone(),
                    envelope["type"].as_str().unwrap_or_default(),
                    envelope["data"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(&names, events, "{order}");
        for (seq, (_, envelope)) in got.iter().enumerate() {
            assert_eq!(envelope["data"]["seq"], seq + 1, "{envelope}");
            assert!(envelope["data"]["message"].is_string(), "{envelope}");
            let at = envelope["timestamp"].as_str().expect("timestamp");
            assert!(
                chrono::DateTime::parse_from_rfc3339(at).is_ok(),
                "{envelope}"
            );
        }
        let data = |kind: &str| &got.iter().find(|(_, e)| e["type"] == kind).expect(kind).1["data"];
        assert!(data("cms.success")["customerData"]["name"].is_string());
        assert_eq!(data("wms.success")["inventory"], "RESERVED");
        assert!(data("wms.success")["warehouse"].is_string());
        assert!(data("ros.success")["route"]["waypoints"].is_array());
        assert!(data("ros.success")["eta"].is_string());
    }
}
