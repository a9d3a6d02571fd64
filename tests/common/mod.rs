//! Test harness: starts a whole node (HTTP, supervisor tree, simulators) on random
//! ports with its own data directory, and speaks to it over real HTTP.
#![allow(dead_code)]

pub mod process;

use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use swiftlogistics::app::{self, Runtime};
use swiftlogistics::config::Settings;
use tempfile::TempDir;

pub const ADMIN_EMAIL: &str = "admin@swiftlogistics.local";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const DRIVER_EMAIL: &str = "driver@swiftlogistics.local";
pub const DRIVER_PASSWORD: &str = "driver-password-for-tests";

/// Polls `condition` until it holds or `timeout` passes (ractor's `periodic_check`).
pub async fn periodic_check<F, Fut>(mut condition: F, timeout: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Request budgets no test of another concern ever meets: the suites register and
/// log in many users from 127.0.0.1. (tests/security.rs checks the real defaults.)
pub fn generous_limits() -> Value {
    json!({
        "auth": {"login_per_minute": 1_000_000, "register_per_hour": 1_000_000,
                 "lockout_failures": 1_000_000},
        "rate_limit": {"anonymous_per_window": 1_000_000_000, "user_per_window": 1_000_000_000},
        "websocket": {"max_sessions_per_user": 100_000},
        "http": {"max_connections_per_client": 100_000, "max_connections": 100_000}
    })
}

/// `generous_limits` for a node started as a process.
pub fn generous_limits_env() -> Vec<(&'static str, String)> {
    [
        ("SWIFT__AUTH__LOGIN_PER_MINUTE", "1000000"),
        ("SWIFT__AUTH__REGISTER_PER_HOUR", "1000000"),
        ("SWIFT__AUTH__LOCKOUT_FAILURES", "1000000"),
        ("SWIFT__RATE_LIMIT__ANONYMOUS_PER_WINDOW", "1000000000"),
        ("SWIFT__RATE_LIMIT__USER_PER_WINDOW", "1000000000"),
        ("SWIFT__WEBSOCKET__MAX_SESSIONS_PER_USER", "100000"),
        ("SWIFT__HTTP__MAX_CONNECTIONS_PER_CLIENT", "100000"),
        ("SWIFT__HTTP__MAX_CONNECTIONS", "100000"),
    ]
    .into_iter()
    .map(|(key, value)| (key, value.to_owned()))
    .collect()
}

/// Settings for a test node: random ports, fast retries, generous request budgets,
/// given overrides on top.
pub fn test_settings(data: &std::path::Path, overrides: Value) -> Settings {
    let mut base = json!({
        "http": {"bind": "127.0.0.1:0"},
        "auth": {"admin_password": ADMIN_PASSWORD, "driver_password": DRIVER_PASSWORD},
        "store": {"path": data},
        "simulators": {"cms_bind": "127.0.0.1:0", "ros_bind": "127.0.0.1:0",
                        "wms_bind": "127.0.0.1:0", "control_bind": "127.0.0.1:0"},
        "saga": {"backoff_base_ms": 10, "backoff_max_ms": 100, "max_attempts": 4},
        "cms": {"timeout_ms": 2000}, "ros": {"timeout_ms": 2000}, "wms": {"timeout_ms": 2000}
    });
    merge(&mut base, generous_limits());
    merge(&mut base, backend_overrides());
    merge(&mut base, overrides);
    Settings::defaults_with(base).expect("test settings are valid")
}

/// `SWIFT_TEST_BACKEND=real` runs the suite on MongoDB and RabbitMQ (URLs from
/// `MONGODB_URI` and `RABBITMQ_URL`), each test in its own database and bus namespace.
pub fn backend_overrides() -> Value {
    if std::env::var("SWIFT_TEST_BACKEND").as_deref() != Ok("real") {
        return json!({});
    }
    let required = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("SWIFT_TEST_BACKEND=real needs {name}"))
    };
    let isolation = format!("t{}", uuid::Uuid::new_v4().simple());
    json!({
        "store": {"kind": "mongo", "mongodb_uri": required("MONGODB_URI"), "database": isolation},
        // Few shards: every shard is a quorum queue each test's namespace creates.
        "bus": {"kind": "amqp", "rabbitmq_url": required("RABBITMQ_URL"), "namespace": isolation,
                "shards": 4}
    })
}

