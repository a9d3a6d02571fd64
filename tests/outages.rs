//! Outages (issue 3, item 4): the runtime keeps serving through a broker restart and a
//! MongoDB outage. `/ready` names the failing dependency, intake answers 503 while the
//! store is down, connections come back on their own, and every accepted order
//! finishes its journey with each external effect applied exactly once.
//!
//! Each test starts its own broker or database server (the outage must not hit other
//! tests sharing the usual ones), so they run only where the real backends can run:
//! with `RABBITMQ_URL` and `MONGODB_URI` set (`SWIFT_TEST_BACKEND=real`, or CI).

mod common;

use common::{TestApp, periodic_check, spawn_app_with};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use swiftlogistics::domain::System;
use swiftlogistics::protocols::simulator::ControlledSimulator;
use tempfile::TempDir;
use tokio::process::Command;
use tokio::sync::Mutex;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Simulator latency: long enough that orders are mid-journey when the outage hits.
const SYSTEM_LATENCY_MS: u64 = 20;
/// Generous: after an outage the node waits out its reconnect and retry backoffs.
const JOURNEYS_DONE: Duration = Duration::from_secs(150);

/// The real backends' URLs, or `None` (with a notice) where they are not configured.
/// Under CI a missing backend is a failure, not a skip.
fn real_backends(test: &str) -> Option<(String, String)> {
    init_logging();
    match (std::env::var("RABBITMQ_URL"), std::env::var("MONGODB_URI")) {
        (Ok(rabbitmq), Ok(mongodb)) => Some((rabbitmq, mongodb)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: CI=true needs RABBITMQ_URL and MONGODB_URI (scripts/start-*.sh)")
        }
        _ => {
            eprintln!(
                "skipping {test}: set RABBITMQ_URL and MONGODB_URI (SWIFT_TEST_BACKEND=real) to run it"
            );
            None
        }
    }
}

/// `RUST_LOG=swiftlogistics=debug` shows what the node did through the outage.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Runs `scripts/<name>` from the repository and returns its stdout; panics when it
/// fails or outlives `limit`.
async fn script(name: &str, args: &[&str], envs: &[(&str, String)], limit: Duration) -> String {
    let mut command = Command::new(format!("{REPO}/scripts/{name}"));
    command
        .args(args)
        .current_dir(REPO)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} took longer than {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The value of the last `NAME=value` line a start script printed.
fn printed(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= line in {stdout:?}"))
        .trim()
        .to_owned()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn accepts_connections(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// A RabbitMQ broker of this test's own, on its own port and state directory.
/// Dropping it kills the broker.
struct DedicatedBroker {
    port: u16,
    state: TempDir,
}

impl DedicatedBroker {
    async fn start() -> (Self, String) {
        // The script puts the broker's inter-node port at PORT + 20000: both must be free.
        let port = (0..50)
            .map(|_| 5690 + rand::random_range(0..2000u16))
            .find(|&p| port_is_free(p) && port_is_free(p + 20000))
            .expect("a free port pair for the dedicated broker");
        let broker = Self {
            port,
            state: tempfile::tempdir().expect("broker state dir"),
        };
        let url = printed(&broker.run("start").await, "RABBITMQ_URL");
        (broker, url)
    }

    async fn run(&self, command: &str) -> String {
        script(
            "start-rabbitmq.sh",
            &[command, &self.port.to_string()],
            &self.env(),
            Duration::from_secs(120),
        )
        .await
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "RABBITMQ_STATE_DIR",
            self.state.path().display().to_string(),
        )]
    }
}

impl Drop for DedicatedBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(format!("{REPO}/scripts/start-rabbitmq.sh"))
            .args(["kill", &self.port.to_string()])
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A SecantusDB server of this test's own whose data lives in a directory, so that it
/// survives a restart on the same port. Dropping it stops the server.
struct DedicatedMongo {
    port: u16,
    dir: TempDir,
}

impl DedicatedMongo {
    async fn start() -> (Self, String) {
        let dir = tempfile::tempdir().expect("database dir");
        let uri = printed(
            &script(
                "start-mongo.sh",
                &["start"],
                &Self::env_for(&dir, 0),
                Duration::from_secs(300),
            )
            .await,
            "MONGODB_URI",
        );
        let port = uri
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {uri}"));
        (Self { port, dir }, uri)
    }

    fn env_for(dir: &TempDir, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("SECANTUS_PORT", port.to_string()),
            (
                "SECANTUS_STORAGE",
                dir.path().join("data").display().to_string(),
            ),
            (
                "SECANTUS_STATE_DIR",
                dir.path().join("state").display().to_string(),
            ),
        ]
    }

    /// SIGTERM, and wait until the server is gone.
    async fn stop(&self) {
        let env = Self::env_for(&self.dir, self.port);
        script("start-mongo.sh", &["stop"], &env, Duration::from_secs(30)).await;
        assert!(
            !accepts_connections(self.port),
            "the database server still answers on {}",
            self.port
        );
    }

    /// Starts the server again on the same port and data directory.
    async fn restart(&self) {
        let env = Self::env_for(&self.dir, self.port);
        script("start-mongo.sh", &["start"], &env, Duration::from_secs(60)).await;
    }
}

