//! Cross-cutting request handling: metrics, panics, timeouts, concurrency, and the
//! JSON answers for unknown routes and methods.

use super::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tower::BoxError;

/// Label for requests that matched no route, so that probing random paths cannot
/// create unbounded metric series.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Methods outside the standard set share one label, for the same reason.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// `swift_http_requests_total{method,route,status}` and
/// `swift_http_request_duration_seconds{method,route}`, labelled with the route
/// template (`/api/orders/{id}`), never the raw path.
pub async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("swift_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("swift_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// At most `max_concurrent_requests` handlers run at once; the rest wait inside the
/// request timeout, so a flood ends in 503s rather than unbounded memory.
pub async fn limit_concurrency(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.acquire_owned().await {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::unavailable("the server is shutting down", Some(1)).into_response(),
    }
}

/// What the request timeout (and any other middleware failure) answers.
pub async fn middleware_failure(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::unavailable("the request took too long; try again", Some(1))
    } else {
        ApiError::Internal(format!("middleware failure: {error}"))
    }
}

/// A panic in a handler becomes a 500 with the usual body; the connection survives.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

pub async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
