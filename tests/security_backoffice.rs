//! Security of the runtime towards its back-office systems (issue 9 items 3, 4, 6),
//! attacked with hostile servers started by each test: a CMS or ROS that redirects
//! to another server (which must receive nothing), a CMS whose circuit is recovered by
//! an operator in the middle of an outage while requests of orders that already
//! failed are parked on it, and systems whose failures must not leak into the
//! customer's `failureReason`.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use common::{TestApp, merge, periodic_check, spawn_app_with};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swiftlogistics::config::Settings;
use swiftlogistics::domain::System;
use swiftlogistics::protocols::cms::codec::{
    CmsCall, CmsReply, CustomerValidation, FaultKind, SoapFault, decode_request, encode_reply,
};
use swiftlogistics::simulators::{self, RunningSimulators};
use tokio_util::sync::CancellationToken;

const JOURNEY: Duration = Duration::from_secs(20);

/// Every request a test server received: method, path with query, body.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(Method, String, String)>>>);

impl Inbox {
    fn record(&self, method: &Method, uri: &Uri, body: &[u8]) {
        let entry = (
            method.clone(),
            uri.to_string(),
            String::from_utf8_lossy(body).into_owned(),
        );
        self.0.lock().unwrap().push(entry);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn bodies_mentioning(&self, needle: &str) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|(_, _, body)| body.contains(needle))
            .count()
    }
}

/// Serves `router` on a fresh loopback port until the test ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A server that records everything and answers every request with `answer`.
async fn recording(answer: fn(&Method, &Uri, &[u8]) -> Response) -> (SocketAddr, Inbox) {
    let inbox = Inbox::default();
    let router = Router::new().fallback({
        let inbox = inbox.clone();
        move |method: Method, uri: Uri, body: Bytes| {
            let inbox = inbox.clone();
            async move {
                inbox.record(&method, &uri, &body);
                answer(&method, &uri, &body)
            }
        }
    });
    (serve(router).await, inbox)
}

/// A hostile system: answers every request with `status` pointing at `target`.
async fn redirecting_to(status: StatusCode, target: SocketAddr) -> (SocketAddr, Inbox) {
    let inbox = Inbox::default();
    let router = Router::new()
        .fallback(
            |State((inbox, status, target)): State<(Inbox, StatusCode, SocketAddr)>,
             method: Method,
             uri: Uri,
             body: Bytes| async move {
                inbox.record(&method, &uri, &body);
                let location = format!("http://{target}{uri}");
                (status, [(header::LOCATION, location)]).into_response()
            },
        )
        .with_state((inbox.clone(), status, target));
    (serve(router).await, inbox)
}

fn soap(status: StatusCode, reply: &CmsReply) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        encode_reply(reply),
    )
        .into_response()
}

/// What a CMS says yes with: the answer an attacker's server would give.
fn customer_valid() -> CmsReply {
    CmsReply::Validation(CustomerValidation {
        valid: true,
        customer_name: "Someone Else".into(),
        tier: "gold".into(),
    })
}

/// The three simulators, outside the node, so that one system can be swapped for a
/// hostile server while the other two stay real.
async fn back_office() -> (RunningSimulators, CancellationToken) {
    let settings = Settings::defaults_with(json!({"simulators": {
        "cms_bind": "127.0.0.1:0", "ros_bind": "127.0.0.1:0",
        "wms_bind": "127.0.0.1:0", "control_bind": "127.0.0.1:0"}}))
    .unwrap();
    let token = CancellationToken::new();
    let sims = simulators::start(&settings.simulators, token.clone())
        .await
        .unwrap();
    (sims, token)
}

/// A node using `sims` for every system, except what `overrides` points elsewhere.
async fn node(sims: &RunningSimulators, overrides: Value) -> TestApp {
    let mut settings = json!({
        "simulators": {"enabled": false},
        "cms": {"url": sims.address(System::Cms)},
        "ros": {"url": sims.address(System::Ros)},
        "wms": {"addr": sims.address(System::Wms)},
    });
    merge(&mut settings, overrides);
    spawn_app_with(settings).await
}