impl Drop for DedicatedMongo {
    fn drop(&mut self) {
        let _ = std::process::Command::new(format!("{REPO}/scripts/start-mongo.sh"))
            .arg("stop")
            .envs(Self::env_for(&self.dir, self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Clients placing orders at bounded concurrency while the outage happens. Every
/// answer must be a 202 or, for as long as the node cannot take the order, a 503
/// with Retry-After; anything else is recorded as unexpected.
#[derive(Default)]
struct Load {
    accepted: Mutex<Vec<String>>,
    accepted_count: AtomicUsize,
    unavailable: AtomicUsize,
    unexpected: Mutex<Vec<String>>,
}

impl Load {
    fn start(
        app: &TestApp,
        token: &str,
        attempts: usize,
        clients: usize,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Self::default());
        let next = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let tasks = (0..clients)
            .map(|_| {
                let (load, next, http) = (load.clone(), next.clone(), http.clone());
                let (url, token) = (app.url("/api/orders"), token.to_owned());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < attempts {
                        load.place(&http, &url, &token).await;
                    }
                })
            })
            .collect();
        (load, tasks)
    }

    async fn place(&self, http: &reqwest::Client, url: &str, token: &str) {
        let response = match http
            .post(url)
            .bearer_auth(token)
            .json(&common::order_body())
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                self.unexpected.lock().await.push(format!("transport: {e}"));
                return;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match (status, retry_after) {
            (202, _) => {
                let id = body["orderId"].as_str().unwrap_or_default().to_owned();
                self.accepted.lock().await.push(id);
                self.accepted_count.fetch_add(1, Ordering::Relaxed);
            }
            (503, Some(secs)) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                // As a well-behaved client would (bounded, to keep the test short).
                tokio::time::sleep(Duration::from_secs(secs.min(1))).await;
            }
            _ => self
                .unexpected
                .lock()
                .await
                .push(format!("{status} (Retry-After {retry_after:?}): {body}")),
        }
    }

    fn accepted_so_far(&self) -> usize {
        self.accepted_count.load(Ordering::Relaxed)
    }

    async fn wait_until_accepted(&self, count: usize, limit: Duration) {
        let reached = periodic_check(|| async { self.accepted_so_far() >= count }, limit).await;
        assert!(
            reached,
            "only {} orders accepted in {limit:?}; unexpected answers: {:?}",
            self.accepted_so_far(),
            self.unexpected.lock().await
        );
    }
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    match app.http.get(app.url("/ready")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"transport": e.to_string()})),
    }
}

/// Polls `/ready` until `dependency` reports `state`; returns the body seen then.
async fn wait_for_dependency(app: &TestApp, dependency: &str, state: &str) -> (u16, Value) {
    let seen = Mutex::new((0, Value::Null));
    let reached = periodic_check(
        || async {
            let answer = readiness(app).await;
            let hit = answer.1["dependencies"][dependency] == state;
            *seen.lock().await = answer;
            hit
        },
        Duration::from_secs(30),
    )
    .await;
    let seen = seen.into_inner();
    assert!(
        reached,
        "/ready never reported {dependency} {state}: {seen:?}"
    );
    seen
}

