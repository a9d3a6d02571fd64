//! Our clients against back-office servers that the project did not write: small
//! servers in Python that follow seed 000's own examples (tests/peers/), and, for the
//! CMS, a SOAP service built with the spyne library. Our simulators were written from
//! the same text as our clients; these peers were not.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::periodic_check;
use serde_json::{Value, json};
use swiftlogistics::bus::{StepReply, StepRequest};
use swiftlogistics::domain::{
    CustomerProfile, Location, Operation, OperationOutcome, OrderId, PackageDetails, Reservation,
    System, UserId,
};
use swiftlogistics::protocols::cms::{CmsClient, CmsTarget};
use swiftlogistics::protocols::ros::RosClient;
use swiftlogistics::protocols::wms::WmsClient;
use swiftlogistics::protocols::{CallError, SystemClient, step_reply};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PATIENCE: Duration = Duration::from_secs(5);

/// A peer process, killed when the test ends.
struct Peer {
    port: u16,
    _process: Child,
}

impl Peer {
    /// Starts `tests/peers/<script>` with `python` and waits for its `PORT <n>` line.
    async fn start(python: &str, script: &str, args: &[&str]) -> Self {
        let path = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut process = Command::new(python)
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {path}: {e}"));
        let stdout = process.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .unwrap_or_else(|_| panic!("{script} did not report its port"))
        .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} printed {line:?} instead of its port"));
        Self {
            port,
            _process: process,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A step with seed 000's own example data (sections 6.3, 6.4 and 8.1).
fn seed_step(id: &str, operation: Operation) -> StepRequest {
    StepRequest {
        order_id: OrderId::parse(id).unwrap(),
        customer_id: UserId::from_trusted("usr_12345"),
        operation,
        attempt: 1,
        epoch: 0,
        pickup: serde_json::from_value(seed_pickup()).unwrap(),
        delivery: serde_json::from_value(seed_delivery()).unwrap(),
        package: PackageDetails {
            weight: 5.0,
            dimensions: Some(json!("30x20x10")),
            description: None,
            fragile: false,
        },
        route_id: None,
    }
}

fn seed_pickup() -> serde_json::Value {
    json!({"address": "123 Main St", "coordinates": {"lat": 40.7128, "lng": -74.0060}})
}

fn seed_delivery() -> serde_json::Value {
    json!({"address": "456 Oak Ave", "coordinates": {"lat": 40.7589, "lng": -73.9851}})
}

#[tokio::test]
async fn the_wms_client_works_with_the_seed_warehouse() {
    let warehouse = Peer::start("python3", "seed_wms.py", &[]).await;
    let client = WmsClient::new(warehouse.addr(), 2, PATIENCE);
    // The seed's 3-field ACK, also with CRLF and with a trailing `|`.
    for id in ["ORD-20260204-ABC123", "ORD-SEED-CRLF", "ORD-SEED-PIPE"] {
        let outcome = client
            .execute(&seed_step(id, Operation::ReserveInventory))
            .await;
        assert_eq!(
            outcome,
            Ok(OperationOutcome::InventoryReserved(Reservation {
                warehouse: "WH-001".into(),
                picking_location: None,
            })),
            "{id}"
        );
    }
    let release = client
        .execute(&seed_step(
            "ORD-20260204-ABC123",
            Operation::ReleaseInventory,
        ))
        .await;
    assert_eq!(release, Ok(OperationOutcome::Undone));

    // A reply outside the protocol is a protocol failure that settles the step,
    // not a transient one to retry; the connection goes on serving.
    let bad = client
        .execute(&seed_step("ORD-SEED-BAD", Operation::ReserveInventory))
        .await;
    assert!(matches!(&bad, Err(CallError::Malformed(_))), "{bad:?}");
    match step_reply(bad) {
        StepReply::Settled {
            outcome: OperationOutcome::Exhausted { reason },
        } => assert!(reason.starts_with("protocol failure"), "{reason}"),
        other => panic!("{other:?}"),
    }
    client.ping().await.unwrap();
}

#[tokio::test]
async fn the_ros_client_sends_the_seed_body_and_reads_the_seed_reply() {
    let expected = json!({"pickup": seed_pickup(), "delivery": seed_delivery()}).to_string();
    let optimiser = Peer::start("python3", "seed_ros.py", &[&expected]).await;
    let client = RosClient::new(&optimiser.url(), PATIENCE).unwrap();

    let outcome = client
        .execute(&seed_step("ORD-20260204-ABC123", Operation::OptimizeRoute))
        .await;
    let Ok(OperationOutcome::RouteOptimized(route)) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(route.route_id, None, "the seed's optimiser names no route");
    assert_eq!(route.distance, 12.3);
    assert_eq!(route.eta, "2026-02-05T10:45:00Z");
    assert_eq!(
        (route.waypoints[0].lat, route.waypoints[1].lng),
        (40.7128, -73.9851)
    );
    // Nothing to cancel without a route id, and nothing fails for it.
    let cancel = client
        .execute(&seed_step("ORD-20260204-ABC123", Operation::CancelRoute))
        .await;
    assert_eq!(cancel, Ok(OperationOutcome::Undone));

    // The peer really checks the shape: the same places written flat are not what
    // this client sent, and are refused.
    let mut flat = seed_step("ORD-FLAT", Operation::OptimizeRoute);
    flat.pickup = Location::at(40.7128, -74.0060, Some("123 Main St".into()));
    let refused = client.execute(&flat).await;
    assert!(
        matches!(&refused, Ok(OperationOutcome::Refused { reason }) if reason.contains("pickup")),
        "{refused:?}"
    );
}

/// The interpreter of the venv with spyne, installed (pinned) by scripts/install-spyne.sh
/// if it is not there yet.
async fn spyne_python() -> String {
    let script = format!("{}/scripts/install-spyne.sh", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(output.status.success(), "{script} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("SPYNE_PYTHON="))
        .unwrap_or_else(|| panic!("{script} printed no SPYNE_PYTHON: {stdout}"))
        .to_owned()
}

async fn spyne_cms(port: u16) -> Peer {
    Peer::start(&spyne_python().await, "spyne_cms.py", &[&port.to_string()]).await
}

/// A port nobody listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn target(wsdl: String, url: Option<String>, fallback_url: String) -> CmsTarget {
    CmsTarget {
        wsdl,
        url,
        fallback_url,
        reread_every: Duration::from_millis(200),
    }
}

async fn assert_served(client: &CmsClient) {
    let validated = client
        .execute(&seed_step(
            "ORD-20260204-ABC123",
            Operation::ValidateCustomer,
        ))
        .await;
    assert_eq!(
        validated,
        Ok(OperationOutcome::CustomerValidated(CustomerProfile {
            name: "John Doe".into(),
            tier: "premium".into(),
        }))
    );
    let mut unknown = seed_step("ORD-20260204-ABC124", Operation::ValidateCustomer);
    unknown.customer_id = UserId::from_trusted("unknown_customer");
    let refused = client.execute(&unknown).await;
    assert_eq!(
        refused,
        Ok(OperationOutcome::Refused {
            reason: "CMS: Unknown customer".into()
        })
    );
    let cancelled = client
        .execute(&seed_step(
            "ORD-20260204-ABC123",
            Operation::CancelCustomerOrder,
        ))
        .await;
    assert_eq!(cancelled, Ok(OperationOutcome::Undone));
}

#[tokio::test]
async fn the_cms_client_goes_by_the_wsdl_of_a_spyne_service() {
    let cms = spyne_cms(0).await;
    let wsdl = format!("{}/cms?wsdl", cms.url());
    // Our own soapActions are not this server's: it dispatches by them and fails.
    let by_our_actions = CmsClient::new(&format!("{}/cms", cms.url()), PATIENCE).unwrap();
    let failed = by_our_actions
        .execute(&seed_step(
            "ORD-20260204-ABC123",
            Operation::ValidateCustomer,
        ))
        .await;
    assert!(matches!(&failed, Err(CallError::Remote(_))), "{failed:?}");

    // From the WSDL: its soapActions, and its address (the fallback is a dead port).
    let dead = format!("http://127.0.0.1:{}/cms", free_port());
    let client = CmsClient::from_wsdl(target(wsdl.clone(), None, dead), PATIENCE)
        .await
        .unwrap();
    let contract = client.contract().unwrap();
    assert_eq!(
        (contract.source, contract.address.as_str()),
        ("wsdl", format!("{}/cms", cms.url()).as_str())
    );
    assert_served(&client).await;

    // The same WSDL as a file.
    let text = reqwest::get(&wsdl).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"soapAction="ValidateCustomer""#), "{text}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let from_file = CmsClient::from_wsdl(
        target(
            file.path().display().to_string(),
            None,
            "http://127.0.0.1:9/cms".into(),
        ),
        PATIENCE,
    )
    .await
    .unwrap();
    assert_served(&from_file).await;
}

#[tokio::test]
async fn without_its_wsdl_the_cms_client_falls_back_and_reads_it_once_it_appears() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/cms");
    let client = CmsClient::from_wsdl(target(format!("{url}?wsdl"), None, url.clone()), PATIENCE)
        .await
        .unwrap();
    let contract = client.contract().unwrap();
    assert_eq!(contract.source, "configured");
    assert_eq!(contract.address, url);
    assert!(contract.error.is_some(), "{contract:?}");

    let _cms = spyne_cms(port).await;
    let described = periodic_check(
        || async { client.contract().is_some_and(|c| c.source == "wsdl") },
        Duration::from_secs(10),
    )
    .await;
    assert!(described, "{:?}", client.contract());
    assert_served(&client).await;
}

/// One node, simulators enabled, each system pointed at a foreign peer: the explicit
/// addresses win, the order goes all the way with the seed's own data, and the
/// simulators see nothing.
#[tokio::test]
async fn an_order_goes_through_three_foreign_systems_while_simulators_are_enabled() {
    let cms = spyne_cms(0).await;
    let warehouse = Peer::start("python3", "seed_wms.py", &[]).await;
    let pickup = json!({"address": "123 Main Street, New York, NY 10001",
        "coordinates": {"lat": 40.7128, "lng": -74.0060}});
    let delivery = json!({"address": "456 Oak Avenue, Brooklyn, NY 11201",
        "coordinates": {"lat": 40.6782, "lng": -73.9442}});
    let expected = json!({"pickup": pickup, "delivery": delivery}).to_string();
    let optimiser = Peer::start("python3", "seed_ros.py", &[&expected]).await;

    let app = common::spawn_app_with(json!({
        "simulators": {"enabled": true},
        "cms": {"wsdl": format!("{}/cms?wsdl", cms.url())},
        "ros": {"url": optimiser.url()},
        "wms": {"addr": warehouse.addr()},
    }))
    .await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    assert!(sims.standing_in.is_empty(), "{:?}", sims.standing_in);

    let (token, _) = app.register_client().await;
    // Seed 000 section 8.1, word for word.
    let body = json!({
        "customerId": "usr_12345",
        "pickupLocation": pickup,
        "deliveryAddress": delivery,
        "packageDetails": {"weight": 5.5, "dimensions": "30x20x10",
            "description": "Electronics", "fragile": true},
        "scheduledPickupTime": "2026-02-05T09:00:00Z",
        "specialInstructions": "Handle with care, ring doorbell"
    });
    let response = app.place_order(&token, &body).await;
    assert_eq!(response.status(), 202);
    let placed: Value = response.json().await.unwrap();
    let order_id = placed["orderId"].as_str().unwrap();
    app.wait_for_status(
        &token,
        order_id,
        "READY_FOR_DELIVERY",
        Duration::from_secs(20),
    )
    .await;

    let order = app.order(&token, order_id).await;
    assert_eq!(order["customer"]["name"], "John Doe", "{order}");
    assert_eq!(
        order["warehouse"],
        json!({"warehouse": "WH-001"}),
        "{order}"
    );
    assert_eq!(order["route"]["distance"], 12.3, "{order}");
    assert_eq!(
        order["pickupLocation"], pickup,
        "kept as the client wrote it"
    );
    for sim in [
        sims[System::Cms].summary(),
        sims[System::Wms].summary(),
        sims[System::Ros].summary(),
    ] {
        assert_eq!(sim.effects, 0, "a simulator was called: {sim:?}");
    }

    let admin = app.admin_token().await;
    let health: Value = app
        .http
        .get(app.url("/api/services/health"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cms_health = &health["services"][0];
    assert_eq!(cms_health["contract"]["source"], "wsdl", "{health}");
    app.runtime.shutdown().await;
}
