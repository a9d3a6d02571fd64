//! Order routes (seed 000 sections 8.1, 8.6 and 13.1; seed 001 for the status view).
//!
//! Idempotent intake: a request with an `Idempotency-Key` that the same customer used
//! before creates nothing and is answered `200 OK` (not `202`) with the earlier order:
//! the same `orderId` and `createdAt`, its current `status`, and the header
//! `Idempotency-Replayed: true`. The body of the replay is not compared with the
//! original; the key alone identifies the request.
//!
//! Orders of other customers answer 404, exactly like orders that do not exist, so
//! order ids cannot be probed.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::domain::saga::{StepView, next_operation, step_views};
use crate::domain::{
    NewOrder, Order, OrderEvent, OrderId, OrderStatus, Role, StepState, System, UserId,
    ValidationErrors,
};
use crate::store::{OrderCursor, OrderQuery};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest cursor we could have issued, with room to spare.
const MAX_CURSOR_LEN: usize = 512;
const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// The optional `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let valid = (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&bytes.len())
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if !valid {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

pub fn encode_cursor(cursor: &OrderCursor) -> Result<String, ApiError> {
    let json = serde_json::to_vec(cursor).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub fn decode_cursor(raw: &str) -> Result<OrderCursor, ApiError> {
    let invalid = || ApiError::BadRequest("cursor is not one this API issued".into());
    if raw.len() > MAX_CURSOR_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_list_params(params: ListParams) -> Result<OrderQuery, ApiError> {
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(OrderStatus::parse(raw).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be one of the order statuses, not {raw:?}"
            ))
        })?),
    };
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest("limit must be a whole number from 1 to 100".into())
            })?,
    };
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(decode_cursor(raw)?),
    };
    Ok(OrderQuery {
        customer: None,
        driver: None,
        status,
        limit,
        after,
    })
}

/// Malformed ids cannot name an order: 404, like any order the caller cannot see.
fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).ok_or_else(ApiError::order_not_found)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    order_id: &'a OrderId,
    status: OrderStatus,
    message: &'a str,
    customer_id: &'a crate::domain::UserId,
    created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn place(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Client, Role::Admin])?;
    let key = idempotency_key(&headers)?;
    let ApiJson(body) = body?;
    // `customerId` in the body is ignored: the caller is the customer.
    let request = NewOrder::parse(&body)?;
    let placed = state
        .app
        .orders
        .place(&caller.user_id, request, key.as_deref())
        .await?;
    let order = &placed.order;
    let location = HeaderValue::from_str(&format!("/api/orders/{}", order.order_id))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (status, message) = if placed.replayed {
        (
            StatusCode::OK,
            "Order already received for this Idempotency-Key",
        )
    } else {
        (StatusCode::ACCEPTED, "Order received and being processed")
    };
    let body = Accepted {
        order_id: &order.order_id,
        status: order.status,
        message,
        customer_id: &order.customer_id,
        created_at: order.created_at,
    };
    let mut response = (status, [(header::LOCATION, location)], axum::Json(body)).into_response();
    if placed.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Client, Role::Admin])?;
    let query = parse_list_params(params)?;
    let page = state.app.orders.list(&caller.viewer(), query).await?;
    let next_cursor = page.next.as_ref().map(encode_cursor).transpose()?;
    Ok(axum::Json(json!({"orders": page.orders, "nextCursor": next_cursor})).into_response())
}

pub async fn detail(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let (order, events) = state.app.orders.history(&caller.viewer(), &id).await?;
    let mut document =
        serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Value::Object(fields) = &mut document {
        fields.insert("history".into(), json!(events));
    }
    Ok(axum::Json(document).into_response())
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub completed: usize,
    pub total: usize,
    pub percentage: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Processing {
    pub current_stage: String,
    pub progress: Progress,
}

/// Seed 001's status view.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub processing: Processing,
    pub steps: Vec<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// What the order is busy with: the system working on it (`CMS_PROCESSING`…),
/// `COMPENSATING`, `COMPLETED` once processing is done and the order awaits a
/// driver, or the status itself afterwards.
fn current_stage(order: &Order) -> String {
    if order.status == OrderStatus::Compensating {
        return "COMPENSATING".into();
    }
    match next_operation(order) {
        Some(op) if !op.is_compensation() => {
            format!("{}_PROCESSING", op.system().as_str().to_uppercase())
        }
        _ if order.status == OrderStatus::ReadyForDelivery => "COMPLETED".into(),
        _ => order.status.as_str().into(),
    }
}

pub fn status_view(order: &Order, events: &[OrderEvent]) -> StatusView {
    let total = System::ALL.len();
    let completed = System::ALL
        .into_iter()
        .filter(|s| order.integration_status.get(*s) == StepState::Completed)
        .count();
    let percentage = u32::try_from(completed * 100 / total).unwrap_or(100);
    StatusView {
        order_id: order.order_id.clone(),
        status: order.status,
        processing: Processing {
            current_stage: current_stage(order),
            progress: Progress {
                completed,
                total,
                percentage,
            },
        },
        steps: step_views(order, events),
        failure_reason: order.failure_reason.clone(),
    }
}

pub async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let (order, events) = state.app.orders.history(&caller.viewer(), &id).await?;
    Ok(axum::Json(status_view(&order, &events)).into_response())
}