/// Few attempts and no circuit in the way: a failing system fails the order fast.
fn fail_fast() -> Value {
    json!({"saga": {"max_attempts": 2},
           "circuit": {"failure_threshold": 100, "open_secs": 1}})
}

#[tokio::test]
async fn a_route_optimiser_redirecting_elsewhere_gets_nothing_sent_there() {
    let (sims, _stop) = back_office().await;
    let (elsewhere, stolen) = recording(|_, _, _| {
        let route = json!({"routeId": "RT-ELSEWHERE", "waypoints": [], "distance": 1.0,
                           "eta": "2026-02-05T10:45:00Z"});
        axum::Json(route).into_response()
    })
    .await;
    for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
        let (hostile, asked) = redirecting_to(status, elsewhere).await;
        let mut overrides = fail_fast();
        overrides["ros"] = json!({"url": format!("http://{hostile}")});
        let app = node(&sims, overrides).await;
        let (token, _) = app.register_client().await;
        let order_id = app.place(&token).await;
        app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
            .await;

        let order = app.order(&token, &order_id).await;
        assert!(asked.len() > 0, "the configured optimiser was asked");
        assert_eq!(
            stolen.len(),
            0,
            "HTTP {status}: nothing may reach the redirect target"
        );
        assert!(order["route"].is_null(), "{order}");
        assert_eq!(order["integrationStatus"]["ros"], "FAILED", "{order}");
        assert!(
            order["failureReason"]
                .as_str()
                .unwrap()
                .starts_with("the route service did not answer in time"),
            "{order}"
        );
        let ros = app.service_health(&app.admin_token().await, "ros").await;
        assert!(
            ros["lastError"].as_str().unwrap().contains("redirect"),
            "operators see why: {ros}"
        );
        app.runtime.shutdown().await;
    }
}

#[tokio::test]
async fn a_cms_redirecting_elsewhere_gets_nothing_sent_there_and_validates_no_one() {
    let (sims, _stop) = back_office().await;
    let (elsewhere, stolen) = recording(|_, _, _| soap(StatusCode::OK, &customer_valid())).await;
    for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
        let (hostile, asked) = redirecting_to(status, elsewhere).await;
        let mut overrides = fail_fast();
        overrides["cms"] = json!({"url": format!("http://{hostile}/cms")});
        let app = node(&sims, overrides).await;
        let (token, _) = app.register_client().await;
        let order_id = app.place(&token).await;
        app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
            .await;

        let order = app.order(&token, &order_id).await;
        assert!(
            asked.bodies_mentioning(&order_id) > 0,
            "the configured CMS was asked"
        );
        assert_eq!(
            stolen.len(),
            0,
            "HTTP {status}: nothing may reach the redirect target"
        );
        assert_ne!(order["integrationStatus"]["cms"], "COMPLETED", "{order}");
        assert_eq!(
            sims[System::Wms].summary().effects,
            0,
            "no stock reserved for it"
        );
        app.runtime.shutdown().await;
    }
}

/// A CMS under the test's control: down (soap:Server faults) while `down` is set,
/// and a record of every order it was asked to validate.
struct RecordingCms {
    down: AtomicBool,
    validations: Mutex<Vec<String>>,
}

impl RecordingCms {
    async fn start() -> (Arc<Self>, String) {
        let cms = Arc::new(Self {
            down: AtomicBool::new(false),
            validations: Mutex::default(),
        });
        let router = Router::new()
            .fallback(
                |State(cms): State<Arc<RecordingCms>>, body: Bytes| async move {
                    cms.answer(&body)
                },
            )
            .with_state(cms.clone());
        let addr = serve(router).await;
        (cms, format!("http://{addr}/cms"))
    }

