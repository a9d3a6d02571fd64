//! Cross-cutting request handling: metrics, panics, timeouts, concurrency, and the
//! JSON answers for unknown routes and methods.

use super::error::ApiError;
use crate::config::HttpSettings;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

/// Label for requests that matched no route, so that probing random paths cannot
/// create unbounded metric series.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Adds the JSON fallbacks and the layer stack to `routes`. Axum applies router
/// layers route by route, after routing, so the matched route template is known to
/// the span and the metrics; state shared across routes (the concurrency slots) is
/// created once here.
pub fn apply<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    http: &HttpSettings,
) -> Router<S> {
    let timeout = Duration::from_secs(http.request_timeout_secs.max(1));
    let slots = Arc::new(Semaphore::new(
        http.max_concurrent_requests
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    routes
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(middleware::from_fn(record_metrics))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(HandleErrorLayer::new(middleware_failure))
                .layer(TimeoutLayer::new(timeout))
                .layer(middleware::from_fn_with_state(slots, limit_concurrency))
                .layer(DefaultBodyLimit::max(http.max_body_bytes)),
        )
}

/// One span per request, named by route template. Only the path is recorded, never
/// the query string: the WebSocket endpoint takes its token there.
fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "http_request",
        method = %request.method(),
        route,
        path = %request.uri().path(),
    )
}

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
pub(crate) async fn record_metrics(request: Request, next: Next) -> Response {
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
pub(crate) async fn limit_concurrency(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.acquire_owned().await {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::unavailable("the server is shutting down", Some(1)).into_response(),
    }
}

/// CORS for the configured origins (`http.cors_allowed_origins`); none configured,
/// no CORS headers at all, so browsers keep other origins out.
pub(crate) fn cors<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    http: &HttpSettings,
) -> Router<S> {
    use axum::http::{HeaderName, HeaderValue, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = http
        .cors_allowed_origins
        .iter()
        .filter_map(
            |origin| match HeaderValue::from_str(origin.trim_end_matches('/')) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(
                        origin,
                        "ignoring an invalid http.cors_allowed_origins entry"
                    );
                    None
                }
            },
        )
        .collect();
    if origins.is_empty() {
        return routes;
    }
    routes.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// What the request timeout (and any other middleware failure) answers.
pub(crate) async fn middleware_failure(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::unavailable("the request took too long; try again", Some(1))
    } else {
        ApiError::Internal(format!("middleware failure: {error}"))
    }
}

/// A panic in a handler becomes a 500 with the usual body; the connection survives.
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

pub(crate) async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::ApiJson;
    use axum::routing::{get, post};
    use serde_json::Value;

    async fn panicking() -> &'static str {
        panic!("a bug in a handler")
    }

    /// The real layer stack around routes that misbehave, served on a real socket.
    async fn serve(http: HttpSettings) -> String {
        let routes: Router = Router::new()
            .route("/panic", get(panicking))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "done"
                }),
            )
            .route(
                "/echo",
                post(|ApiJson(body): ApiJson<Value>| async move { axum::Json(body) }),
            )
            .route("/ok", get(|| async { "ok" }));
        let app = apply(routes, &http);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn settings(max_concurrent_requests: usize) -> HttpSettings {
        HttpSettings {
            bind: "127.0.0.1:0".into(),
            max_body_bytes: 64,
            max_concurrent_requests,
            request_timeout_secs: 1,
            header_read_timeout_secs: 5,
            max_connections: 100,
            max_connections_per_client: 100,
            trusted_proxies: Vec::new(),
            cors_allowed_origins: Vec::new(),
            metrics_token: String::new(),
        }
    }

    async fn error(response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_panic_is_a_500_json_error_and_the_connection_survives() {
        let base = serve(settings(8)).await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let response = client.get(format!("{base}/panic")).send().await.unwrap();
        assert_eq!(error(response).await, (500, "INTERNAL_ERROR".to_owned()));
        let after = client.get(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(after.text().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn waiting_for_a_slot_counts_toward_the_request_timeout() {
        let base = serve(settings(1)).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let started = Instant::now();
        let (first, second) = tokio::join!(
            client.get(format!("{base}/slow")).send(),
            client.get(format!("{base}/slow")).send(),
        );
        let elapsed = started.elapsed();
        for response in [first.unwrap(), second.unwrap()] {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_eq!(
                error(response).await,
                (503, "SERVICE_UNAVAILABLE".to_owned())
            );
        }
        // One slot, 1 s timeout each: if waiting for the slot did not count, the
        // second request would take 2 s.
        assert!(elapsed < Duration::from_millis(1900), "{elapsed:?}");
    }

    #[tokio::test]
    async fn oversized_bodies_unknown_paths_and_wrong_methods_get_json_errors() {
        let base = serve(settings(8)).await;
        let client = reqwest::Client::new();
        let echo = |body: Value| client.post(format!("{base}/echo")).json(&body).send();
        let big = echo(serde_json::json!({"note": "x".repeat(60)}))
            .await
            .unwrap();
        assert_eq!(error(big).await, (413, "PAYLOAD_TOO_LARGE".to_owned()));
        let small = echo(serde_json::json!({"note": "x"})).await.unwrap();
        assert_eq!(small.status(), 200);
        let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
        assert_eq!(error(missing).await, (404, "NOT_FOUND".to_owned()));
        let wrong = client.delete(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(error(wrong).await, (405, "METHOD_NOT_ALLOWED".to_owned()));
    }
}
