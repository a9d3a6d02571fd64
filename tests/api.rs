//! The HTTP API of DESIGN section 5, end to end: a whole node (embedded store, local
//! bus, in-process simulators, actor tree) on loopback, driven over real HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use swiftlogistics::app::{Runtime, start};
use swiftlogistics::auth::hash_password;
use swiftlogistics::config::Settings;
use swiftlogistics::domain::{Email, Role, User, UserId};
use tempfile::TempDir;

mod common;

const ADMIN_EMAIL: &str = "admin@swiftlogistics.local";
const ADMIN_PASSWORD: &str = "admin-password-for-tests";
const DRIVER_EMAIL: &str = "driver@swiftlogistics.local";
const DRIVER_PASSWORD: &str = "driver-password-for-tests";
/// Longest any order may take to settle in these tests.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

struct Node {
    runtime: Runtime,
    base: String,
    http: Client,
    _data: TempDir,
}

async fn node() -> Node {
    let data = tempfile::tempdir().unwrap();
    let mut overrides = common::generous_limits();
    common::merge(
        &mut overrides,
        json!({
            "http": {"bind": "127.0.0.1:0", "max_body_bytes": 16384},
            "store": {"path": data.path()},
            "auth": {"admin_password": ADMIN_PASSWORD, "driver_password": DRIVER_PASSWORD},
            "simulators": {
                "cms_bind": "127.0.0.1:0", "ros_bind": "127.0.0.1:0",
                "wms_bind": "127.0.0.1:0", "control_bind": "127.0.0.1:0"
            },
        }),
    );
    let settings = Settings::defaults_with(overrides).unwrap();
    let runtime = start(settings).await.unwrap();
    let base = runtime.base_url();
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Node {
        runtime,
        base,
        http,
        _data: data,
    }
}