    fn answer(&self, body: &[u8]) -> Response {
        let Ok(request) = decode_request(body) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if let CmsCall::ValidateCustomer { order_id, .. } = &request.call {
            self.validations.lock().unwrap().push(order_id.clone());
        }
        if self.down.load(Ordering::SeqCst) {
            let fault = SoapFault {
                kind: FaultKind::Server,
                message: "down for maintenance".into(),
            };
            return soap(StatusCode::INTERNAL_SERVER_ERROR, &CmsReply::Fault(fault));
        }
        match request.call {
            CmsCall::ValidateCustomer { .. } => soap(StatusCode::OK, &customer_valid()),
            CmsCall::CancelOrder { .. } => {
                soap(StatusCode::OK, &CmsReply::Cancellation { cancelled: true })
            }
        }
    }

    fn validations_of(&self, order_id: &str) -> usize {
        let seen = self.validations.lock().unwrap();
        seen.iter().filter(|id| *id == order_id).count()
    }
}

/// Issue 9 item 4: requests parked on the open CMS circuit belong to an order that
/// has failed meanwhile; an operator recovers the circuit; those requests must be
/// dropped, while the parked request of an order still waiting goes out.
#[tokio::test]
async fn recover_sends_parked_requests_of_waiting_orders_only() {
    let (sims, _stop) = back_office().await;
    let (cms, cms_url) = RecordingCms::start().await;
    let app = node(
        &sims,
        json!({"cms": {"url": cms_url},
               "saga": {"max_attempts": 3, "step_watchdog_secs": 1},
               "circuit": {"failure_threshold": 3, "open_secs": 600}}),
    )
    .await;
    let (token, _) = app.register_client().await;
    let admin = app.admin_token().await;
    cms.down.store(true, Ordering::SeqCst);

    // Three failed calls of the first order open the circuit, and it fails.
    let opened_it = app.place(&token).await;
    app.wait_for_status(&token, &opened_it, "FAILED", JOURNEY)
        .await;
    assert_eq!(app.service_health(&admin, "cms").await["circuit"], "OPEN");
    assert_eq!(cms.validations_of(&opened_it), 3);

    // The second order's attempts all park on the open circuit until it gives up.
    let failed_while_parked = app.place(&token).await;
    app.wait_for_status(&token, &failed_while_parked, "FAILED", JOURNEY)
        .await;
    let cms_health = app.service_health(&admin, "cms").await;
    assert_eq!(cms_health["waiting"], 3, "{cms_health}");

    // The third is parked and still waiting when the operator steps in.
    let waiting = app.place(&token).await;
    let parked = periodic_check(
        || async { app.service_health(&admin, "cms").await["waiting"] == 4 },
        JOURNEY,
    )
    .await;
    assert!(parked, "{}", app.service_health(&admin, "cms").await);
    cms.down.store(false, Ordering::SeqCst);
    let recovered = app
        .http
        .post(app.url("/api/services/cms/recover"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(recovered.status(), 200);

    app.wait_for_status(&token, &waiting, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    let drained = periodic_check(
        || async { app.service_health(&admin, "cms").await["waiting"] == 0 },
        JOURNEY,
    )
    .await;
    assert!(drained, "{}", app.service_health(&admin, "cms").await);
    assert_eq!(
        cms.validations_of(&failed_while_parked),
        0,
        "a parked request of a failed order must be dropped, not sent"
    );
    assert_eq!(
        cms.validations_of(&opened_it),
        3,
        "nothing more for it either"
    );
    assert_eq!(app.status_of(&token, &failed_while_parked).await, "FAILED");
}

/// Issue 9 item 4, the lost probe: an operator recovers the circuit while the CMS is
/// still down, so it opens again at once. That second opening must get its own
/// probe: once the CMS is back, the waiting order completes with no new traffic and
/// no operator.
#[tokio::test]
async fn a_circuit_reopened_after_recover_during_an_outage_probes_again() {
    let (sims, _stop) = back_office().await;
    let app = node(
        &sims,
        json!({"saga": {"max_attempts": 1000, "backoff_base_ms": 5, "backoff_max_ms": 20,
                        "step_watchdog_secs": 600},
               "circuit": {"failure_threshold": 3, "open_secs": 1}}),
    )
    .await;
    let (token, _) = app.register_client().await;
    let admin = app.admin_token().await;
    sims[System::Cms].knobs().update(|k| k.outage = true);
    let order_id = app.place(&token).await;
    let parked = periodic_check(
        || async { app.service_health(&admin, "cms").await["waiting"] == 1 },
        JOURNEY,
    )
    .await;
    assert!(parked, "{}", app.service_health(&admin, "cms").await);

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
    // Still down: three more failures open it again and the order parks again.
    let reopened = periodic_check(
        || async {
            let cms = app.service_health(&admin, "cms").await;
            cms["circuit"] != "CLOSED" && cms["waiting"] == 1
        },
        JOURNEY,
    )
    .await;
    assert!(reopened, "{}", app.service_health(&admin, "cms").await);
    sims[System::Cms].knobs().update(|k| k.outage = false);

    app.wait_for_status(
        &token,
        &order_id,
        "READY_FOR_DELIVERY",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(app.service_health(&admin, "cms").await["circuit"], "CLOSED");
}

/// What the customer can read of an order: the document with its history (the
/// WebSocket updates are those events) and the status view.
async fn customer_view(app: &TestApp, token: &str, order_id: &str) -> (String, String) {
    let document = app.order(token, order_id).await;
    let status: Value = app
        .http
        .get(app.url(&format!("/api/orders/{order_id}/status")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reason = document["failureReason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (reason, format!("{document}{status}"))
}

/// Words that would tell a customer about our insides or repeat a hostile server.
const LEAKS: [&str; 7] = [
    "http://",
    "127.0.0.1",
    "10.1.2.3",
    "os error",
    "line 1",
    "XML",
    "<script>",
];

/// Issue 9 item 6: a refusal full of internals, an unreachable system, and replies
/// that do not parse all end in a `failureReason` in domain words, and nothing of
/// the detail reaches the customer (operators find it in the logs and the health
/// view).
#[tokio::test]
async fn customers_read_failure_reasons_in_domain_words_only() {
    let (sims, _stop) = back_office().await;
    let (refusing, _) = recording(|_, _, _| {
        let leak = "no route: upstream http://10.1.2.3:9000/plan said <script> (os error 111)";
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": leak})),
        )
            .into_response()
    })
    .await;
    let (garbling, _) =
        recording(|_, _, _| (StatusCode::OK, "<html>not json").into_response()).await;
    let (garbling_soap, _) = recording(|_, _, _| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml")],
            "<soap:Envelope><broken",
        )
            .into_response()
    })
    .await;
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let cases = [
        (
            json!({"ros": {"url": format!("http://{refusing}")}}),
            "no route could be planned for the delivery",
        ),
        (
            json!({"ros": {"url": format!("http://{garbling}")}}),
            "the route service did not answer in time",
        ),
        (
            json!({"ros": {"url": format!("http://{unreachable}")}}),
            "the route service did not answer in time",
        ),
        (
            json!({"cms": {"url": format!("http://{garbling_soap}/cms")}}),
            "the customer records system did not answer in time",
        ),
        (
            json!({"wms": {"addr": unreachable.to_string()}}),
            "the warehouse did not answer in time",
        ),
    ];
    for (system, expected) in cases {
        let mut overrides = fail_fast();
        merge(&mut overrides, system.clone());
        let app = node(&sims, overrides).await;
        let (token, _) = app.register_client().await;
        let order_id = app.place(&token).await;
        app.wait_for_status(&token, &order_id, "FAILED", JOURNEY)
            .await;
        let (reason, shown) = customer_view(&app, &token, &order_id).await;
        assert!(reason.starts_with(expected), "{system}: {reason}");
        for leak in LEAKS {
            assert!(
                !shown.contains(leak),
                "{system}: {leak:?} reached the customer: {shown}"
            );
        }
        app.runtime.shutdown().await;
    }
}
