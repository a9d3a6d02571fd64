//! Nodes on a RabbitMQ cluster (issue 8, item 7): three clustered brokers, two
//! nodes given all three addresses. `kill -9` of the broker both nodes use, with
//! orders in flight: the nodes move to another broker within seconds, intake keeps
//! answering at once, every order reaches the end of its journey and each external
//! effect happens once.
//!
//! Runs with `SWIFT_TEST_BACKEND=real`: needs a MongoDB server at `MONGODB_URI`
//! (the nodes share the store) and `rabbitmq-server` (scripts/start-rabbitmq.sh
//! installs it and starts the cluster). The brokers use ports 5701..5703
//! (inter-node ports 25701..25703), never the shared broker's 5672.

mod common;

use common::process::{NodeProcess, start_node, start_simulators};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const PORTS: [u16; 3] = [5701, 5702, 5703];
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// The shared store, when the suite runs on the real backends.
fn mongodb_uri() -> Option<String> {
    if std::env::var("SWIFT_TEST_BACKEND").as_deref() != Ok("real") {
        eprintln!("skipped: runs with SWIFT_TEST_BACKEND=real (the nodes share MongoDB)");
        return None;
    }
    let uri = std::env::var("MONGODB_URI").unwrap_or_default();
    assert!(!uri.is_empty(), "SWIFT_TEST_BACKEND=real needs MONGODB_URI");
    Some(uri)
}

/// Three clustered brokers, killed when the test ends.
struct Brokers {
    script: PathBuf,
}

