//! Dead letters (DESIGN section 8): what the bus gave up on, for operators to read
//! and send back once the cause is fixed. Admins only.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller};
use crate::domain::Role;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    limit: Option<usize>,
}

pub(crate) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let letters = state.app.bus.dead_letters(limit).await?;
    Ok(Json(json!({ "deadLetters": letters })))
}

pub(crate) async fn redrive(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let moved = state.app.bus.redrive(&queue).await?;
    tracing::info!(target: "audit", admin = %caller.user_id, admin_email = %caller.email,
        queue = %queue, redriven = moved, "dead letters redriven by an operator");
    Ok(Json(json!({ "queue": queue, "redriven": moved })))
}