async fn json_of(response: Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, headers, body)
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        json_of(request.send().await.unwrap()).await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call(Method::GET, path, Some(token), None).await;
        (status, body)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self.call(Method::POST, path, Some(token), Some(body)).await;
        (status, body)
    }

    /// Registers (202 whether the address is new or not), then logs in.
    async fn register(&self, email: &str) -> (String, String) {
        let (status, _, body) = self
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"name": "Kamal Perera", "email": email, "password": "a-good-password", "phone": "+94 77 123 4567"})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let (status, _, body) = self
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"email": email, "password": "a-good-password"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["user"]["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn login(&self, email: &str, password: &str) -> String {
        let (status, _, body) = self
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// An admin gives the order to a driver: 200, with the assignment in the answer.
    async fn assign(&self, admin: &str, order_id: &str, driver_id: &Value) {
        let (status, body) = self
            .post(
                &format!("/api/orders/{order_id}/assign"),
                admin,
                json!({"driverId": driver_id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(&body["driverId"], driver_id, "{body}");
    }

    async fn place(&self, token: &str) -> String {
        let (status, body) = self.post("/api/orders", token, nested_order()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["orderId"].as_str().unwrap().to_owned()
    }

    /// Polls the status view until `done` holds; panics with the last view otherwise.
    async fn wait_for(&self, token: &str, order_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
        loop {
            let (status, view) = self
                .get(&format!("/api/orders/{order_id}/status"), token)
                .await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} did not get there: {view}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_for_status(&self, token: &str, order_id: &str, wanted: &str) -> Value {
        self.wait_for(token, order_id, |v| v["status"] == wanted)
            .await
    }

    async fn stop(self) {
        self.runtime.shutdown().await;
    }
}

fn nested_order() -> Value {
    json!({
        "customerId": "usr_someone_else",
        "pickupLocation": {"address": "123 Main Street, Colombo", "coordinates": {"lat": 6.9271, "lng": 79.8612}},
        "deliveryAddress": {"address": "456 Galle Road, Dehiwala", "coordinates": {"lat": 6.8511, "lng": 79.8659}},
        "packageDetails": {"weight": 5.5, "dimensions": "30x20x10", "description": "Electronics", "fragile": true},
        "scheduledPickupTime": "2026-02-05T09:00:00Z",
        "specialInstructions": "Handle with care, ring doorbell"
    })
}

fn flat_order() -> Value {
    json!({
        "pickupLocation": {"lat": 40.7128, "lng": -74.006, "address": "123 Main St"},
        "deliveryAddress": {"lat": 40.7589, "lng": -73.9851, "address": "456 Oak Ave"},
        "packageDetails": {"weight": 1, "dimensions": {"length": 30, "width": 20, "height": 10}}
    })
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error shape: {body}"))
}

#[tokio::test]
async fn register_and_login_issue_tokens_with_the_seed_claims() {
    let node = node().await;
    let (token, user_id) = node.register("Kamal@Example.com").await;
    let c = claims(&token);
    assert_eq!(c["userId"], user_id.as_str());
    assert_eq!(c["email"], "kamal@example.com");
    assert_eq!(c["role"], "client");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        15 * 60
    );
    let mut names: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aud", "email", "exp", "iat", "iss", "jti", "nbf", "role", "sid", "userId"
        ]
    );

    // A taken address is answered exactly like a new one.
    let again =
        json!({"name": "Other", "email": "kamal@example.com", "password": "another-password"});
    let (status, _, taken) = node
        .call(Method::POST, "/api/auth/register", None, Some(again))
        .await;
    let fresh =
        json!({"name": "Other", "email": "fresh@example.com", "password": "another-password"});
    let (fresh_status, _, fresh) = node
        .call(Method::POST, "/api/auth/register", None, Some(fresh))
        .await;
    assert_eq!(
        (status, fresh_status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_eq!(taken["message"], fresh["message"]);

    let bad = json!({"name": "K", "email": "nope", "password": "short"});
    let (status, _, body) = node
        .call(Method::POST, "/api/auth/register", None, Some(bad))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email", "password"]);

    let login = json!({"email": "KAMAL@example.com", "password": "a-good-password"});
    let (status, _, body) = node
        .call(Method::POST, "/api/auth/login", None, Some(login))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["user"],
        json!({"id": user_id, "email": "kamal@example.com", "role": "client", "name": "Kamal Perera"})
    );
    assert_eq!(body["expiresIn"], 900);
    assert!(body["refreshToken"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        claims(body["token"].as_str().unwrap())["userId"],
        user_id.as_str()
    );

    for (email, password) in [
        ("kamal@example.com", "wrong-password"),
        ("nobody@example.com", "a-good-password"),
    ] {
        let (status, headers, body) = node
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "UNAUTHORIZED");
        assert_eq!(
            body["error"]["message"], "invalid e-mail or password",
            "no hint which one was wrong"
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
    }

    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(claims(&admin)["role"], "admin");
    node.stop().await;
}

#[tokio::test]
async fn orders_are_accepted_in_both_location_forms_for_the_caller() {
    let node = node().await;
    let (token, user_id) = node.register("nimal@example.com").await;
    for body in [nested_order(), flat_order()] {
        let (status, headers, accepted) = node
            .call(Method::POST, "/api/orders", Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let order_id = accepted["orderId"].as_str().unwrap();
        assert!(order_id.starts_with("ORD-"), "{order_id}");
        assert_eq!(accepted["status"], "RECEIVED");
        assert_eq!(accepted["message"], "Order received and being processed");
        assert_eq!(
            accepted["customerId"],
            user_id.as_str(),
            "the body's customerId is ignored"
        );
        assert!(accepted["createdAt"].is_string());
        assert_eq!(
            headers["location"],
            format!("/api/orders/{order_id}").as_str()
        );
    }
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, _) = node.post("/api/orders", &admin, flat_order()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    node.stop().await;
}

#[tokio::test]
async fn bad_orders_are_refused_with_the_error_shape() {
    let node = node().await;
    let (token, _) = node.register("sunil@example.com").await;
    let invalid = json!({
        "pickupLocation": {"lat": 999, "lng": 180},
        "deliveryAddress": {"address": "x", "coordinates": {"lat": 40.7, "lng": -200}},
        "packageDetails": {"weight": -5}
    });
    let (status, body) = node.post("/api/orders", &token, invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), "VALIDATION_FAILED");
    let fields: Vec<_> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "pickupLocation.lat",
            "deliveryAddress.coordinates.lng",
            "packageDetails.weight"
        ]
    );

    let broken = node
        .http
        .post(node.url("/api/orders"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"pickupLocation\": ")
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(broken).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );

    let untyped = node
        .http
        .post(node.url("/api/orders"))
        .bearer_auth(&token)
        .body(flat_order().to_string())
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(untyped).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );

    let huge = json!({"specialInstructions": "x".repeat(20_000)});
    let (status, body) = node.post("/api/orders", &token, huge).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );

    let bad_key = node
        .http
        .post(node.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "has spaces in it")
        .json(&flat_order())
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(bad_key).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );
    node.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replay_returns_the_same_order() {
    let node = node().await;
    let (token, _) = node.register("ruwan@example.com").await;
    let send = |key: &'static str, token: String| {
        let request = node
            .http
            .post(node.url("/api/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&flat_order());
        async move { json_of(request.send().await.unwrap()).await }
    };
    let (first_status, _, first) = send("checkout-7f3a", token.clone()).await;
    assert_eq!(first_status, StatusCode::ACCEPTED);
    let (again_status, headers, again) = send("checkout-7f3a", token.clone()).await;
    assert_eq!(again_status, StatusCode::OK, "{again}");
    assert_eq!(again["orderId"], first["orderId"]);
    assert_eq!(again["createdAt"], first["createdAt"]);
    assert_eq!(headers["idempotency-replayed"], "true");

    let (_, _, other) = send("checkout-8b1c", token.clone()).await;
    assert_ne!(other["orderId"], first["orderId"]);
    // Keys belong to a customer: someone else's identical key is a new order.
    let (stranger, _) = node.register("stranger@example.com").await;
    let (status, _, theirs) = send("checkout-7f3a", stranger).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(theirs["orderId"], first["orderId"]);

    // The same key with another body is refused, and creates nothing.
    let mut heavier = flat_order();
    heavier["packageDetails"]["weight"] = json!(99);
    let reused = node
        .http
        .post(node.url("/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "checkout-7f3a")
        .json(&heavier)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(reused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "IDEMPOTENCY_KEY_REUSED", "{body}");

    let (_, list) = node.get("/api/orders", &token).await;
    assert_eq!(
        list["orders"].as_array().unwrap().len(),
        2,
        "the replay and the refused reuse created nothing"
    );
    node.stop().await;
}

#[tokio::test]
async fn other_customers_orders_do_not_exist_for_you() {
    let node = node().await;
    let (owner, _) = node.register("owner@example.com").await;
    let (other, _) = node.register("other@example.com").await;
    let order_id = node.place(&owner).await;

    for path in [
        format!("/api/orders/{order_id}"),
        format!("/api/orders/{order_id}/status"),
    ] {
        let (status, body) = node.get(&path, &other).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "{path}"
        );
    }
    let (status, _) = node
        .post(&format!("/api/orders/{order_id}/cancel"), &other, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = node
        .get("/api/orders/ORD-20260101-NOSUCHORDER", &owner)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = node.get("/api/orders/not%20an%20id%7C", &owner).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = node.get("/api/orders", &other).await;
    assert_eq!(list["orders"], json!([]));

    let (status, mine) = node.get(&format!("/api/orders/{order_id}"), &owner).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["orderId"], order_id.as_str());
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, _) = node.get(&format!("/api/orders/{order_id}"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn orders_are_listed_newest_first_page_by_page() {
    let node = node().await;
    let (token, _) = node.register("pager@example.com").await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(node.place(&token).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/orders?limit=2&cursor={c}"),
            None => "/api/orders?limit=2".to_owned(),
        };
        let (status, page) = node.get(&path, &token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let orders = page["orders"].as_array().unwrap();
        assert!(orders.len() <= 2);
        seen.extend(
            orders
                .iter()
                .map(|o| o["orderId"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    // An id begins with its creation time, and orders created in the same
    // millisecond list by id: newest first is descending ids.
    placed.sort();
    placed.reverse();
    assert_eq!(seen, placed, "newest first, each order exactly once");

    for bad in [
        "/api/orders?cursor=bm90IGEgY3Vyc29y",
        "/api/orders?limit=0",
        "/api/orders?limit=101",
        "/api/orders?status=PROCESSING",
    ] {
        let (status, body) = node.get(bad, &token).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            "{bad}"
        );
    }
    let (status, filtered) = node.get("/api/orders?status=DELIVERED", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(filtered["orders"], json!([]));
    node.stop().await;
}

#[tokio::test]
async fn a_processed_order_shows_its_steps_and_history() {
    let node = node().await;
    let (token, _) = node.register("tracker@example.com").await;
    let order_id = node.place(&token).await;
    let view = node
        .wait_for_status(&token, &order_id, "READY_FOR_DELIVERY")
        .await;
    assert_eq!(view["orderId"], order_id.as_str());
    assert_eq!(view["processing"]["currentStage"], "COMPLETED");
    assert_eq!(
        view["processing"]["progress"],
        json!({"completed": 3, "total": 3, "percentage": 100})
    );
    let steps = view["steps"].as_array().unwrap();
    let names: Vec<_> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["CMS_VERIFICATION", "WMS_REGISTRATION", "ROS_OPTIMIZATION"]
    );
    for step in steps {
        assert_eq!(step["status"], "COMPLETED");
        assert!(
            step["name"].is_string() && step["timestamp"].is_string(),
            "{step}"
        );
    }

    let (status, order) = node.get(&format!("/api/orders/{order_id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        order["integrationStatus"],
        json!({"cms": "COMPLETED", "wms": "COMPLETED", "ros": "COMPLETED"})
    );
    assert!(order["route"]["waypoints"].is_array());
    assert!(order["warehouse"]["warehouse"].is_string());
    assert_eq!(order["packageDetails"]["weight"], 5.5);
    let history: Vec<_> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let statuses: Vec<_> = history.iter().map(|(_, s)| s.as_str()).collect();
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
    assert!(
        history
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as u64 + 1)
    );
    node.stop().await;
}

#[tokio::test]
async fn cancel_compensates_until_the_parcel_leaves_with_a_driver() {
    let node = node().await;
    let (token, _) = node.register("canceller@example.com").await;
    let driver = node.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;

    let early = node.place(&token).await;
    let (status, body) = node
        .post(&format!("/api/orders/{early}/cancel"), &token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        ["COMPENSATING", "CANCELLED"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    let view = node.wait_for_status(&token, &early, "CANCELLED").await;
    assert!(
        view["failureReason"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    let (status, body) = node
        .post(&format!("/api/orders/{early}/cancel"), &token, json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "CONFLICT")
    );

    let late = node.place(&token).await;
    node.wait_for_status(&token, &late, "READY_FOR_DELIVERY")
        .await;
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    node.assign(&admin, &late, &claims(&driver)["userId"]).await;
    let delivery = format!("/api/orders/{late}/delivery");
    let (status, body) = node
        .post(&delivery, &driver, json!({"status": "DELIVERED"}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "cannot skip OUT_FOR_DELIVERY: {body}"
    );
    let (status, body) = node
        .post(&delivery, &driver, json!({"status": "OUT_FOR_DELIVERY"}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("OUT_FOR_DELIVERY")),
        "{body}"
    );
    let (status, body) = node
        .post(&format!("/api/orders/{late}/cancel"), &token, json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "CONFLICT")
    );
    let (status, body) = node
        .post(&delivery, &driver, json!({"status": "CANCELLED"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "status");
    let (status, body) = node
        .post(&delivery, &driver, json!({"status": "DELIVERED"}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("DELIVERED"))
    );
    let (_, order) = node.get(&format!("/api/orders/{late}"), &token).await;
    assert_eq!(order["status"], "DELIVERED");
    assert_eq!(order["driverId"], claims(&driver)["userId"]);
    node.stop().await;
}

#[tokio::test]
async fn roles_decide_who_may_do_what() {
    let node = node().await;
    let (client, _) = node.register("client@example.com").await;
    let driver = node.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    let (status, headers, body) = node.call(Method::GET, "/api/orders", None, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = node
        .call(Method::GET, "/api/orders", Some("not.a.jwt"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let forged = format!("{}x", &client[..client.len() - 1]);
    let (status, _, _) = node
        .call(Method::GET, "/api/orders", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let forbidden = [
        (
            Method::POST,
            "/api/orders",
            driver.as_str(),
            Some(flat_order()),
        ),
        (
            Method::POST,
            "/api/orders/ORD-20260101-X/delivery",
            client.as_str(),
            Some(json!({"status": "DELIVERED"})),
        ),
        (Method::GET, "/api/services/health", client.as_str(), None),
        (Method::GET, "/api/services/health", driver.as_str(), None),
        (
            Method::POST,
            "/api/services/cms/recover",
            client.as_str(),
            None,
        ),
        (
            Method::GET,
            "/api/telemetry/supervision",
            driver.as_str(),
            None,
        ),
        (Method::GET, "/api/driver/location", client.as_str(), None),
        (
            Method::POST,
            "/api/driver/location",
            admin.as_str(),
            Some(json!({"lat": 1, "lng": 2})),
        ),
    ];
    for (method, path, token, body) in forbidden {
        let (status, _, response) = node.call(method.clone(), path, Some(token), body).await;
        assert_eq!(
            (status, error_code(&response)),
            (StatusCode::FORBIDDEN, "FORBIDDEN"),
            "{method} {path}"
        );
    }

    let (status, health) = node.get("/api/services/health", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let services: Vec<_> = health["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["cms", "wms", "ros"]);
    assert_eq!(health["services"][0]["circuit"], "CLOSED");
    let (status, body) = node
        .post("/api/services/wms/recover", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"]["circuit"], "CLOSED");
    let (status, _) = node
        .post("/api/services/billing/recover", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, tree) = node.get("/api/telemetry/supervision", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(tree["children"].is_array(), "{tree}");
    node.stop().await;
}

/// A second driver account, made the way an operator would (straight into the store;
/// registration only ever makes clients), and logged in over the API.
async fn another_driver(node: &Node) -> String {
    let email = "second.driver@swiftlogistics.local";
    let password = "second-driver-password";
    let user = User {
        id: UserId::generate(),
        name: "Second Driver".into(),
        email: Email::parse(email).unwrap(),
        role: Role::Driver,
        password_hash: hash_password(password.into()).await.unwrap(),
        phone: None,
        company: None,
        created_at: chrono::Utc::now(),
    };
    node.runtime.context.store.insert_user(&user).await.unwrap();
    node.login(email, password).await
}

/// Issue 9 item 5: a driver acts only on the orders an admin assigned to them; any
/// other order answers 404 as if it did not exist (ids reveal nothing), and admins
/// keep full access.
#[tokio::test]
async fn drivers_act_only_on_orders_assigned_to_them() {
    let node = node().await;
    let (client, client_id) = node.register("shipper@example.com").await;
    let driver = node.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let other = another_driver(&node).await;
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (driver_id, other_id) = (
        claims(&driver)["userId"].clone(),
        claims(&other)["userId"].clone(),
    );
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(node.place(&client).await);
    }
    for order in &orders {
        node.wait_for_status(&client, order, "READY_FOR_DELIVERY")
            .await;
    }
    let [mine, theirs, nobodys] = [&orders[0], &orders[1], &orders[2]];
    let out = json!({"status": "OUT_FOR_DELIVERY"});
    let delivery = |order: &str| format!("/api/orders/{order}/delivery");

    let (status, body) = node.post(&delivery(nobodys), &driver, out.clone()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "NOT_FOUND"),
        "unassigned"
    );

    // Only admins assign, and only to a driver's account.
    let assign = |order: &str| format!("/api/orders/{order}/assign");
    for token in [&client, &driver] {
        let (status, _) = node
            .post(&assign(mine), token, json!({"driverId": driver_id}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    for bad in [
        json!({"driverId": client_id}),
        json!({}),
        json!({"driverId": "usr_x\n$"}),
    ] {
        let (status, body) = node.post(&assign(mine), &admin, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], "driverId");
    }
    let (status, _) = node
        .post(
            &assign("ORD-20260101-NOSUCH"),
            &admin,
            json!({"driverId": driver_id}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    node.assign(&admin, mine, &driver_id).await;
    node.assign(&admin, mine, &driver_id).await; // the same again changes nothing
    node.assign(&admin, theirs, &other_id).await;

    let work = |token: &str| {
        let token = token.to_owned();
        let node = &node;
        async move {
            let (status, body) = node.get("/api/driver/orders", &token).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let ids = |list: &str| -> Vec<String> {
                body[list]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["orderId"].as_str().unwrap().to_owned())
                    .collect()
            };
            (ids("readyForPickup"), ids("carrying"))
        }
    };
    assert_eq!(work(&driver).await, (vec![mine.clone()], vec![]));
    assert_eq!(work(&other).await, (vec![theirs.clone()], vec![]));

    let (status, _) = node.post(&delivery(theirs), &driver, out.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another driver's order");
    let (_, theirs_now) = node.get(&format!("/api/orders/{theirs}"), &client).await;
    assert_eq!(theirs_now["status"], "READY_FOR_DELIVERY");
    assert_eq!(
        theirs_now["driverId"], other_id,
        "the order document shows its driver"
    );

    let (status, body) = node.post(&delivery(mine), &driver, out.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(work(&driver).await, (vec![], vec![mine.clone()]));
    let (status, _) = node
        .post(&assign(mine), &admin, json!({"driverId": other_id}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the parcel left with its driver"
    );
    let (status, _) = node
        .post(&delivery(mine), &other, json!({"status": "DELIVERED"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = node
        .post(&delivery(mine), &driver, json!({"status": "DELIVERED"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(work(&driver).await, (vec![], vec![]), "delivered is done");

    // Admins move any order, assigned or not; clients have no work list.
    let (status, body) = node.post(&delivery(nobodys), &admin, out).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = node.get("/api/driver/orders", &client).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    node.stop().await;
}

#[tokio::test]
async fn drivers_report_and_read_their_location() {
    let node = node().await;
    let driver = node.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let (status, _) = node.get("/api/driver/location", &driver).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, before) = node.get("/api/driver/status", &driver).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(before["status"], "offline");
    assert_eq!(before["email"], DRIVER_EMAIL);
    assert!(before["location"].is_null());

    let (status, body) = node
        .post(
            "/api/driver/location",
            &driver,
            json!({"lat": 95, "lng": "east"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["lat", "lng"]);

    let report = json!({"lat": 6.9271, "lng": 79.8612, "heading": 90, "speed": 35.5});
    let (status, stored) = node.post("/api/driver/location", &driver, report).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let (_, location) = node.get("/api/driver/location", &driver).await;
    assert_eq!(
        (location["lat"].as_f64(), location["speed"].as_f64()),
        (Some(6.9271), Some(35.5))
    );
    let (_, after) = node.get("/api/driver/status", &driver).await;
    assert_eq!(after["status"], "online");
    assert_eq!(after["driverId"], claims(&driver)["userId"]);
    assert_eq!(after["location"]["lng"], 79.8612);
    node.stop().await;
}

#[tokio::test]
async fn probes_metrics_and_unknown_paths() {
    let node = node().await;
    let (status, _, live) = node.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, live["status"].as_str()),
        (StatusCode::OK, Some("healthy"))
    );
    assert!(live["timestamp"].is_string() && live["service"].is_string());
    let (status, _, ready) = node.call(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["dependencies"], json!({"store": "up", "bus": "up"}));

    let (token, _) = node.register("metrics@example.com").await;
    node.place(&token).await;
    let response = node.http.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "swift_http_requests_total{",
        "route=\"/api/orders\"",
        "status=\"202\"",
        "swift_http_request_duration_seconds",
        "swift_orders{status=\"DELIVERED\"}",
        "swift_orders_in_flight",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }

    let (status, _, body) = node
        .call(Method::GET, "/api/nothing/here", None, None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
    let (status, _, body) = node
        .call(Method::DELETE, "/api/orders", Some(&token), None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    node.stop().await;
}

#[tokio::test]
async fn dead_letter_endpoints_answer_in_the_api_error_format() {
    let node = node().await;
    let admin = node.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, headers, body) = node
        .call(Method::GET, "/api/admin/dlq?limit=x", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(error_code(&body), "BAD_REQUEST", "{body}");

    let (status, body) = node
        .post("/api/admin/dlq/no_such_queue/redrive", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");
}
