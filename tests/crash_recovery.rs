//! Crash safety (issue 2, item 6): `kill -9` the node while hundreds of orders are in
//! flight; after a restart every accepted order exists, every one resumes and reaches
//! the end of its journey, and no external effect happened twice. The simulators run
//! in their own process so that they outlive the crash and keep their ledgers.

mod common;

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

use common::process::{field, start, start_node};

const ADMIN_PASSWORD: &str = common::ADMIN_PASSWORD;

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

#[tokio::test]
async fn kill_minus_nine_with_orders_in_flight_loses_nothing_and_repeats_nothing() {
    let (_sims, sims_line) = start(
        &["simulate"],
        &[
            ("SWIFT__SIMULATORS__CMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__ROS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__WMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__CONTROL_BIND", "127.0.0.1:0".to_owned()),
        ],
        "Simulators running",
    )
    .await;
    let control = field(&sims_line, "control API ");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Slow systems keep many orders mid-journey when the node dies.
    for system in ["cms", "wms", "ros"] {
        let response = http
            .put(format!("{control}/knobs/{system}"))
            .json(&json!({"latencyMs": 20}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    let data = tempfile::tempdir().unwrap();
    // One database and bus namespace for both lives of the node.
    let backend = common::backend_env();
    let mut node = start_node(data.path(), &sims_line, &backend).await;
    let registered = json(
        http.post(format!("{}/api/auth/register", node.url))
            .json(&json!({"name": "Crash Test", "email": "crash@example.com", "password": "correct-horse-battery"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = registered["token"].as_str().unwrap().to_owned();

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (http, url, token, accepted) = (
            http.clone(),
            node.url.clone(),
            token.clone(),
            accepted.clone(),
        );
        clients.push(tokio::spawn(async move {
            for _ in 0..20 {
                let body = json!({
                    "pickupLocation": {"lat": 40.7, "lng": -74.0},
                    "deliveryAddress": {"lat": 40.6, "lng": -73.9},
                    "packageDetails": {"weight": 1.0}
                });
                let Ok(response) = http
                    .post(format!("{url}/api/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != 202 {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                accepted
                    .lock()
                    .await
                    .push(body["orderId"].as_str().unwrap().to_owned());
            }
        }));
    }
    let enough = async {
        while accepted.lock().await.len() < 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), enough)
        .await
        .expect("300 orders accepted");
    node.child.start_kill().unwrap(); // SIGKILL: no shutdown code runs
    node.child.wait().await.unwrap();
    for client in clients {
        let _ = client.await;
    }
    let accepted = accepted.lock().await.clone();
    let routes_at_kill = json(
        http.get(format!("{control}/effects/ros"))
            .send()
            .await
            .unwrap(),
    )
    .await["effects"]
        .as_u64()
        .unwrap();
    assert!(
        (routes_at_kill as usize) < accepted.len(),
        "the kill must catch orders mid-journey ({routes_at_kill} of {} already routed)",
        accepted.len()
    );

    let node = start_node(data.path(), &sims_line, &backend).await;
    let admin = json(
        http.post(format!("{}/api/auth/login", node.url))
            .json(&json!({"email": "admin@swiftlogistics.local", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap(),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Every accepted order exists and reaches the end of its journey.
    for order_id in &accepted {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let response = http
                .get(format!("{}/api/orders/{order_id}", node.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "accepted order {order_id} was lost");
            let status = json(response).await["status"].as_str().unwrap().to_owned();
            if status == "READY_FOR_DELIVERY" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{order_id} stuck at {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The store may hold a few more orders than were answered 202 (persisted just
    // before the kill); they must have finished too.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{}/api/orders", node.url))
            .bearer_auth(&admin)
            .query(&[("limit", "100")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page = json(request.send().await.unwrap()).await;
        all.extend(page["orders"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(all.len() >= accepted.len());
    let stored = all.len();
    let finished = async {
        loop {
            let mut pending = 0;
            for order in &all {
                let id = order["orderId"].as_str().unwrap();
                let now = json(
                    http.get(format!("{}/api/orders/{id}", node.url))
                        .bearer_auth(&admin)
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                if now["status"] != "READY_FOR_DELIVERY" {
                    pending += 1;
                }
            }
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), finished)
        .await
        .expect("every stored order finished");

    // Exactly one effect per order in each system: one reservation, one route.
    for (system, kind) in [("wms", "reservations"), ("ros", "routes")] {
        let summary = json(
            http.get(format!("{control}/effects/{system}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(summary["active"][kind], stored, "{system}: {summary}");
        assert_eq!(summary["effects"], stored, "{system}: {summary}");
    }
    drop(node);
}
