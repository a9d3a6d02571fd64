//! Order routes (seed 000 sections 8.1, 8.6 and 13.1; seed 001 for the status view).
//!
//! Idempotent intake: a request with an `Idempotency-Key` that the same customer used
//! before creates nothing and is answered `200 OK` (not `202`) with the earlier order:
//! the same `orderId` and `createdAt`, its current `status`, and the header
//! `Idempotency-Replayed: true`. The key is stored with a fingerprint of the request
//! body (SHA-256 of its canonical JSON: key order and spacing do not matter), and a
//! key reused with a different body is refused with 422 `IDEMPOTENCY_KEY_REUSED`, as
//! the well-known payment APIs do.
//!
//! Orders of other customers answer 404, exactly like orders that do not exist, so
//! order ids cannot be probed.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::domain::progress::status_view;
use crate::domain::{NewOrder, Order, OrderId, OrderStatus, Role, UserId, ValidationErrors};
use crate::store::{IdempotencyKey, OrderCursor, OrderQuery};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest cursor we could have issued, with room to spare.
const MAX_CURSOR_LEN: usize = 512;
const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// The optional `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

/// SHA-256 of the body's canonical JSON (object keys sorted, no spacing), in hex.
pub(crate) fn fingerprint(body: &Value) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(value, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut text = String::new();
    canonical(body, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn encode_cursor(cursor: &OrderCursor) -> Result<String, ApiError> {
    let json = serde_json::to_vec(cursor).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub(crate) fn decode_cursor(raw: &str) -> Result<OrderCursor, ApiError> {
    let invalid = || ApiError::BadRequest("cursor is not one this API issued".into());
    if raw.len() > MAX_CURSOR_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
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

pub(crate) async fn place(
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
    let fingerprint = key.as_ref().map(|_| fingerprint(&body));
    let idempotency = key
        .as_deref()
        .zip(fingerprint.as_deref())
        .map(|(key, fingerprint)| IdempotencyKey { key, fingerprint });
    let placed = state
        .app
        .orders
        .place(&caller.user_id, request, idempotency)
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

pub(crate) async fn list(
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

pub(crate) async fn detail(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let (order, events) = state.app.orders.history(&caller.viewer(), &id).await?;
    let mut document =
        serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Value::Object(fields) = &mut document {
        fields.insert("history".into(), json!(events.as_slice()));
    }
    Ok(axum::Json(document).into_response())
}

pub(crate) async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let (order, events) = state.app.orders.history(&caller.viewer(), &id).await?;
    Ok(axum::Json(status_view(&order, &events)).into_response())
}

/// The answer to a command that changed an order: where it stands now, in words.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Changed<'a> {
    order_id: &'a OrderId,
    status: OrderStatus,
    /// Shown by the commands that concern the driver (assignment).
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<&'a UserId>,
    message: &'a str,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl<'a> Changed<'a> {
    fn of(order: &'a Order, message: &'a str) -> Self {
        Self {
            order_id: &order.order_id,
            status: order.status,
            driver_id: None,
            message,
            updated_at: order.updated_at,
        }
    }
}

fn changed(order: &Order, message: &str) -> Response {
    axum::Json(Changed::of(order, message)).into_response()
}

/// Drivers cannot cancel: they are not customers. 409 once out for delivery.
pub(crate) async fn cancel(
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
        .filter(|s| s.is_delivery_report());
    match status {
        Some(status) => Ok(status),
        None => {
            errors.add("status", "must be \"OUT_FOR_DELIVERY\" or \"DELIVERED\"");
            Err(errors)
        }
    }
}

pub(crate) async fn delivery(
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
pub(crate) async fn assign(
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
    Ok(axum::Json(Changed {
        driver_id: order.driver_id.as_ref(),
        ..Changed::of(&order, "Assigned to a driver")
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

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
    fn the_fingerprint_ignores_key_order_and_spacing_but_not_content() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "z"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"z","b":[1,{"x":1,"y":2}]}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":"z","b":[1,{"x":1,"y":3}]}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a).len(), 64);
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
