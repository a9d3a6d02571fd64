//! What the node tells operators beyond its API: the Prometheus metrics it exports
//! (one catalogue with their help texts and histogram buckets, so `/metrics` passes
//! `promtool check metrics`), and the one log line per order transition.
//!
//! Metric names follow Prometheus conventions: `swift_` prefix, base units in the
//! name (`_seconds`, `_bytes`), `_total` on counters only.

use crate::config::TelemetrySettings;
use crate::domain::StepRequest;
use crate::domain::{Operation, Order, OrderEvent, OrderId, OrderStatus, System, saga};
use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Arc;

/// The W3C trace context header, on bus messages as an AMQP header of this name.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// Time spent waiting in a mailbox: microseconds to seconds.
pub(crate) const MAILBOX_WAIT: &str = "swift_mailbox_wait_seconds";
const MAILBOX_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Calls, requests and journeys: milliseconds to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A whole journey, intake to its settled status: up to retries over minutes.
pub(crate) const JOURNEY: &str = "swift_order_journey_seconds";
const JOURNEY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The exporter with our histogram buckets (without them it would render summaries,
/// which cannot be aggregated across nodes).
pub(crate) fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(MAILBOX_WAIT.into()), MAILBOX_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(JOURNEY.into()), JOURNEY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
}

/// Help texts of every metric the node exports.
pub(crate) fn describe_metrics() {
    describe_counter!(
        "swift_http_requests_total",
        "HTTP requests answered, by method, route template and status code."
    );
    describe_histogram!(
        "swift_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route template."
    );
    describe_gauge!(
        "swift_orders",
        "Orders by status, cluster-wide (read from the store)."
    );
    describe_gauge!(
        "swift_orders_in_flight",
        "Orders this node is processing (admission slots taken)."
    );
    describe_counter!(
        "swift_order_transitions_total",
        "Order status changes persisted, by the status reached and the node that made them."
    );
    describe_histogram!(
        JOURNEY,
        "Time from intake to a settled status (ready, failed or cancelled), by that status."
    );
    describe_histogram!(
        "swift_step_duration_seconds",
        "Time of one call to an external system, by system and operation."
    );
    describe_counter!(
        "swift_step_outcomes_total",
        "Calls to external systems by system, operation and outcome: success, refusal, \
         timeout, transport, remote, malformed or circuit_open."
    );
    describe_counter!(
        "swift_step_retries_total",
        "Step attempts that failed transiently and were retried, by system."
    );
    describe_gauge!(
        "swift_circuit_state",
        "Circuit breaker state per system: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "swift_circuit_transitions_total",
        "Circuit breaker state changes, by system and the state entered."
    );
    describe_counter!(
        "swift_actor_restarts_total",
        "Restarts of supervised actors (order actors count under actor=\"order\")."
    );
    describe_counter!(
        "swift_actor_failures_total",
        "Failures (panics, errors) of supervised actors."
    );
    describe_counter!(
        "swift_actor_escalations_total",
        "Times a supervisor gave up on a child (restart intensity exceeded) and failed itself."
    );
    describe_gauge!(
        "swift_mailbox_depth",
        "Messages waiting in an actor's mailbox, by family and actor."
    );
    describe_counter!(
        "swift_mailbox_messages_total",
        "Messages taken from an actor's mailbox, by family and actor."
    );
    describe_histogram!(
        MAILBOX_WAIT,
        "Time from sending a message to its handling, by family and actor \
         (bridges: from publish to delivery)."
    );
    describe_counter!(
        "swift_dead_lettered_messages_total",
        "Messages this node sent to a dead-letter queue, by reason (malformed, delivery_limit)."
    );
    describe_gauge!(
        "swift_dead_letter_queue_messages",
        "Messages waiting in each dead-letter queue."
    );
    describe_gauge!("swift_node_info", "Always 1, labelled with this node's id.");
    describe_gauge!(
        "swift_shards_owned",
        "Order shards this node is the active consumer of."
    );
    describe_counter!(
        "swift_shard_gains_total",
        "Shards this node became the owner of."
    );
    describe_counter!(
        "swift_shard_losses_total",
        "Shards this node lost (any reason)."
    );
    describe_counter!(
        "swift_shard_handovers_total",
        "Shards this node handed over to balance the cluster."
    );
    describe_counter!(
        "swift_parked_dropped_total",
        "Requests parked on an open circuit dropped unsent because their order had moved on."
    );
    describe_gauge!("swift_ws_sessions", "Open WebSocket sessions.");
    describe_counter!(
        "swift_ws_updates_sent_total",
        "Order updates handed to WebSocket sessions."
    );
    describe_counter!(
        "swift_ws_sessions_cut_total",
        "WebSocket sessions cut off for reading too slowly."
    );
    describe_counter!(
        "swift_store_event_copy_failures_total",
        "Order events whose copy into the event log failed (recovered later)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        "Resident memory of the node process."
    );
}

/// The trace pipeline while traces are exported: flush it before exit.
pub struct Traces(SdkTracerProvider);