fn changed(order: &Order, message: &str) -> Response {
    axum::Json(json!({
        "orderId": order.order_id,
        "status": order.status,
        "message": message,
        "updatedAt": order.updated_at,
    }))
    .into_response()
}

/// Drivers cannot cancel: they are not customers. 409 once out for delivery.
pub async fn cancel(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Client, Role::Admin])?;
    let id = order_id(&id)?;
    let order = state.app.orders.cancel(&caller.viewer(), &id).await?;
    let message = match order.status {
        OrderStatus::Cancelled => "Order cancelled",
        _ => "Cancellation accepted; completed steps are being undone",
    };
    Ok(changed(&order, message))
}

fn parse_delivery_status(body: &Value) -> Result<OrderStatus, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(OrderStatus::parse)
        .filter(|s| matches!(s, OrderStatus::OutForDelivery | OrderStatus::Delivered));
    match status {
        Some(status) => Ok(status),
        None => {
            errors.add("status", "must be \"OUT_FOR_DELIVERY\" or \"DELIVERED\"");
            Err(errors)
        }
    }
}

pub async fn delivery(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Driver, Role::Admin])?;
    let id = order_id(&id)?;
    let ApiJson(body) = body?;
    let status = parse_delivery_status(&body)?;
    let order = state
        .app
        .orders
        .deliver(&caller.viewer(), &id, status)
        .await?;
    let message = match order.status {
        OrderStatus::Delivered => "Delivered",
        _ => "Out for delivery",
    };
    Ok(changed(&order, message))
}

/// `{"driverId": "usr_..."}`: an account id as the API hands them out.
fn parse_assignment(body: &Value) -> Result<UserId, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let plausible = |id: &&str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match body
        .get("driverId")
        .and_then(Value::as_str)
        .filter(plausible)
    {
        Some(id) => Ok(UserId::from_trusted(id)),
        None => {
            errors.add(
                "driverId",
                "is required and must be the id of a driver's account",
            );
            Err(errors)
        }
    }
}

