//! Operator endpoints: external systems' health, manual recovery (seed 001), the
//! live supervision tree (DESIGN section 3) and its restart history. Admins only.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller};
use crate::actors::telemetry::EventQuery;
use crate::domain::{OrderId, Role, System};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::future::Future;
use std::time::Duration;

/// Longest an answer from the actor tree may take; a stuck supervisor must not hang
/// the operator's page.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

async fn ask<T>(question: impl Future<Output = T>) -> Result<T, ApiError> {
    tokio::time::timeout(CONTROL_TIMEOUT, question)
        .await
        .map_err(|_| {
            tracing::warn!("the actor tree did not answer in time");
            ApiError::unavailable("the runtime did not answer in time", Some(1))
        })
}

pub(crate) async fn health(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let services = ask(state.app.control.services_health()).await?;
    Ok(axum::Json(json!({ "services": services })).into_response())
}

pub(crate) async fn recover(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(service): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let system = System::parse(&service).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no service {service:?}; expected {}",
            System::names()
        ))
    })?;
    let health = ask(state.app.control.recover(system))
        .await?
        .ok_or_else(|| {
            ApiError::unavailable(format!("{service} is not running on this node"), Some(1))
        })?;
    tracing::info!(target: "audit", admin = %caller.user_id, admin_email = %caller.email,
        service = system.as_str(), "circuit closed by an operator");
    Ok(axum::Json(json!({
        "message": format!("{} circuit closed; waiting requests are being retried", system.as_str().to_uppercase()),
        "service": health,
    }))
    .into_response())
}

pub(crate) async fn supervision(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let tree = ask(state.app.control.supervision()).await?;
    Ok(axum::Json(tree).into_response())
}

/// `GET /api/telemetry/events?actor=&kind=&before=&limit=`: the restart history of
/// this node, newest first (see `telemetry::EventQuery`).
pub async fn events(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let page = ask(state.app.control.events(query))
        .await?
        .ok_or_else(|| ApiError::unavailable("telemetry did not answer", Some(1)))?;
    Ok(axum::Json(page).into_response())
}

/// `GET /api/telemetry/mailboxes`: depth, messages per second and time in mailbox
/// per actor family and member, over the last few seconds.
pub(crate) async fn mailboxes(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let view = ask(state.app.control.mailboxes())
        .await?
        .ok_or_else(|| ApiError::unavailable("telemetry did not answer", Some(1)))?;
    Ok(axum::Json(view).into_response())
}

/// `GET /api/telemetry/orders/{id}`: where an order's actor runs (node, shard) and,
/// if it is live on this node, its phase, in-flight step and attempt and next timer.
pub(crate) async fn order_actor(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = OrderId::parse(&id).ok_or_else(ApiError::order_not_found)?;
    let order = state.app.orders.find(&caller.viewer(), &id).await?;
    let found = ask(state.app.control.order_actor(&id))
        .await?
        .map_err(|e| ApiError::unavailable(e, Some(1)))?;
    let actor = found.actor;
    let shards = state.app.settings.bus.shards;
    Ok(axum::Json(json!({
        "orderId": id,
        "status": order.status,
        "node": found.node,
        "shard": id.shard(shards),
        "shards": shards,
        "live": actor.is_some(),
        "phase": actor.as_ref().map(|a| a.phase),
        "inFlight": actor.as_ref().and_then(|a| a.in_flight.clone()),
        "attempts": actor.as_ref().map(|a| a.attempts),
        "nextTimer": actor.as_ref().and_then(|a| a.next_timer.clone()),
    }))
    .into_response())
}
/// The cluster as this node sees it: every node heard from, when, the shards it
/// holds, its live order actors and its circuits.
pub(crate) async fn cluster(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let view = ask(state.app.control.cluster())
        .await?
        .ok_or_else(|| ApiError::unavailable("the cluster view is not available now", Some(1)))?;
    Ok(axum::Json(view).into_response())
}