/// Every order in the store, as (id, status), read page by page as an admin; `None`
/// while the node answers 503 (its store connections still recovering: a client
/// retries after Retry-After).
async fn stored_orders(app: &TestApp, admin: &str) -> Option<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = app
            .http
            .get(app.url("/api/orders"))
            .bearer_auth(admin)
            .query(&[("limit", "100")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let response = request.send().await.expect("list orders");
        if response.status() == 503 {
            return None;
        }
        assert_eq!(response.status(), 200, "listing orders after the outage");
        let page: Value = response.json().await.expect("order page");
        for order in page["orders"].as_array().expect("orders") {
            all.push((
                order["orderId"].as_str().unwrap_or_default().to_owned(),
                order["status"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Some(all),
        }
    }
}

/// Waits until every stored order is READY_FOR_DELIVERY, then checks that none of the
/// accepted ones is missing and that the warehouse and route systems applied exactly
/// one effect per order. Returns the number of stored orders.
async fn assert_every_order_finished_once(app: &TestApp, accepted: &[String]) -> usize {
    let admin = app.admin_token().await;
    let deadline = Instant::now() + JOURNEYS_DONE;
    let stored = loop {
        let Some(stored) = stored_orders(app, &admin).await else {
            assert!(
                Instant::now() < deadline,
                "listing orders answered 503 until {JOURNEYS_DONE:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut by_status: HashMap<&str, usize> = HashMap::new();
        for (_, status) in &stored {
            *by_status.entry(status.as_str()).or_default() += 1;
        }
        if by_status.get("READY_FOR_DELIVERY") == Some(&stored.len()) {
            break stored;
        }
        if let Some((id, _)) = stored.iter().find(|(_, s)| s == "FAILED") {
            let order = app.order(&admin, id).await;
            panic!(
                "orders failed instead of finishing ({by_status:?}); {id}: {}",
                order["failureReason"]
            );
        }
        if Instant::now() >= deadline {
            let stuck: Vec<_> = stored
                .iter()
                .filter(|(_, s)| s != "READY_FOR_DELIVERY")
                .take(5)
                .map(|(id, s)| {
                    let answer = if accepted.contains(id) {
                        "202"
                    } else {
                        "no 202"
                    };
                    format!("{id} {s} ({answer})")
                })
                .collect();
            panic!("orders did not all finish in {JOURNEYS_DONE:?}: {by_status:?}; e.g. {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ids: HashSet<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "accepted orders lost: {lost:?}");
    // Orders whose intake failed after the write may exist without a 202; they must
    // have finished like the rest (checked above) and are counted in the effects.
    assert!(stored.len() >= accepted.len());

    let sims = app
        .runtime
        .simulators
        .as_ref()
        .expect("in-process simulators");
    let systems: [(&str, &dyn ControlledSimulator, &str); 2] = [
        ("wms", &sims[System::Wms], "reservations"),
        ("ros", &sims[System::Ros], "routes"),
    ];
    for (name, sim, kind) in systems {
        let summary = sim.summary();
        assert_eq!(
            summary.active.get(kind).copied().unwrap_or_default(),
            stored.len(),
            "{name} {kind}: {summary:?}"
        );
        assert_eq!(summary.effects, stored.len(), "{name}: {summary:?}");
    }
    stored.len()
}

fn slow_down_systems(app: &TestApp) {
    let sims = app
        .runtime
        .simulators
        .as_ref()
        .expect("in-process simulators");
    let systems: [&dyn ControlledSimulator; 3] =
        [&sims[System::Cms], &sims[System::Wms], &sims[System::Ros]];
    for sim in systems {
        sim.knobs().update(|k| k.latency_ms = SYSTEM_LATENCY_MS);
    }
}

/// Prints how far into the test a phase was reached, to see where the time goes.
fn phase(test: &str, began: Instant, what: &str) {
    eprintln!("{test}: {what} at {:.1} s", began.elapsed().as_secs_f64());
}

/// A node with `backends` (bus, store, orders sections) and the shipped call timeouts
/// and retry policy instead of the harness's short ones: when the outage ends, the
/// backlog reaches the external systems in one burst, and on a busy 2-core machine
/// 2 s timeouts with 4 quick attempts fail orders that the shipped policy carries
/// through. The test is about outages, so it runs what users run.
async fn spawn_node(backends: Value) -> TestApp {
    let mut overrides = json!({
        "saga": {"max_attempts": 5, "backoff_base_ms": 100, "backoff_max_ms": 5000},
        "cms": {"timeout_ms": 5000}, "wms": {"timeout_ms": 5000}, "ros": {"timeout_ms": 5000}
    });
    if let (Some(all), Value::Object(backends)) = (overrides.as_object_mut(), backends) {
        all.extend(backends);
    }
    spawn_app_with(overrides).await
}

fn isolation() -> String {
    format!("outage{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run() {
    const TEST: &str = "broker_restart_mid_run";
    if real_backends(TEST).is_none() {
        return;
    }
    let began = Instant::now();
    let (broker, rabbitmq_url) = DedicatedBroker::start().await;
    phase(TEST, began, "dedicated broker up");
    let namespace = isolation();
    // The embedded store: the intake rate, not a shared database server, then decides
    // how many orders are on the move when the broker dies.
    let app = spawn_node(json!({
        "bus": {"kind": "amqp", "rabbitmq_url": rabbitmq_url, "namespace": namespace,
                "timeout_secs": 2},
        "store": {"kind": "embedded"},
        "orders": {"resume_sweep_secs": 2}
    }))
    .await;
    let node_started = Instant::now();
    phase(TEST, began, "node up");
    slow_down_systems(&app);
    let (token, _) = app.register_client().await;

    let (load, clients) = Load::start(&app, &token, 1000, 32);
    load.wait_until_accepted(300, Duration::from_secs(60)).await;
    phase(TEST, began, "300 orders accepted");
    // A quorum queue killed within about a second of its creation can come back empty.
    let settle = Duration::from_millis(1500).saturating_sub(node_started.elapsed());
    tokio::time::sleep(settle).await;

    let killed_at = Instant::now();
    broker.run("kill").await;
    let accepted_at_kill = load.accepted_so_far();
    let routed_at_kill = app
        .runtime
        .simulators
        .as_ref()
        .map_or(0, |s| s[System::Ros].summary().effects);
    assert!(
        routed_at_kill < accepted_at_kill,
        "the kill must catch orders mid-journey ({routed_at_kill} of {accepted_at_kill} routed)"
    );
    let (status, body) = wait_for_dependency(&app, "bus", "down").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependencies"]["store"], "up", "{body}");
    let noticed = killed_at.elapsed();

    phase(TEST, began, "/ready reports the bus down");
    broker.run("start").await;
    phase(TEST, began, "broker started again");
    let (status, body) = wait_for_dependency(&app, "bus", "up").await;
    assert_eq!(status, 200, "{body}");
    let outage = killed_at.elapsed();

    for client in clients {
        client.await.expect("client task");
    }
    let unexpected = load.unexpected.lock().await.clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let accepted = load.accepted.lock().await.clone();
    phase(TEST, began, "all orders placed");
    let finish = Instant::now();
    let stored = assert_every_order_finished_once(&app, &accepted).await;
    eprintln!(
        "{TEST}: {} accepted ({} answered 503), {stored} stored; killed with \
         {accepted_at_kill} accepted and {routed_at_kill} routed; /ready noticed in {noticed:?}, \
         bus back after {outage:?}; journeys done {:?} after the load; {:?} in all",
        accepted.len(),
        load.unavailable.load(Ordering::Relaxed),
        finish.elapsed(),
        began.elapsed()
    );
    app.runtime.shutdown().await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_restart_mid_run() {
    const TEST: &str = "mongo_restart_mid_run";
    let Some((rabbitmq_url, _)) = real_backends(TEST) else {
        return;
    };
    let began = Instant::now();
    let (mongo, mongodb_uri) = DedicatedMongo::start().await;
    phase(TEST, began, "dedicated database server up");
    // The RabbitMQ bus, as in a cluster: its resume sweep also drives orders whose
    // intake write landed although the store call failed (answered 503).
    let app = spawn_node(json!({
        "bus": {"kind": "amqp", "rabbitmq_url": rabbitmq_url, "namespace": isolation()},
        "store": {"kind": "mongo", "mongodb_uri": mongodb_uri, "database": isolation(),
                  "timeout_secs": 2},
        "orders": {"resume_sweep_secs": 2}
    }))
    .await;
    phase(TEST, began, "node up");
    slow_down_systems(&app);
    let (token, _) = app.register_client().await;

    let (load, clients) = Load::start(&app, &token, 400, 16);
    load.wait_until_accepted(120, Duration::from_secs(60)).await;
    phase(TEST, began, "120 orders accepted");

    let stopped_at = Instant::now();
    mongo.stop().await;
    phase(TEST, began, "database server stopped");
    let accepted_at_stop = load.accepted_so_far();
    let routed_at_stop = app
        .runtime
        .simulators
        .as_ref()
        .map_or(0, |s| s[System::Ros].summary().effects);
    assert!(
        routed_at_stop < accepted_at_stop,
        "the outage must catch orders mid-journey ({routed_at_stop} of {accepted_at_stop} routed)"
    );
    let (status, body) = wait_for_dependency(&app, "store", "down").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependencies"]["bus"], "up", "{body}");
    phase(TEST, began, "/ready reports the store down");

    // Intake refuses honestly while the store is down: 503 with Retry-After.
    let response = app.place_order(&token, &common::order_body()).await;
    assert_eq!(response.status(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");

    phase(TEST, began, "intake answered 503");
    mongo.restart().await;
    phase(TEST, began, "database server started again");
    let (status, body) = wait_for_dependency(&app, "store", "up").await;
    assert_eq!(status, 200, "{body}");
    let outage = stopped_at.elapsed();

    for client in clients {
        client.await.expect("client task");
    }
    let unexpected = load.unexpected.lock().await.clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let accepted = load.accepted.lock().await.clone();
    phase(TEST, began, "all orders placed");
    let finish = Instant::now();
    let stored = assert_every_order_finished_once(&app, &accepted).await;
    eprintln!(
        "{TEST}: {} accepted ({} answered 503), {stored} stored; stopped with \
         {accepted_at_stop} accepted and {routed_at_stop} routed; store back after {outage:?}; \
         journeys done {:?} after the load; {:?} in all",
        accepted.len(),
        load.unavailable.load(Ordering::Relaxed),
        finish.elapsed(),
        began.elapsed()
    );
    app.runtime.shutdown().await;
    drop(mongo);
}
