//! Traces over OTLP: the test runs its own OTLP/HTTP receiver, points the node at it
//! and decodes what arrives. One trace per order, from the intake request through
//! every step attempt (retries included) and compensation, each call under its step.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{periodic_check, spawn_app_with};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swiftlogistics::actors::RuntimeControl;
use swiftlogistics::domain::System;
use swiftlogistics::observability;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(20);

type Received = Arc<Mutex<Vec<Span>>>;

async fn receive(State(spans): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// An OTLP/HTTP receiver on a free port: its base URL and what it received.
async fn receiver() -> (String, Received) {
    let spans = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// The spans of one order's trace: its order span(s), and all below them.
struct OrderTrace {
    spans: Vec<Span>,
}

impl OrderTrace {
    fn of(all: &[Span], order_id: &str) -> Option<Self> {
        let order = all
            .iter()
            .find(|s| s.name == "order" && attribute(s, "order_id").as_deref() == Some(order_id))?;
        let spans = all
            .iter()
            .filter(|s| s.trace_id == order.trace_id)
            .cloned()
            .collect();
        Some(Self { spans })
    }

    fn named(&self, name: &str) -> Vec<&Span> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    fn steps(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.name.starts_with("step "))
            .collect()
    }

    fn calls(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.name.starts_with("call "))
            .collect()
    }

    fn parent_of(&self, span: &Span) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == span.parent_span_id)
    }
}

#[tokio::test]
async fn each_order_is_one_trace_from_intake_through_retries_and_compensation() {
    let (endpoint, received) = receiver().await;
    let overrides = json!({"telemetry": {"otlp_endpoint": endpoint}});
    let settings = common::test_settings(std::path::Path::new("/nonexistent"), overrides.clone());
    let (layer, traces) = observability::otlp_layer(&settings.telemetry)
        .expect("the exporter builds")
        .expect("an endpoint is set");
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(layer)
        .init();
    let app = spawn_app_with(overrides).await;
    let (client, _) = app.register_client().await;
    let sims = app.runtime.simulators.as_ref().unwrap();

    // A route optimisation that fails once and then succeeds: two attempts.
    sims[System::Ros].knobs().update(|k| k.outage = true);
    let retried = app.place(&client).await;
    let control = app.runtime.control();
    let failed_once = periodic_check(
        || async {
            control
                .services_health()
                .await
                .iter()
                .any(|h| h.service.as_str() == "ros" && h.total_failures >= 1)
        },
        WAIT,
    )
    .await;
    assert!(failed_once);
    sims[System::Ros].knobs().update(|k| k.outage = false);
    app.wait_for_status(&client, &retried, "READY_FOR_DELIVERY", WAIT)
        .await;

    // Three failures open the ROS circuit; the order's fourth attempt is parked until
    // an operator closes it, and then joins the order's trace like any call.
    sims[System::Ros].knobs().update(|k| k.outage = true);
    let parked = app.place(&client).await;
    let waiting = periodic_check(
        || async {
            control
                .services_health()
                .await
                .iter()
                .any(|h| h.service.as_str() == "ros" && h.waiting >= 1)
        },
        WAIT,
    )
    .await;
    assert!(waiting, "the fourth attempt is parked on the open circuit");
    sims[System::Ros].knobs().update(|k| k.outage = false);
    control
        .recover(swiftlogistics::domain::System::Ros)
        .await
        .expect("the ROS adapter answers");
    app.wait_for_status(&client, &parked, "READY_FOR_DELIVERY", WAIT)
        .await;

    // No route: the reservation and the customer order are undone.
    sims[System::Ros].knobs().update(|k| k.refuse_all = true);
    let compensated = app.place(&client).await;
    app.wait_for_status(&client, &compensated, "FAILED", WAIT)
        .await;

    let traces = Arc::new(traces);
    let complete = periodic_check(
        || {
            let traces = traces.clone();
            let received = received.clone();
            let (retried, compensated, parked) =
                (retried.clone(), compensated.clone(), parked.clone());
            async move {
                tokio::task::spawn_blocking(move || traces.flush())
                    .await
                    .unwrap();
                let all = received.lock().unwrap();
                let calls = |id: &str| OrderTrace::of(&all, id).map_or(0, |t| t.calls().len());
                calls(&retried) >= 4 && calls(&compensated) >= 4 && calls(&parked) >= 6
            }
        },
        WAIT,
    )
    .await;
    let all = received.lock().unwrap().clone();
    let summary: Vec<String> = all
        .iter()
        .map(|s| {
            format!(
                "{} trace={} id={} parent={} order={:?}",
                s.name,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                attribute(s, "order_id")
            )
        })
        .collect();
    assert!(
        complete,
        "{} spans arrived:\n{}",
        all.len(),
        summary.join("\n")
    );

    let trace = OrderTrace::of(&all, &retried).unwrap();
    let order = trace.named("order")[0];
    let intake = trace
        .parent_of(order)
        .expect("the order span hangs under intake");
    assert_eq!(
        attribute(intake, "route").as_deref(),
        Some("/api/orders"),
        "{intake:?}"
    );
    assert!(
        intake.parent_span_id.is_empty(),
        "intake is the trace's root"
    );
    assert!(attribute(order, "node").is_some_and(|n| !n.is_empty()));
    let steps = trace.steps();
    let attempts = |operation: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|s| attribute(s, "operation").as_deref() == Some(operation))
            .map(|s| attribute(s, "attempt").unwrap())
            .collect()
    };
    assert_eq!(attempts("cms.validate").len(), 1);
    assert_eq!(attempts("wms.reserve").len(), 1);
    assert!(
        attempts("ros.optimize").len() >= 2,
        "a retry is a second attempt: {steps:?}"
    );
    for step in &steps {
        let parent = trace.parent_of(step).expect("a step's parent arrived");
        assert_eq!(parent.name, "order", "{step:?}");
    }
    for call in trace.calls() {
        let step = trace.parent_of(call).expect("a call's parent arrived");
        assert!(step.name.starts_with("step "), "{call:?}");
        assert_eq!(attribute(call, "operation"), attribute(step, "operation"));
        assert_eq!(attribute(call, "attempt"), attribute(step, "attempt"));
    }
    let failed_attempt = steps.iter().find(|s| {
        attribute(s, "operation").as_deref() == Some("ros.optimize")
            && attribute(s, "error").is_some()
    });
    assert!(
        failed_attempt.is_some(),
        "the failed attempt says why: {steps:?}"
    );

    // cms, wms, three failed ros attempts and the parked one: all in the order's trace.
    let trace = OrderTrace::of(&all, &parked).unwrap();
    let ros_calls: Vec<String> = trace
        .calls()
        .iter()
        .filter(|c| attribute(c, "operation").as_deref() == Some("ros.optimize"))
        .filter_map(|c| attribute(c, "attempt"))
        .collect();
    assert!(
        ros_calls.contains(&"4".to_owned()),
        "ros calls: {ros_calls:?}"
    );
    for call in trace.calls() {
        let step = trace.parent_of(call).expect("a call's parent arrived");
        assert!(step.name.starts_with("step "), "{call:?}");
    }

    let trace = OrderTrace::of(&all, &compensated).unwrap();
    let operations: Vec<String> = trace
        .steps()
        .iter()
        .filter_map(|s| attribute(s, "operation"))
        .collect();
    for undo in ["wms.release", "cms.cancel"] {
        assert!(
            operations.iter().any(|o| o == undo),
            "{undo} in {operations:?}"
        );
    }
}
