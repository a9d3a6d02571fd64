//! The HTTP API of DESIGN section 5 (axum).
//!
//! Every answer that is not a success has the body of [`error::ApiError`]; every
//! request runs inside its own tracing span, is counted in the HTTP metrics, is
//! bounded in body size, time and concurrency, and cannot take the connection down
//! with a panic. [`server::serve`] runs it: connection limits, and the peer address
//! (`ConnectInfo<SocketAddr>`) that the per-address limits need.

pub(crate) mod auth_routes;
pub(crate) mod dead_letters;
pub(crate) mod drivers;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod health;
pub(crate) mod layers;
pub(crate) mod limits;
pub(crate) mod orders;
pub(crate) mod pages;
pub(crate) mod server;
pub(crate) mod services;
pub(crate) mod ws;

use crate::actors::RuntimeControl;
use crate::auth::Sessions;
use crate::bus::SharedBus;
use crate::config::Settings;
use crate::service::{DriverService, OrderService};
use axum::Router;
use axum::extract::FromRef;
use axum::routing::{delete, get, post};
use limits::Limits;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// What the rest of the runtime hands to the HTTP layer.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) settings: Arc<Settings>,
    pub(crate) bus: SharedBus,
    pub(crate) orders: OrderService,
    pub(crate) drivers: DriverService,
    /// Accounts and their login sessions.
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) control: Arc<dyn RuntimeControl>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) tracking: ws::Tracking,
}

/// Orders by status, and when they were counted.
pub(crate) type OrderCounts = (
    tokio::time::Instant,
    std::collections::HashMap<crate::domain::OrderStatus, u64>,
);

/// Dead letters waiting per queue, and when they were counted.
pub(crate) type DeadLetterDepths = (tokio::time::Instant, Vec<(String, u64)>);

/// The handlers' state: the application plus what only the HTTP layer needs, behind
/// one `Arc` because axum clones the state for every request.
#[derive(Clone)]
pub(crate) struct ApiState(Arc<ApiShared>);

pub(crate) struct ApiShared {
    pub(crate) app: AppState,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) limits: Arc<Limits>,
    /// WebSocket sessions open per account on this node.
    pub(crate) ws_sessions: Arc<dashmap::DashMap<crate::domain::UserId, usize>>,
    /// The last order count by status and when it was read (see `health::metrics`).
    pub(crate) order_counts: Arc<tokio::sync::Mutex<Option<OrderCounts>>>,
    /// The last dead-letter depths per queue and when they were read.
    pub(crate) dead_letter_depths: Arc<tokio::sync::Mutex<Option<DeadLetterDepths>>>,
}

impl ApiState {
    pub fn new(app: AppState) -> Self {
        let sessions = app.sessions.clone();
        let limits = Arc::new(Limits::new(&app.settings));
        Self(Arc::new(ApiShared {
            app,
            sessions,
            limits,
            ws_sessions: Arc::default(),
            order_counts: Arc::default(),
            dead_letter_depths: Arc::default(),
        }))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

impl FromRef<ApiState> for Arc<Sessions> {
    fn from_ref(state: &ApiState) -> Self {
        state.sessions.clone()
    }
}

/// Every route of DESIGN section 5, with the layers described above.
pub(crate) fn router(state: AppState) -> Router {
    let http = state.settings.http.clone();
    let api = ApiState::new(state);

    let routes = Router::new()
        .route("/api/auth/register", post(auth_routes::register))
        .route("/api/auth/login", post(auth_routes::login))
        .route("/api/auth/refresh", post(auth_routes::refresh))
        .route("/api/auth/logout", post(auth_routes::logout))
        .route(
            "/api/admin/users/{id}/sessions",
            delete(auth_routes::revoke_user_sessions),
        )
        .route("/api/orders", post(orders::place).get(orders::list))
        .route("/api/orders/{id}", get(orders::detail))
        .route("/api/orders/{id}/status", get(orders::status))
        .route("/api/orders/{id}/cancel", post(orders::cancel))
        .route("/api/orders/{id}/delivery", post(orders::delivery))
        .route("/api/orders/{id}/assign", post(orders::assign))
        .route(
            "/api/driver/location",
            get(drivers::location).post(drivers::report_location),
        )
        .route("/api/driver/status", get(drivers::status))
        .route("/api/driver/orders", get(drivers::orders))
        .route("/api/services/health", get(services::health))
        .route("/api/services/{service}/recover", post(services::recover))
        .route("/api/telemetry/supervision", get(services::supervision))
        .route("/api/telemetry/events", get(services::events))
        .route("/api/telemetry/mailboxes", get(services::mailboxes))
        .route("/api/telemetry/orders/{id}", get(services::order_actor))
        .route("/api/cluster", get(services::cluster))
        .route("/api/admin/dlq", get(dead_letters::list))
        .route(
            "/api/admin/dlq/{queue}/redrive",
            post(dead_letters::redrive),
        )
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/ws", get(ws::handler))
        .merge(pages::router());
    let routes = layers::apply(routes, &http)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            limits::charge,
        ))
        .layer(axum::middleware::from_fn(limits::security_headers));
    layers::cors(routes, &http).with_state(api)
}