/// The environment variables that put a node started as a process on the same
/// backend as `backend_overrides`.
pub fn backend_env() -> Vec<(&'static str, String)> {
    let overrides = backend_overrides();
    let mut env = Vec::new();
    if let Some(store) = overrides.get("store") {
        env.push(("SWIFT__STORE__KIND", "mongo".to_owned()));
        env.push((
            "SWIFT__STORE__MONGODB_URI",
            store["mongodb_uri"].as_str().unwrap_or_default().to_owned(),
        ));
        env.push((
            "SWIFT__STORE__DATABASE",
            store["database"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    if let Some(bus) = overrides.get("bus") {
        env.push(("SWIFT__BUS__KIND", "amqp".to_owned()));
        env.push((
            "SWIFT__BUS__RABBITMQ_URL",
            bus["rabbitmq_url"].as_str().unwrap_or_default().to_owned(),
        ));
        env.push((
            "SWIFT__BUS__NAMESPACE",
            bus["namespace"].as_str().unwrap_or_default().to_owned(),
        ));
        env.push(("SWIFT__BUS__SHARDS", bus["shards"].to_string()));
    }
    env
}

pub fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overrides) => *base = overrides,
    }
}

pub struct TestApp {
    pub runtime: Runtime,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(json!({})).await
}

pub async fn spawn_app_with(overrides: Value) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = test_settings(dir.path(), overrides);
    let runtime = app::start(settings).await.expect("the node starts");
    let url = runtime.base_url();
    TestApp {
        runtime,
        url,
        http: reqwest::Client::new(),
        dir,
    }
}

/// A delivery order in the flat location form of seed 000 section 13.1.
pub fn order_body() -> Value {
    json!({
        "pickupLocation": {"lat": 40.7128, "lng": -74.0060, "address": "123 Main St"},
        "deliveryAddress": {"lat": 40.7589, "lng": -73.9851, "address": "456 Oak Ave"},
        "packageDetails": {"weight": 5.5, "description": "Electronics", "fragile": true}
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request");
        assert_eq!(response.status(), 200, "login of {email}");
        let body: Value = response.json().await.expect("login body");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    pub async fn driver_token(&self) -> String {
        self.login(DRIVER_EMAIL, DRIVER_PASSWORD).await
    }

    /// An admin assigns the order to the driver whose token this is: drivers may
    /// move only the orders assigned to them.
    pub async fn assign(&self, order_id: &str, driver_token: &str) {
        let driver: Value = self
            .http
            .get(self.url("/api/driver/status"))
            .bearer_auth(driver_token)
            .send()
            .await
            .expect("driver status")
            .json()
            .await
            .expect("driver status body");
        let response = self
            .http
            .post(self.url(&format!("/api/orders/{order_id}/assign")))
            .bearer_auth(self.admin_token().await)
            .json(&json!({"driverId": driver["driverId"]}))
            .send()
            .await
            .expect("assign request");
        assert_eq!(response.status(), 200, "assigning {order_id}");
    }

    /// Registers a fresh client and logs it in; returns (token, user id).
    pub async fn register_client(&self) -> (String, String) {
        let email = format!("client-{}@example.com", uuid::Uuid::new_v4());
        let body = self
            .register_and_login(&email, "correct-horse-battery")
            .await;
        (
            body["token"].as_str().expect("token").to_owned(),
            body["user"]["id"].as_str().expect("user id").to_owned(),
        )
    }

    /// Registers an account (202 whether or not it existed), then logs in; returns
    /// the login answer (`token`, `refreshToken`, `expiresIn`, `user`).
    pub async fn register_and_login(&self, email: &str, password: &str) -> Value {
        let response = self
            .http
            .post(self.url("/api/auth/register"))
            .json(&json!({"name": "Test Client", "email": email, "password": password}))
            .send()
            .await
            .expect("register request");
        assert_eq!(response.status(), 202, "registration of {email}");
        let response = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request");
        assert_eq!(response.status(), 200, "login of {email}");
        response.json().await.expect("login body")
    }

    pub async fn place_order(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/orders"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("order request")
    }

    /// Places the standard order and returns its id.
    pub async fn place(&self, token: &str) -> String {
        let response = self.place_order(token, &order_body()).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("order body");
        body["orderId"].as_str().expect("orderId").to_owned()
    }

    pub async fn order(&self, token: &str, order_id: &str) -> Value {
        self.http
            .get(self.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("get order")
            .json()
            .await
            .expect("order json")
    }

    /// One system's entry (`cms`, `wms`, `ros`) of `GET /api/services/health`.
    pub async fn service_health(&self, admin: &str, service: &str) -> Value {
        let body: Value = self
            .http
            .get(self.url("/api/services/health"))
            .bearer_auth(admin)
            .send()
            .await
            .expect("get service health")
            .json()
            .await
            .expect("service health json");
        body["services"]
            .as_array()
            .and_then(|services| services.iter().find(|s| s["service"] == service))
            .cloned()
            .unwrap_or_else(|| panic!("no {service} in {body}"))
    }

    pub async fn status_of(&self, token: &str, order_id: &str) -> String {
        self.order(token, order_id).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the order reaches `status`; panics with the last status seen.
    pub async fn wait_for_status(
        &self,
        token: &str,
        order_id: &str,
        status: &str,
        timeout: Duration,
    ) {
        let reached = periodic_check(
            || async { self.status_of(token, order_id).await == status },
            timeout,
        )
        .await;
        assert!(
            reached,
            "order {order_id} did not reach {status}; it is {}",
            self.status_of(token, order_id).await
        );
    }
}
