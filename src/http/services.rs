//! Operator endpoints: external systems' health, manual recovery (seed 001), the
//! live supervision tree (DESIGN section 3) and its restart history. Admins only.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller};
use crate::actors::telemetry::EventQuery;
use crate::domain::{Role, System};
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

pub async fn health(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let services = ask(state.app.control.services_health()).await?;
    Ok(axum::Json(json!({ "services": services })).into_response())
}

pub async fn recover(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(service): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let system = System::parse(&service).ok_or_else(|| {
        ApiError::NotFound(format!("no service {service:?}; expected cms, wms or ros"))
    })?;
    let health = ask(state.app.control.recover(system))
        .await?
        .ok_or_else(|| {
            ApiError::unavailable(format!("{service} is not running on this node"), Some(1))
        })?;
    tracing::info!(service = system.as_str(), "circuit closed by an operator");
    Ok(axum::Json(json!({
        "message": format!("{} circuit closed; waiting requests are being retried", system.as_str().to_uppercase()),
        "service": health,
    }))
    .into_response())
}

pub async fn supervision(
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
pub async fn mailboxes(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let view = ask(state.app.control.mailboxes())
        .await?
        .ok_or_else(|| ApiError::unavailable("telemetry did not answer", Some(1)))?;
    Ok(axum::Json(view).into_response())
}
