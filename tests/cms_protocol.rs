//! The CMS client against the CMS simulator (and against foreign SOAP servers) over
//! real HTTP on loopback.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swiftlogistics::bus::StepRequest;
use swiftlogistics::domain::{
    CustomerProfile, Location, Operation, OperationOutcome, OrderId, PackageDetails, UserId,
};
use swiftlogistics::protocols::cms::codec::{
    CMS_NAMESPACE, CmsReply, FaultKind, SOAP_ENVELOPE_NAMESPACE, decode_reply,
};
use swiftlogistics::protocols::cms::{CmsClient, CmsSimulator};
use swiftlogistics::protocols::simulator::ControlledSimulator;
use swiftlogistics::protocols::{CallError, SystemClient};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct RunningCms {
    simulator: Arc<CmsSimulator>,
    url: String,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningCms {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cms", listener.local_addr().unwrap());
        let simulator = Arc::new(CmsSimulator::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(simulator.clone().serve(listener, shutdown.clone()));
        Self {
            simulator,
            url,
            shutdown,
            server,
        }
    }

    fn client(&self, timeout: Duration) -> CmsClient {
        CmsClient::new(&self.url, timeout).unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "simulator did not shut down: {stopped:?}"
        );
    }
}

fn step(operation: Operation, order: &str, customer: &str) -> StepRequest {
    let place = |lat, lng| Location {
        lat,
        lng,
        address: None,
    };
    StepRequest {
        order_id: OrderId::parse(order).unwrap(),
        customer_id: UserId::from_trusted(customer),
        operation,
        attempt: 1,
        epoch: 0,
        pickup: place(6.9271, 79.8612),
        delivery: place(7.2906, 80.6337),
        package: PackageDetails {
            weight: 2.5,
            dimensions: None,
            description: None,
            fragile: false,
        },
        route_id: None,
    }
}

#[tokio::test]
async fn a_known_customer_is_validated_with_a_profile() {
    let cms = RunningCms::start().await;
    let client = cms.client(Duration::from_secs(5));
    let outcome = client
        .execute(&step(
            Operation::ValidateCustomer,
            "ORD-20260204-ABC123",
            "usr_12345",
        ))
        .await;
    let Ok(OperationOutcome::CustomerValidated(CustomerProfile { name, tier })) = outcome else {
        panic!("expected a validated customer, got {outcome:?}");
    };
    assert_eq!(name, "Customer usr_12345");
    assert!(tier == "standard" || tier == "premium", "{tier}");
    assert_eq!(cms.simulator.summary().effects, 0, "validation only reads");
    // The client keeps its connection alive; shutdown must not wait on it.
    cms.stop().await;
}

#[tokio::test]
async fn an_unknown_customer_is_refused() {
    let cms = RunningCms::start().await;
    cms.simulator.knobs().update(|k| {
        k.refuse_customers.insert("usr_ghost".into());
    });
    let outcome = cms
        .client(Duration::from_secs(5))
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_ghost"))
        .await;
    assert_eq!(
        outcome,
        Ok(OperationOutcome::Refused {
            reason: "CMS: Unknown customer".into()
        })
    );
    cms.stop().await;
}

#[tokio::test]
async fn an_outage_is_an_error_worth_retrying() {
    let cms = RunningCms::start().await;
    let client = cms.client(Duration::from_secs(5));
    cms.simulator.knobs().update(|k| k.outage = true);
    let outcome = client
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
        .await;
    assert!(matches!(outcome, Err(CallError::Remote(_))), "{outcome:?}");
    cms.simulator.knobs().update(|k| k.outage = false);
    let outcome = client
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
        .await;
    assert!(
        matches!(outcome, Ok(OperationOutcome::CustomerValidated(_))),
        "{outcome:?}"
    );
    cms.stop().await;
}

#[tokio::test]
async fn a_slow_cms_times_out_within_the_client_timeout() {
    let cms = RunningCms::start().await;
    cms.simulator.knobs().update(|k| k.latency_ms = 3_000);
    let started = Instant::now();
    let outcome = cms
        .client(Duration::from_millis(200))
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
        .await;
    assert_eq!(outcome, Err(CallError::Timeout(200)));
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    cms.stop().await;
}

