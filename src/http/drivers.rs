//! Driver endpoints (seed 000 section 13.1): drivers report where they are, read
//! back their own location and status, and find the orders assigned to them.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::domain::{Role, ValidationErrors};
use crate::service::drivers::DriverStatus;
use crate::store::DriverLocation;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Fastest plausible vehicle speed, km/h; anything above is a broken sensor.
const MAX_SPEED: f64 = 400.0;

fn number(body: &Value, key: &str) -> Option<Option<f64>> {
    match body.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_f64().filter(|n| n.is_finite()).map(Some),
    }
}

/// `{lat, lng, heading?, speed?}`, each checked, every bad field reported.
pub(crate) fn parse_location_report(
    body: &Value,
    driver: &crate::domain::UserId,
    now: DateTime<Utc>,
) -> Result<DriverLocation, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if !body.is_object() {
        errors.add("body", "must be a JSON object");
        return Err(errors);
    }
    let mut field =
        |key: &str, required: bool, range: std::ops::RangeInclusive<f64>, message: &str| {
            match number(body, key) {
                Some(Some(v)) if range.contains(&v) => Some(v),
                Some(None) if !required => None,
                Some(None) => {
                    errors.add(key, format!("is required; {message}"));
                    None
                }
                _ => {
                    errors.add(key, message.to_owned());
                    None
                }
            }
        };
    let lat = field(
        "lat",
        true,
        -90.0..=90.0,
        "must be a number between -90 and 90",
    );
    let lng = field(
        "lng",
        true,
        -180.0..=180.0,
        "must be a number between -180 and 180",
    );
    let heading = field(
        "heading",
        false,
        0.0..=360.0,
        "must be a number of degrees from 0 to 360",
    );
    let speed = field(
        "speed",
        false,
        0.0..=MAX_SPEED,
        "must be a number of km/h from 0 to 400",
    );
    match (lat, lng) {
        (Some(lat), Some(lng)) if errors.is_empty() => Ok(DriverLocation {
            driver_id: driver.clone(),
            lat,
            lng,
            heading,
            speed,
            updated_at: now,
        }),
        _ => Err(errors),
    }
}

pub(crate) async fn report_location(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Driver])?;
    let ApiJson(body) = body?;
    let location = parse_location_report(&body, &caller.user_id, Utc::now())?;
    state.app.drivers.report_location(&location).await?;
    Ok(axum::Json(location).into_response())
}

pub(crate) async fn location(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Driver])?;
    let location = state
        .app
        .drivers
        .location(&caller.user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no location reported yet".into()))?;
    Ok(axum::Json(location).into_response())
}

/// `GET /api/driver/orders`: the caller's work, the orders an admin assigned to them
/// that wait for pickup and those they carry.
pub async fn orders(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Driver])?;
    let work = state.app.orders.driver_work(&caller.viewer()).await?;
    Ok(axum::Json(json!({
        "readyForPickup": work.ready_for_pickup,
        "carrying": work.carrying,
        "truncated": work.truncated,
    }))
    .into_response())
}

pub(crate) async fn status(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Driver])?;
    let DriverStatus {
        user,
        location,
        online,
    } = state
        .app
        .drivers
        .status(&caller.user_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("this account no longer exists".into()))?;
    Ok(axum::Json(json!({
        "driverId": user.id,
        "name": user.name,
        "email": user.email,
        "status": if online { "online" } else { "offline" },
        "location": location,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    #[test]
    fn location_reports_are_validated_field_by_field() {
        let driver = UserId::from_trusted("usr_d");
        let now = Utc::now();
        let ok =
            parse_location_report(&json!({"lat": 6.9, "lng": 79.8, "speed": 30}), &driver, now)
                .unwrap();
        assert_eq!(
            (ok.lat, ok.lng, ok.speed, ok.heading),
            (6.9, 79.8, Some(30.0), None)
        );

        let err = parse_location_report(
            &json!({"lat": 91, "heading": "north", "speed": -1}),
            &driver,
            now,
        )
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["lat", "lng", "heading", "speed"]);
        assert!(parse_location_report(&json!([1, 2]), &driver, now).is_err());
    }
}