impl Brokers {
    /// Starts them and returns the node's comma-separated URL list.
    fn start() -> (Self, String) {
        let brokers = Self {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/start-rabbitmq.sh"),
        };
        let output = Command::new(&brokers.script)
            .arg("cluster")
            .args(PORTS.map(|p| p.to_string()))
            // Three brokers booting at once on a busy machine can take a while.
            .env("RABBITMQ_READY_TIMEOUT", "180")
            .output()
            .expect("run start-rabbitmq.sh");
        assert!(
            output.status.success(),
            "start-rabbitmq.sh cluster failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let urls = stdout
            .lines()
            .last()
            .and_then(|line| line.strip_prefix("RABBITMQ_URL="))
            .expect("the script prints RABBITMQ_URL last")
            .to_owned();
        (brokers, urls)
    }

    fn kill(&self, port: u16) {
        let status = Command::new(&self.script)
            .arg("kill")
            .arg(port.to_string())
            .status()
            .expect("run start-rabbitmq.sh kill");
        assert!(status.success());
    }

    /// The broker (its AMQP port) each of our nodes' connections is on, asked of
    /// broker `port`.
    fn our_connections(&self, port: u16) -> Vec<u16> {
        let output = Command::new(RABBITMQCTL)
            .env("HOME", format!("/var/tmp/swift-rabbitmq-{port}"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .args(["-q", "-n", &format!("rabbit{port}@localhost")])
            .args([
                "list_connections",
                "--no-table-headers",
                "port",
                "client_properties",
            ])
            .output()
            .expect("run rabbitmqctl");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains("swiftlogistics"))
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        for port in PORTS {
            let _ = Command::new(&self.script)
                .arg("kill")
                .arg(port.to_string())
                .output();
        }
    }
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

async fn ready(http: &reqwest::Client, node: &NodeProcess) -> bool {
    matches!(http.get(format!("{}/ready", node.url)).send().await, Ok(r) if r.status() == 200)
}

/// Every order in the store, through the admin listing.
async fn stored_orders(http: &reqwest::Client, node: &NodeProcess, admin: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{}/api/orders", node.url))
            .bearer_auth(admin)
            .query(&[("limit", "100")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page = json(request.send().await.expect("list orders")).await;
        all.extend(page["orders"].as_array().expect("orders").iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_move_to_a_live_broker_and_lose_nothing_when_theirs_is_killed() {
    let Some(mongodb_uri) = mongodb_uri() else {
        return;
    };
    let (brokers, urls) = tokio::task::block_in_place(Brokers::start);
    // Slow systems keep orders mid-journey when the broker dies.
    let (_sims, sims_line, control) = start_simulators(20).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let isolation = format!("bc{}", uuid::Uuid::new_v4().simple());
    let envs = [
        ("SWIFT__STORE__KIND", "mongo".to_owned()),
        ("MONGODB_URI", mongodb_uri),
        ("SWIFT__STORE__DATABASE", isolation.clone()),
        ("SWIFT__BUS__KIND", "amqp".to_owned()),
        ("RABBITMQ_URL", urls.clone()),
        ("SWIFT__BUS__NAMESPACE", isolation),
        ("SWIFT__BUS__SHARDS", "8".to_owned()),
        // Orders whose wake-up was refused during the outage move on soon.
        ("SWIFT__ORDERS__RESUME_SWEEP_SECS", "2".to_owned()),
    ];
    let data = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [
        start_node(data[0].path(), &sims_line, &envs).await,
        start_node(data[1].path(), &sims_line, &envs).await,
    ];
    // Both nodes start on the first broker of the list.
    let first = PORTS[0];
    let on_brokers = tokio::task::block_in_place(|| brokers.our_connections(PORTS[1]));
    assert!(
        on_brokers.len() >= 2 && on_brokers.iter().all(|b| *b == first),
        "{on_brokers:?}"
    );
    // A quorum queue killed within about a second of its creation can come back
    // empty (RabbitMQ 3.10); let the new queues settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let account = json!({"name": "Cluster Test", "email": "bc@example.com", "password": "correct-horse-battery"});
    let registered = http
        .post(format!("{}/api/auth/register", nodes[0].url))
        .json(&account)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 202);
    let logged_in = json(
        http.post(format!("{}/api/auth/login", nodes[0].url))
            .json(&account)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = logged_in["token"].as_str().unwrap().to_owned();

    // Clients on both nodes place orders until told to stop; each answer's status
    // and how long it took are kept.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, Duration, u16)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..16 {
        let (http, url, token) = (http.clone(), nodes[client % 2].url.clone(), token.clone());
        let (accepted, answers, stop) = (accepted.clone(), answers.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body = json!({
                    "pickupLocation": {"lat": 40.7, "lng": -74.0},
                    "deliveryAddress": {"lat": 40.6, "lng": -73.9},
                    "packageDetails": {"weight": 1.0}
                });
                let sent = Instant::now();
                let response = http
                    .post(format!("{url}/api/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("intake answers");
                let status = response.status().as_u16();
                answers.lock().await.push((sent, sent.elapsed(), status));
                if status == 202 {
                    let body = response.json::<Value>().await.expect("order body");
                    let id = body["orderId"].as_str().expect("orderId").to_owned();
                    accepted.lock().await.push(id);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    let enough = async {
        while accepted.lock().await.len() < 60 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), enough)
        .await
        .expect("60 orders accepted");

    tokio::task::block_in_place(|| brokers.kill(PORTS[0]));
    let killed = Instant::now();
    let routes_at_kill = json(
        http.get(format!("{control}/effects/ros"))
            .send()
            .await
            .unwrap(),
    )
    .await["effects"]
        .as_u64()
        .unwrap();
    let moved = common::periodic_check(
        || async { ready(&http, &nodes[0]).await && ready(&http, &nodes[1]).await },
        Duration::from_secs(30),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("both nodes ready on a live broker {took:?} after the kill");
    assert!(moved, "the nodes did not reconnect to a live broker");
    assert!(took < Duration::from_secs(10), "moving took {took:?}");
    let on_brokers = tokio::task::block_in_place(|| brokers.our_connections(PORTS[1]));
    assert!(
        on_brokers.len() >= 2 && on_brokers.iter().all(|b| *b != first),
        "{on_brokers:?}"
    );

    // Some more orders on the new broker, then stop.
    let more = accepted.lock().await.len() + 30;
    let enough = async {
        while accepted.lock().await.len() < more {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), enough)
        .await
        .expect("orders accepted after the move");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }

    // Intake answered everyone, and at once, also while no broker was connected.
    let answers = answers.lock().await.clone();
    assert!(
        answers.iter().all(|(_, _, status)| *status == 202),
        "every order is accepted: {:?}",
        answers.iter().filter(|a| a.2 != 202).collect::<Vec<_>>()
    );
    let slowest = answers
        .iter()
        .filter(|(sent, _, _)| *sent >= killed && *sent <= killed + took)
        .map(|(_, took, _)| *took)
        .max()
        .unwrap_or_default();
    let mut before: Vec<Duration> = answers
        .iter()
        .filter(|(sent, _, _)| *sent < killed)
        .map(|(_, took, _)| *took)
        .collect();
    before.sort();
    let typical = before.get(before.len() / 2).copied().unwrap_or_default();
    eprintln!("slowest intake during the move: {slowest:?} (median before the kill: {typical:?})");
    assert!(
        slowest < Duration::from_secs(5),
        "intake waited {slowest:?}"
    );
    let accepted = accepted.lock().await.clone();
    assert!(
        (routes_at_kill as usize) < accepted.len(),
        "the kill must catch orders mid-journey"
    );

    // Every stored order (some may have landed just as an answer was lost) reaches
    // the end of its journey on the surviving brokers.
    let admin = json(
        http.post(format!("{}/api/auth/login", nodes[1].url))
            .json(
                &json!({"email": "admin@swiftlogistics.local", "password": common::ADMIN_PASSWORD}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (stored, finished) = loop {
        let stored = stored_orders(&http, &nodes[1], &admin).await;
        let finished = stored
            .iter()
            .all(|order| order["status"] == "READY_FOR_DELIVERY");
        if finished || Instant::now() >= deadline {
            break (stored, finished);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pending: Vec<&Value> = stored
        .iter()
        .filter(|o| o["status"] != "READY_FOR_DELIVERY")
        .collect();
    assert!(finished, "{} orders unfinished: {pending:?}", pending.len());
    assert!(stored.len() >= accepted.len());
    for id in &accepted {
        assert!(
            stored.iter().any(|o| o["orderId"] == id.as_str()),
            "accepted order {id} was lost"
        );
    }

    // Exactly one effect per order in each system: one reservation, one route.
    for (system, kind) in [("wms", "reservations"), ("ros", "routes")] {
        let summary = json(
            http.get(format!("{control}/effects/{system}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(summary["active"][kind], stored.len(), "{system}: {summary}");
        assert_eq!(summary["effects"], stored.len(), "{system}: {summary}");
    }
    drop(nodes);
}
