//! The HTTP API of DESIGN section 5 (axum).
//!
//! Every answer that is not a success has the body of [`error::ApiError`]; every
//! request runs inside its own tracing span, is counted in the HTTP metrics, is
//! bounded in body size, time and concurrency, and cannot take the connection down
//! with a panic. The server must be started with
//! `into_make_service_with_connect_info::<SocketAddr>()` for per-address login
//! limits.

pub mod auth_routes;
pub mod drivers;
pub mod error;
pub mod extract;
pub mod health;
pub mod layers;
pub mod orders;
pub mod services;

use crate::actors::RuntimeControl;
use crate::auth::TokenKeys;
use crate::bus::SharedBus;
use crate::config::Settings;
use crate::service::OrderService;
use crate::store::SharedStore;
use auth_routes::LoginLimiter;
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath};
use axum::http::Request;
use axum::middleware;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

/// What the rest of the runtime hands to the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    pub bus: SharedBus,
    pub orders: OrderService,
    pub control: Arc<dyn RuntimeControl>,
    pub metrics: PrometheusHandle,
}

/// The handlers' state: the application plus what only the HTTP layer needs.
#[derive(Clone)]
pub struct ApiState {
    pub app: AppState,
    pub tokens: Arc<TokenKeys>,
    pub login_limiter: Arc<LoginLimiter>,
}

impl ApiState {
    pub fn new(app: AppState) -> Self {
        let tokens = Arc::new(TokenKeys::from_settings(&app.settings.auth));
        let login_limiter = Arc::new(LoginLimiter::new(app.settings.auth.login_per_minute));
        Self {
            app,
            tokens,
            login_limiter,
        }
    }
}

impl FromRef<ApiState> for Arc<TokenKeys> {
    fn from_ref(state: &ApiState) -> Self {
        state.tokens.clone()
    }
}

/// One span per request, named by route template. Only the path is recorded, never
/// the query string: the WebSocket endpoint takes its token there.
fn request_span(request: &Request<Body>) -> Span {
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

/// Every route of DESIGN section 5 except `/ws`, with the layers described above.
pub fn router(state: AppState) -> Router {
    let http = &state.settings.http;
    let timeout = Duration::from_secs(http.request_timeout_secs.max(1));
    let body_limit = http.max_body_bytes;
    let slots = Arc::new(Semaphore::new(
        http.max_concurrent_requests
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    let api = ApiState::new(state);

    Router::new()
        .route("/api/auth/register", post(auth_routes::register))
        .route("/api/auth/login", post(auth_routes::login))
        .route("/api/orders", post(orders::place).get(orders::list))
        .route("/api/orders/{id}", get(orders::detail))
        .route("/api/orders/{id}/status", get(orders::status))
        .route("/api/orders/{id}/cancel", post(orders::cancel))
        .route("/api/orders/{id}/delivery", post(orders::delivery))
        .route(
            "/api/driver/location",
            get(drivers::location).post(drivers::report_location),
        )
        .route("/api/driver/status", get(drivers::status))
        .route("/api/services/health", get(services::health))
        .route("/api/services/{service}/recover", post(services::recover))
        .route("/api/telemetry/supervision", get(services::supervision))
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        // WebSocket tracking (DESIGN section 7) goes here, before the layers, so it
        // gets the same tracing, metrics and panic handling:
        //     .route("/ws", get(ws::track))
        // with `ws::track` taking `State<ApiState>` and authenticating the token from
        // the query or header with `extract::authenticate(&state.tokens, token)`.
        .fallback(layers::unknown_route)
        .method_not_allowed_fallback(layers::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(middleware::from_fn(layers::record_metrics))
                .layer(CatchPanicLayer::custom(layers::panic_response))
                .layer(HandleErrorLayer::new(layers::middleware_failure))
                .layer(TimeoutLayer::new(timeout))
                .layer(middleware::from_fn_with_state(
                    slots,
                    layers::limit_concurrency,
                ))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .with_state(api)
}