impl Traces {
    /// Exports every finished span now (blocks until the receiver answered or the
    /// export timed out).
    pub fn flush(&self) {
        if let Err(e) = self.0.force_flush() {
            tracing::warn!(error = %e, "traces could not be flushed");
        }
    }

    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            tracing::warn!(error = %e, "the trace exporter did not shut down cleanly");
        }
    }
}

/// The exporting layer, boxed: its full type names the filter and the tracer.
pub(crate) type OtlpLayer<S> = Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;

/// How long one export of a batch of spans may take.
const OTLP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `tracing` layer that exports spans over OTLP/HTTP (protobuf) to
/// `[telemetry] otlp_endpoint`; `None` when no endpoint is set.
/// Only this crate's spans are exported (not, say, ractor's one span per actor).
pub fn otlp_layer<S>(
    settings: &TelemetrySettings,
) -> Result<Option<(OtlpLayer<S>, Traces)>, ExporterBuildError>
where
    S: tracing::Subscriber
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>
        + Send
        + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use tracing_subscriber::Layer as _;
    let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(OTLP_TIMEOUT)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("swiftlogistics")
                .build(),
        )
        .build();
    let tracer = provider.tracer("swiftlogistics");
    let ours = tracing_subscriber::filter::Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(ours);
    Ok(Some((Box::new(layer), Traces(provider))))
}

/// Series that count rare events, declared at zero so that dashboards and alerts
/// find them before the first event.
pub(crate) fn declare_series() {
    for system in System::ALL {
        for to in ["open", "half_open", "closed"] {
            metrics::counter!("swift_circuit_transitions_total", "system" => system.as_str(), "to" => to)
                .absolute(0);
        }
    }
    for reason in ["malformed", "delivery_limit"] {
        metrics::counter!("swift_dead_lettered_messages_total", "reason" => reason).absolute(0);
    }
}

/// The W3C `traceparent` of the current span, if traces are exported.
pub(crate) fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote parent a `traceparent` names (invalid ones give an empty context).
pub(crate) fn remote_parent(traceparent: &str) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator;
    let carrier =
        std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The span of one call to an external system, a child of the order step that
/// asked for it (its `traceparent` came with the request over the bus).
pub(crate) fn call_span(request: &StepRequest, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "adapter.call",
        otel.name = %format!("call {}", request.operation.name()),
        order_id = %request.order_id,
        system = request.operation.system().as_str(),
        operation = request.operation.name(),
        attempt = request.attempt,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = traceparent {
        adopt(&span, traceparent);
    }
    span
}

/// The span of one order actor incarnation: a child of `traceparent` (the command
/// that woke it), or the root of a new trace when it came without one.
pub(crate) fn order_span(
    order_id: &OrderId,
    node: &str,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!("order", order_id = %order_id, node);
    if let Some(traceparent) = traceparent {
        adopt(&span, traceparent);
    }
    span
}

/// The span of one attempt at a step (compensations included), under the current
/// order span; it lasts from the request to the reply that settles the attempt.
pub(crate) fn step_span(operation: Operation, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "order.step",
        otel.name = %format!("step {}", operation.name()),
        system = operation.system().as_str(),
        operation = operation.name(),
        attempt,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Marks an attempt's span as failed (it will be retried or given up on).
pub(crate) fn step_failed(span: &tracing::Span, reason: &str) {
    span.record("error", reason);
    span.record("otel.status_code", "ERROR");
}

/// Records how the current call span's call ended.
pub(crate) fn call_outcome(kind: &'static str, failure: Option<&str>) {
    let span = tracing::Span::current();
    span.record("outcome", kind);
    if failure.is_some() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Makes `span` a child of the remote span `traceparent` names.
pub(crate) fn adopt(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let _ = span.set_parent(remote_parent(traceparent));
}

/// Logs each status an order reached (one INFO line per transition, with the step
/// it waits on next) and feeds the transition and journey metrics.
pub(crate) fn order_transitions(node: &str, order: &Order, events: &[Arc<OrderEvent>]) {
    let step = saga::next_operation(order).map_or("none", |op| op.name());
    for event in events {
        tracing::info!(
            order_id = %event.order_id,
            status = event.status.as_str(),
            step,
            node,
            seq = event.seq,
            "order transition"
        );
        // By node too: which node drives how much of the work, for the cluster figures.
        metrics::counter!("swift_order_transitions_total",
            "status" => event.status.as_str(), "node" => node.to_owned())
        .increment(1);
        if settles(event.status) {
            let journey = (event.timestamp - order.created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!(JOURNEY, "status" => event.status.as_str())
                .record(journey.as_secs_f64());
        }
    }
}

/// Where processing ends: the journey latency is measured to these.
fn settles(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::ReadyForDelivery | OrderStatus::Failed | OrderStatus::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exporter_takes_our_buckets() {
        assert!(prometheus_builder().is_ok());
    }

    #[test]
    fn journeys_end_where_processing_does() {
        assert!(settles(OrderStatus::ReadyForDelivery));
        assert!(settles(OrderStatus::Failed));
        assert!(
            !settles(OrderStatus::Delivered),
            "delivery is the driver's, not ours"
        );
        assert!(!settles(OrderStatus::Received));
    }
}
