//! The ROS REST API over real HTTP: the client against the simulator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use swiftlogistics::bus::StepRequest;
use swiftlogistics::domain::{
    Location, Operation, OperationOutcome, OrderId, PackageDetails, Route, UserId,
};
use swiftlogistics::protocols::ros::{RosClient, RosSimulator};
use swiftlogistics::protocols::simulator::ControlledSimulator;
use swiftlogistics::protocols::{CallError, SystemClient};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    sim: Arc<RosSimulator>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self, timeout: Duration) -> RosClient {
        RosClient::new(&self.url(), timeout).unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("the simulator shuts down promptly")
            .unwrap()
            .unwrap();
    }
}

async fn start() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Arc::new(RosSimulator::default());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));
    Running {
        addr,
        sim,
        shutdown,
        server,
    }
}

fn step(id: &str, operation: Operation, route_id: Option<&str>) -> StepRequest {
    let at = |lat, lng| Location {
        lat,
        lng,
        address: Some("somewhere".into()),
    };
    StepRequest {
        order_id: OrderId::parse(id).unwrap(),
        customer_id: UserId::from_trusted("usr_test"),
        operation,
        attempt: 1,
        epoch: 0,
        pickup: at(6.9271, 79.8612),
        delivery: at(7.2906, 80.6337),
        package: PackageDetails {
            weight: 1.0,
            dimensions: None,
            description: None,
            fragile: false,
        },
        route_id: route_id.map(str::to_owned),
    }
}

fn route(outcome: Result<OperationOutcome, CallError>) -> Route {
    match outcome {
        Ok(OperationOutcome::RouteOptimized(route)) => route,
        other => panic!("expected a route, got {other:?}"),
    }
}

fn active_routes(server: &Running) -> usize {
    server.sim.summary().active["routes"]
}

#[tokio::test]
async fn an_order_gets_a_plausible_route_once_however_often_it_asks() {
    let server = start().await;
    let ros = server.client(PATIENCE);
    let optimize = step("ORD-R1", Operation::OptimizeRoute, None);

    let planned = route(ros.execute(&optimize).await);
    assert!(planned.route_id.starts_with("RT-"));
    assert!(
        (90.0..100.0).contains(&planned.distance),
        "{}",
        planned.distance
    );
    assert!(planned.waypoints.len() >= 3);
    let eta = DateTime::parse_from_rfc3339(&planned.eta).unwrap();
    assert!(eta.with_timezone(&Utc) > Utc::now() + chrono::Duration::minutes(60));

    let replayed = route(ros.execute(&optimize).await);
    assert_eq!(replayed, planned);
    let summary = server.sim.summary();
    assert_eq!((summary.effects, summary.replays), (1, 1));
    assert_eq!(active_routes(&server), 1);
    server.stop().await;
}

#[tokio::test]
async fn no_route_is_a_refusal_an_outage_is_an_error_and_slowness_a_timeout() {
    let server = start().await;
    let ros = server.client(Duration::from_millis(300));
    let optimize = step("ORD-R2", Operation::OptimizeRoute, None);

    server.sim.knobs().update(|k| k.refuse_all = true);
    assert_eq!(
        ros.execute(&optimize).await,
        Ok(OperationOutcome::Refused {
            reason: "no route".into()
        })
    );

    server.sim.knobs().update(|k| {
        k.refuse_all = false;
        k.outage = true;
    });
    let down = ros.execute(&optimize).await;
    assert!(
        matches!(down, Err(CallError::Remote(ref r)) if r.contains("503")),
        "{down:?}"
    );

    server.sim.knobs().update(|k| {
        k.outage = false;
        k.latency_ms = 2_000;
    });
    assert_eq!(ros.execute(&optimize).await, Err(CallError::Timeout(300)));

    server.sim.knobs().update(|k| k.latency_ms = 0);
    route(ros.execute(&optimize).await);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_known_route_deletes_it_once() {
    let server = start().await;
    let ros = server.client(PATIENCE);
    let planned = route(
        ros.execute(&step("ORD-R3", Operation::OptimizeRoute, None))
            .await,
    );
    assert_eq!(active_routes(&server), 1);

    let cancel = step("ORD-R3", Operation::CancelRoute, Some(&planned.route_id));
    assert_eq!(ros.execute(&cancel).await, Ok(OperationOutcome::Undone));
    assert_eq!(ros.execute(&cancel).await, Ok(OperationOutcome::Undone));
    assert_eq!(active_routes(&server), 0);

    let unknown = step("ORD-R3", Operation::CancelRoute, Some("RT-NEVER-PLANNED"));
    assert_eq!(ros.execute(&unknown).await, Ok(OperationOutcome::Undone));
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_route_of_unknown_fate_leaves_no_route_behind() {
    let server = start().await;
    let ros = server.client(PATIENCE);

    // The plan was made but its reply never reached the saga.
    route(
        ros.execute(&step("ORD-R4", Operation::OptimizeRoute, None))
            .await,
    );
    let cancel = step("ORD-R4", Operation::CancelRoute, None);
    assert_eq!(ros.execute(&cancel).await, Ok(OperationOutcome::Undone));
    assert_eq!(active_routes(&server), 0);

    // The plan request never arrived at all.
    let never_planned = step("ORD-R5", Operation::CancelRoute, None);
    assert_eq!(
        ros.execute(&never_planned).await,
        Ok(OperationOutcome::Undone)
    );
    assert_eq!(active_routes(&server), 0);

    // Refusing new plans now means nothing was planned under the key before.
    server.sim.knobs().update(|k| k.refuse_all = true);
    let refused_plan = step("ORD-R6", Operation::CancelRoute, None);
    assert_eq!(
        ros.execute(&refused_plan).await,
        Ok(OperationOutcome::Undone)
    );
    assert_eq!(active_routes(&server), 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_json_error_and_the_key_falls_back_to_the_order() {
    let server = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/routes/optimize", server.url());

    for body in [
        "{",
        "[]",
        r#"{"orderId":"ORD-1"}"#,
        r#"{"orderId":"ORD-1","pickup":{"lat":91,"lng":0},"delivery":{"lat":0,"lng":0}}"#,
    ] {
        let response = tokio::time::timeout(PATIENCE, http.post(&url).body(body).send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{error}"
        );
    }

    let body = serde_json::json!({
        "orderId": "ORD-R7",
        "pickup": {"lat": 6.9, "lng": 79.8},
        "delivery": {"lat": 7.2, "lng": 80.6},
    });
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let planned: Route = response.json().await.unwrap();
        ids.push(planned.route_id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(active_routes(&server), 1);
    server.stop().await;
}