#[tokio::test]
async fn an_unreachable_cms_is_a_connection_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cms", listener.local_addr().unwrap());
    drop(listener);
    let outcome = CmsClient::new(&url, Duration::from_secs(2))
        .unwrap()
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
        .await;
    assert!(
        matches!(outcome, Err(CallError::Connection(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn cancelling_twice_cancels_once_and_is_never_refused() {
    let cms = RunningCms::start().await;
    let client = cms.client(Duration::from_secs(5));
    cms.simulator.knobs().update(|k| k.refuse_all = true);
    let cancel = step(
        Operation::CancelCustomerOrder,
        "ORD-20260204-CANCEL1",
        "usr_1",
    );
    assert_eq!(client.execute(&cancel).await, Ok(OperationOutcome::Undone));
    assert_eq!(client.execute(&cancel).await, Ok(OperationOutcome::Undone));
    let summary = cms.simulator.summary();
    assert_eq!((summary.effects, summary.replays), (1, 1));
    assert_eq!(summary.active.get("cancelledOrders"), Some(&1));
    cms.stop().await;
}

#[tokio::test]
async fn operations_of_other_systems_are_not_sent() {
    let cms = RunningCms::start().await;
    let outcome = cms
        .client(Duration::from_secs(5))
        .execute(&step(Operation::ReserveInventory, "ORD-1", "usr_1"))
        .await;
    assert_eq!(
        outcome,
        Err(CallError::Malformed("operation not served by CMS".into()))
    );
    cms.stop().await;
}

#[tokio::test]
async fn a_malformed_request_gets_a_client_fault() {
    let cms = RunningCms::start().await;
    let http = reqwest::Client::new();
    for body in ["this is not xml", "<soap:Envelope>", "<a/>", ""] {
        let response = http
            .post(&cms.url)
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let reply = decode_reply(&response.bytes().await.unwrap()).unwrap();
        let CmsReply::Fault(fault) = reply else {
            panic!("expected a fault for {body:?}, got {reply:?}");
        };
        assert_eq!(fault.kind, FaultKind::Client);
        assert!(
            fault.message.starts_with("malformed request"),
            "{}",
            fault.message
        );
    }
    cms.stop().await;
}

#[tokio::test]
async fn the_wsdl_describes_both_operations() {
    let cms = RunningCms::start().await;
    let response = reqwest::Client::new()
        .get(format!("{}?wsdl", cms.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let wsdl = response.text().await.unwrap();
    for expected in [
        "<wsdl:operation name=\"ValidateCustomer\">",
        "<wsdl:operation name=\"CancelOrder\">",
        &format!("location=\"{}\"", cms.url),
    ] {
        assert!(wsdl.contains(expected), "missing {expected} in {wsdl}");
    }
    cms.stop().await;
}

#[tokio::test]
async fn a_foreign_envelope_style_is_served() {
    let cms = RunningCms::start().await;
    let envelope = format!(
        r#"<SOAP-ENV:Envelope
     xmlns:SOAP-ENV="{SOAP_ENVELOPE_NAMESPACE}"
     xmlns:c="{CMS_NAMESPACE}"
     SOAP-ENV:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">
  <SOAP-ENV:Header>
    <c:IdempotencyKey SOAP-ENV:mustUnderstand="0">ORD-7:cms.validate</c:IdempotencyKey>
  </SOAP-ENV:Header>
  <!-- sent by a hand-rolled client -->
  <SOAP-ENV:Body>
    <c:ValidateCustomer>
      <CustomerId>usr_7&amp;co</CustomerId>
      <OrderId>ORD-7</OrderId>
    </c:ValidateCustomer>
  </SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#
    );
    let response = reqwest::Client::new()
        .post(&cms.url)
        .header(header::CONTENT_TYPE, "text/xml")
        .body(envelope)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let CmsReply::Validation(validation) = decode_reply(&response.bytes().await.unwrap()).unwrap()
    else {
        panic!("expected a validation");
    };
    assert!(validation.valid);
    assert_eq!(validation.customer_name, "Customer usr_7&co");
    cms.stop().await;
}

/// A server that is not our simulator, answering with a fixed status and body after
/// checking the request carries the SOAP 1.1 HTTP headers.
async fn foreign_server(status: StatusCode, body: &'static str) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cms", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/cms",
        post(move |headers: HeaderMap| async move {
            let action = headers.get("soapaction").and_then(|v| v.to_str().ok());
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if action != Some("\"http://swiftlogistics.com/cms/ValidateCustomer\"")
                || content_type != Some("text/xml; charset=utf-8")
            {
                return (StatusCode::BAD_REQUEST, "missing SOAP headers");
            }
            (status, body)
        }),
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (url, shutdown)
}

#[tokio::test]
async fn replies_from_other_soap_stacks_are_understood() {
    let (url, shutdown) = foreign_server(
        StatusCode::OK,
        r#"<?xml version='1.0'?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/">
           <S:Body><ns2:ValidateCustomerResponse xmlns:ns2="http://swiftlogistics.com/cms">
             <ns2:Valid>1</ns2:Valid><ns2:CustomerName>Perera &amp; Sons</ns2:CustomerName><ns2:Tier>gold</ns2:Tier>
           </ns2:ValidateCustomerResponse></S:Body></S:Envelope>"#,
    )
    .await;
    let outcome = CmsClient::new(&url, Duration::from_secs(5))
        .unwrap()
        .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
        .await;
    assert_eq!(
        outcome,
        Ok(OperationOutcome::CustomerValidated(CustomerProfile {
            name: "Perera & Sons".into(),
            tier: "gold".into()
        }))
    );
    shutdown.cancel();
}

type ExpectedError = fn(&CallError) -> bool;

#[tokio::test]
async fn non_soap_replies_are_errors_not_outcomes() {
    let cases: [(StatusCode, &str, ExpectedError); 3] = [
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance",
            |e| matches!(e, CallError::Remote(_)),
        ),
        (StatusCode::OK, "{\"valid\": true}", |e| {
            matches!(e, CallError::Malformed(_))
        }),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>database down</faultstring></s:Fault></s:Body></s:Envelope>"#,
            |e| matches!(e, CallError::Remote(m) if m.contains("database down")),
        ),
    ];
    for (status, body, expected) in cases {
        let (url, shutdown) = foreign_server(status, body).await;
        let outcome = CmsClient::new(&url, Duration::from_secs(5))
            .unwrap()
            .execute(&step(Operation::ValidateCustomer, "ORD-1", "usr_1"))
            .await;
        assert!(
            outcome.as_ref().is_err_and(expected),
            "{status} {body}: {outcome:?}"
        );
        shutdown.cancel();
    }
}
