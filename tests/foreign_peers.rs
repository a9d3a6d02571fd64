//! Our clients against back-office servers that the project did not write: small
//! servers in Python that follow seed 000's own examples (tests/peers/), and, for the
//! CMS, a SOAP service built with the spyne library. Our simulators were written from
//! the same text as our clients; these peers were not.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use swiftlogistics::bus::{StepReply, StepRequest};
use swiftlogistics::domain::{
    Location, Operation, OperationOutcome, OrderId, PackageDetails, Reservation, UserId,
};
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
