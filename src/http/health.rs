//! Liveness, readiness and Prometheus metrics. Open to anyone: probes and scrapers
//! carry no token.

use super::ApiState;
use crate::domain::OrderStatus;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// A dependency slower than this counts as down: a probe must answer quickly.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const SERVICE_NAME: &str = "swiftlogistics";
/// How stale the order gauges of `/metrics` may be.
const ORDER_COUNTS_MAX_AGE: Duration = Duration::from_secs(1);

pub(crate) async fn live() -> Response {
    axum::Json(json!({
        "status": "healthy",
        "service": SERVICE_NAME,
        "timestamp": Utc::now(),
    }))
    .into_response()
}

fn up_or_down<E: std::fmt::Display>(
    dependency: &str,
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> &'static str {
    match outcome {
        Ok(Ok(())) => "up",
        Ok(Err(e)) => {
            tracing::warn!(dependency, error = %e, "readiness probe failed");
            "down"
        }
        Err(_) => {
            tracing::warn!(dependency, "readiness probe timed out");
            "down"
        }
    }
}

pub(crate) async fn ready(State(state): State<ApiState>) -> Response {
    let (store, bus) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, state.app.orders.store_reachable()),
        tokio::time::timeout(PROBE_TIMEOUT, state.app.bus.ping()),
    );
    let store = up_or_down("store", store);
    let bus = up_or_down("bus", bus);
    let draining = state.app.orders.admission().is_closed();
    let ready = store == "up" && bus == "up" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "service": SERVICE_NAME,
        "dependencies": {"store": store, "bus": bus},
        "draining": draining,
        "timestamp": Utc::now(),
    });
    (status, axum::Json(body)).into_response()
}

/// Order gauges come from the store, so every node reports the cluster-wide counts;
/// in-flight is this node's admission count.
/// Open unless `http.metrics_token` is set; then only with that bearer token
/// (compared in constant time).
pub(crate) async fn metrics(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let required = state.app.settings.http.metrics_token.as_bytes();
    if !required.is_empty() {
        let given = super::extract::bearer(&headers)
            .unwrap_or_default()
            .as_bytes();
        if !crate::auth::same_secret(given, required) {
            return super::error::ApiError::Unauthorized(
                "/metrics needs Authorization: Bearer <http.metrics_token>".into(),
            )
            .into_response();
        }
    }
    refresh_order_counts(&state).await;
    refresh_dead_letter_depths(&state).await;
    let in_flight = state.app.orders.admission().in_flight();
    metrics::gauge!("swift_orders_in_flight").set(in_flight as f64);
    if let Some(bytes) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.app.metrics.render(),
    )
        .into_response()
}

/// Counting orders by status reads every order (on MongoDB, an index scan as long as
/// the collection), so scrapes share one count per `ORDER_COUNTS_MAX_AGE`: dashboards
/// and load generators polling many times a second cost the database one count. Every
/// scrape still sets the gauges from this node's last count, as the metrics recorder
/// is process-wide.
async fn refresh_order_counts(state: &ApiState) {
    let mut last = state.order_counts.lock().await;
    let stale = last
        .as_ref()
        .is_none_or(|(read_at, _)| read_at.elapsed() >= ORDER_COUNTS_MAX_AGE);
    if stale {
        match tokio::time::timeout(PROBE_TIMEOUT, state.app.orders.count_by_status()).await {
            Ok(Ok(counts)) => *last = Some((Instant::now(), counts.into_iter().collect())),
            Ok(Err(e)) => tracing::warn!(error = %e, "order counts unavailable for metrics"),
            Err(_) => tracing::warn!("order counts timed out for metrics"),
        }
    }
    if let Some((_, counts)) = last.as_ref() {
        for status in OrderStatus::ALL {
            let count = counts.get(&status).copied().unwrap_or(0);
            metrics::gauge!("swift_orders", "status" => status.as_str()).set(count as f64);
        }
    }
}

/// Dead-letter queue depths cost a broker round trip per queue: shared like the
/// order counts, and set from this node's last reading on every scrape.
async fn refresh_dead_letter_depths(state: &ApiState) {
    let mut last = state.dead_letter_depths.lock().await;
    let stale = last
        .as_ref()
        .is_none_or(|(read_at, _)| read_at.elapsed() >= ORDER_COUNTS_MAX_AGE);
    if stale {
        match tokio::time::timeout(PROBE_TIMEOUT, state.app.bus.dead_letter_depths()).await {
            Ok(Ok(depths)) => *last = Some((Instant::now(), depths)),
            Ok(Err(e)) => tracing::warn!(error = %e, "dead-letter depths unavailable for metrics"),
            Err(_) => tracing::warn!("dead-letter depths timed out for metrics"),
        }
    }
    if let Some((_, depths)) = last.as_ref() {
        for (queue, waiting) in depths {
            metrics::gauge!("swift_dead_letter_queue_messages", "queue" => queue.clone())
                .set(*waiting as f64);
        }
    }
}

/// Resident set size of this process, from /proc (Linux); the benchmarks divide it
/// by live orders and sessions.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Linux on the supported targets uses 4 KiB pages.
    Some(pages * 4096)
}