/// Admins give an order to a driver (`POST /api/orders/{id}/assign`); the driver
/// then finds it under `GET /api/driver/orders` and alone may move it on.
pub async fn assign(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = order_id(&id)?;
    let ApiJson(body) = body?;
    let driver = parse_assignment(&body)?;
    let order = state
        .app
        .orders
        .assign(&caller.viewer(), &id, &driver)
        .await?;
    tracing::info!(order_id = %order.order_id, driver_id = %driver, admin = %caller.user_id,
        "order assigned to a driver");
    Ok(axum::Json(json!({
        "orderId": order.order_id,
        "status": order.status,
        "driverId": order.driver_id,
        "message": "Assigned to a driver",
        "updatedAt": order.updated_at,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::saga::{SagaInput, decide};
    use crate::domain::{
        CustomerProfile, Location, Operation, OperationOutcome, PackageDetails, Reservation, UserId,
    };
    use chrono::Utc;

    fn received() -> (Order, OrderEvent) {
        let loc = Location {
            lat: 1.0,
            lng: 2.0,
            address: None,
        };
        let request = NewOrder {
            pickup_location: loc.clone(),
            delivery_address: loc,
            package_details: PackageDetails {
                weight: 1.0,
                dimensions: None,
                description: None,
                fragile: false,
            },
            scheduled_pickup_time: None,
            special_instructions: None,
        };
        Order::receive(
            OrderId::parse("ORD-20260204-ABC").unwrap(),
            UserId::from_trusted("usr_1"),
            request,
            Utc::now(),
        )
    }

    #[test]
    fn status_view_has_the_seed_001_shape_and_follows_progress() {
        let (order, first) = received();
        let view = serde_json::to_value(status_view(&order, std::slice::from_ref(&first))).unwrap();
        assert_eq!(view["orderId"], "ORD-20260204-ABC");
        assert_eq!(view["status"], "RECEIVED");
        assert_eq!(view["processing"]["currentStage"], "CMS_PROCESSING");
        assert_eq!(
            view["processing"]["progress"],
            json!({"completed": 0, "total": 3, "percentage": 0})
        );
        assert_eq!(view["steps"][0]["step"], "CMS_VERIFICATION");
        assert_eq!(view["steps"][0]["status"], "IN_PROGRESS");
        assert!(view["steps"][0]["timestamp"].is_null());
        assert!(view.get("failureReason").is_none());

        let validated = decide(
            &order,
            SagaInput::Outcome(
                Operation::ValidateCustomer,
                OperationOutcome::CustomerValidated(CustomerProfile {
                    name: "John".into(),
                    tier: "gold".into(),
                }),
            ),
            Utc::now(),
        )
        .unwrap();
        let reserved = decide(
            &validated.order,
            SagaInput::Outcome(
                Operation::ReserveInventory,
                OperationOutcome::InventoryReserved(Reservation {
                    warehouse: "WH-1".into(),
                    picking_location: "A-1".into(),
                }),
            ),
            Utc::now(),
        )
        .unwrap();
        let events = [vec![first], validated.events, reserved.events.clone()].concat();
        let view = serde_json::to_value(status_view(&reserved.order, &events)).unwrap();
        assert_eq!(view["processing"]["currentStage"], "ROS_PROCESSING");
        assert_eq!(view["processing"]["progress"]["completed"], 2);
        assert_eq!(view["processing"]["progress"]["percentage"], 66);
        assert_eq!(view["steps"][1]["status"], "COMPLETED");
        assert!(view["steps"][1]["timestamp"].is_string());

        let cancelling = decide(&reserved.order, SagaInput::Cancel, Utc::now()).unwrap();
        let view = status_view(&cancelling.order, &events);
        assert_eq!(view.processing.current_stage, "COMPENSATING");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_a_400() {
        let cursor = OrderCursor {
            created_at: Utc::now(),
            order_id: OrderId::parse("ORD-20260204-XYZ").unwrap(),
        };
        let encoded = encode_cursor(&cursor).unwrap();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_cursor(&encoded).unwrap(), cursor);
        let json_but_wrong = URL_SAFE_NO_PAD.encode(b"{\"a\":1}");
        for garbage in ["", "!!!", "e30", json_but_wrong.as_str(), &"A".repeat(2000)] {
            let err = decode_cursor(garbage).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{garbage:?}");
        }
    }

    #[test]
    fn list_params_are_checked() {
        let parse = |status: Option<&str>, limit: Option<&str>| {
            parse_list_params(ListParams {
                status: status.map(str::to_owned),
                limit: limit.map(str::to_owned),
                cursor: None,
            })
        };
        let q = parse(None, None).unwrap();
        assert_eq!(q.limit, DEFAULT_PAGE);
        assert_eq!(q.status, None);
        let q = parse(Some("DELIVERED"), Some("100")).unwrap();
        assert_eq!((q.status, q.limit), (Some(OrderStatus::Delivered), 100));
        for (status, limit) in [
            (Some("PROCESSING"), None),
            (None, Some("0")),
            (None, Some("101")),
            (None, Some("x")),
        ] {
            assert!(parse(status, limit).is_err(), "{status:?} {limit:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_128() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
            h
        };
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            idempotency_key(&headers("order-2026-02-04_1"))
                .unwrap()
                .as_deref(),
            Some("order-2026-02-04_1")
        );
        assert!(idempotency_key(&headers(&"k".repeat(128))).is_ok());
        for bad in ["", "has space", &"k".repeat(129)] {
            assert!(idempotency_key(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn delivery_accepts_only_the_two_driver_statuses() {
        assert_eq!(
            parse_delivery_status(&json!({"status": "DELIVERED"})).unwrap(),
            OrderStatus::Delivered
        );
        for bad in [
            json!({"status": "CANCELLED"}),
            json!({}),
            json!({"status": 1}),
            json!([]),
        ] {
            assert!(parse_delivery_status(&bad).is_err());
        }
    }
}
