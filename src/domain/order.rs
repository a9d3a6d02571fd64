//! The order document and the intake request (seed 000 sections 8.1 and 12).
//!
//! Intake is parsed from a raw JSON value rather than a derived struct so that every
//! bad field is reported at once, with its path, in both location forms the seeds use.

use super::ids::{OrderId, UserId};
use super::saga::{Operation, StepState, System};
use super::status::OrderStatus;
use super::validation::ValidationErrors;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const MAX_TEXT_LEN: usize = 500;

/// A place, kept in the form the client wrote it in (seed 000 uses both), because the
/// route optimiser receives the order's locations as the client sent them (seed 000
/// 6.3) and the API shows them that way too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "LocationWire", into = "LocationWire")]
pub struct Location {
    pub(crate) lat: f64,
    pub(crate) lng: f64,
    pub(crate) address: Option<String>,
    pub(crate) form: LocationForm,
}

/// The two shapes of a location in the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocationForm {
    /// `{lat, lng, address}` (seed 000 13.1)
    #[default]
    Flat,
    /// `{address, coordinates: {lat, lng}}` (seed 000 8.1)
    Nested,
}

impl Location {
    /// A location in the flat form.
    pub fn at(lat: f64, lng: f64, address: Option<String>) -> Self {
        Self {
            lat,
            lng,
            address,
            form: LocationForm::Flat,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Coordinates {
    lat: f64,
    lng: f64,
}

/// How a location is written: untagged, the nested form recognised by its
/// `coordinates` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum LocationWire {
    Nested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        coordinates: Coordinates,
    },
    Flat {
        lat: f64,
        lng: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
}

impl From<LocationWire> for Location {
    fn from(wire: LocationWire) -> Self {
        match wire {
            LocationWire::Nested {
                address,
                coordinates: Coordinates { lat, lng },
            } => Self {
                lat,
                lng,
                address,
                form: LocationForm::Nested,
            },
            LocationWire::Flat { lat, lng, address } => Self::at(lat, lng, address),
        }
    }
}

impl From<Location> for LocationWire {
    fn from(location: Location) -> Self {
        let Location {
            lat,
            lng,
            address,
            form,
        } = location;
        match form {
            LocationForm::Nested => Self::Nested {
                address,
                coordinates: Coordinates { lat, lng },
            },
            LocationForm::Flat => Self::Flat { lat, lng, address },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageDetails {
    pub weight: f64,
    /// Seed 000 shows both `"30x20x10"` and `{length, width, height}`: kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub fragile: bool,
}

/// A validated intake request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub pickup_location: Location,
    pub delivery_address: Location,
    pub package_details: PackageDetails,
    pub scheduled_pickup_time: Option<DateTime<Utc>>,
    pub special_instructions: Option<String>,
}

fn number(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key)
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite())
}

fn optional_text(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut ValidationErrors,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_TEXT_LEN => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.add(path, "must be at most 500 characters");
            None
        }
        Some(_) => {
            errors.add(path, "must be a string");
            None
        }
    }
}

fn parse_location(value: Option<&Value>, path: &str, errors: &mut ValidationErrors) -> Location {
    let fallback = Location::at(0.0, 0.0, None);
    let Some(obj) = value.and_then(Value::as_object) else {
        errors.add(path, "is required and must be an object");
        return fallback;
    };
    // Seed 000 8.1 nests coordinates; seed 000 13.1 puts lat/lng at the top.
    let (coords, coords_path, form) = match obj.get("coordinates").and_then(Value::as_object) {
        Some(inner) => (inner, format!("{path}.coordinates"), LocationForm::Nested),
        None => (obj, path.to_owned(), LocationForm::Flat),
    };
    let address = optional_text(obj, "address", &format!("{path}.address"), errors);
    let mut coordinate = |key: &str, limit: f64| match number(coords, key) {
        Some(v) if (-limit..=limit).contains(&v) => v,
        Some(_) => {
            errors.add(
                format!("{coords_path}.{key}"),
                format!("must be between -{limit} and {limit}"),
            );
            0.0
        }
        None => {
            errors.add(
                format!("{coords_path}.{key}"),
                "is required and must be a number",
            );
            0.0
        }
    };
    let lat = coordinate("lat", 90.0);
    let lng = coordinate("lng", 180.0);
    Location {
        lat,
        lng,
        address,
        form,
    }
}

fn parse_package(value: Option<&Value>, errors: &mut ValidationErrors) -> PackageDetails {
    let mut package = PackageDetails {
        weight: 0.0,
        dimensions: None,
        description: None,
        fragile: false,
    };
    let Some(obj) = value.and_then(Value::as_object) else {
        errors.add("packageDetails", "is required and must be an object");
        return package;
    };
    match number(obj, "weight") {
        Some(w) if w > 0.0 && w <= 100_000.0 => package.weight = w,
        Some(_) => errors.add(
            "packageDetails.weight",
            "must be greater than 0 (kg, at most 100000)",
        ),
        None => errors.add("packageDetails.weight", "is required and must be a number"),
    }
    package.description = optional_text(obj, "description", "packageDetails.description", errors);
    package.dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 100 => Some(Value::String(s.clone())),
        Some(Value::Object(dims))
            if dims.len() <= 8
                && dims.iter().all(|(k, v)| {
                    // Plain names only: `$` or `.` in a key is an operator to MongoDB.
                    !k.is_empty()
                        && k.len() <= 32
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && v.as_f64().is_some_and(|n| n >= 0.0)
                }) =>
        {
            Some(Value::Object(dims.clone()))
        }
        Some(_) => {
            errors.add(
                "packageDetails.dimensions",
                "must be a string like \"30x20x10\" or an object of non-negative numbers",
            );
            None
        }
    };
    match obj.get("fragile") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => package.fragile = *b,
        Some(_) => errors.add("packageDetails.fragile", "must be a boolean"),
    }
    package
}

impl NewOrder {
    pub fn parse(body: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let Some(obj) = body.as_object() else {
            errors.add("body", "must be a JSON object");
            return Err(errors);
        };
        let pickup_location =
            parse_location(obj.get("pickupLocation"), "pickupLocation", &mut errors);
        let delivery_address =
            parse_location(obj.get("deliveryAddress"), "deliveryAddress", &mut errors);
        let package_details = parse_package(obj.get("packageDetails"), &mut errors);
        let scheduled_pickup_time = match obj.get("scheduledPickupTime") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    errors.add("scheduledPickupTime", "must be an RFC 3339 date-time");
                    None
                }
            },
            Some(_) => {
                errors.add(
                    "scheduledPickupTime",
                    "must be an RFC 3339 date-time string",
                );
                None
            }
        };
        let special_instructions = optional_text(
            obj,
            "specialInstructions",
            "specialInstructions",
            &mut errors,
        );
        errors.finish(|| Self {
            pickup_location,
            delivery_address,
            package_details,
            scheduled_pickup_time,
            special_instructions,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerProfile {
    pub name: String,
    pub tier: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub warehouse: String,
    /// Absent when the warehouse does not name one (seed 000 6.4 answers
    /// `ACK|WH-001|INVENTORY_RESERVED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picking_location: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Waypoint {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The optimiser's handle for cancelling the route. Seed 000's optimiser names
    /// none; such a route has nothing to cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    pub waypoints: Vec<Waypoint>,
    pub distance: f64,
    pub eta: String,
}

/// Per-system progress, the seed's `integrationStatus {cms, wms, ros}`: one state
/// per system of `System::ALL`, written as an object keyed by the systems' names in
/// that order. Every system must be present when read; other keys are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct IntegrationStatus([StepState; System::ALL.len()]);

impl IntegrationStatus {
    pub(crate) fn get(&self, system: System) -> StepState {
        self.0.get(system.index()).copied().unwrap_or_default()
    }

    pub(crate) fn set(&mut self, system: System, state: StepState) {
        if let Some(slot) = self.0.get_mut(system.index()) {
            *slot = state;
        }
    }
}

impl Serialize for IntegrationStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(System::ALL.len()))?;
        for system in System::ALL {
            map.serialize_entry(system.as_str(), &self.get(system))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for IntegrationStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct States;
        impl<'de> serde::de::Visitor<'de> for States {
            type Value = IntegrationStatus;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "the state of each of {}", System::names())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut states = IntegrationStatus::default();
                let mut seen = [false; System::ALL.len()];
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match System::parse(&key) {
                        Some(system) => {
                            states.set(system, map.next_value()?);
                            if let Some(seen) = seen.get_mut(system.index()) {
                                *seen = true;
                            }
                        }
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                match System::ALL
                    .into_iter()
                    .find(|s| seen.get(s.index()) != Some(&true))
                {
                    Some(missing) => Err(serde::de::Error::missing_field(missing.as_str())),
                    None => Ok(states),
                }
            }
        }
        deserializer.deserialize_map(States)
    }
}

/// An undo in progress: what the order ends as, why, and the compensating operations
/// still to run, in order. Persisted so that a restarted node finishes the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compensation {
    pub(crate) outcome: OrderStatus,
    pub(crate) reason: String,
    pub(crate) remaining: Vec<Operation>,
}

/// The order document. `version` is bumped on every write and used for
/// compare-and-set; `seq` is the sequence number of the last event in its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub status: OrderStatus,
    pub(crate) pickup_location: Location,
    pub(crate) delivery_address: Location,
    pub(crate) package_details: PackageDetails,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scheduled_pickup_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) special_instructions: Option<String>,
    pub(crate) integration_status: IntegrationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) customer: Option<CustomerProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) warehouse: Option<Reservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) route: Option<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) compensation: Option<Compensation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<UserId>,
    pub(crate) created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
    pub seq: u64,
}

/// One entry of an order's event log: the audit trail and the source of WebSocket
/// replay. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub seq: u64,
    pub status: OrderStatus,
    pub message: String,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub data: Value,
}

impl Order {
    /// The order as it is born: RECEIVED, with its first event.
    pub fn receive(
        order_id: OrderId,
        customer_id: UserId,
        request: NewOrder,
        now: DateTime<Utc>,
    ) -> (Self, OrderEvent) {
        let order = Self {
            order_id,
            customer_id,
            status: OrderStatus::Received,
            pickup_location: request.pickup_location,
            delivery_address: request.delivery_address,
            package_details: request.package_details,
            scheduled_pickup_time: request.scheduled_pickup_time,
            special_instructions: request.special_instructions,
            integration_status: IntegrationStatus::default(),
            customer: None,
            warehouse: None,
            route: None,
            compensation: None,
            failure_reason: None,
            driver_id: None,
            created_at: now,
            updated_at: now,
            version: 1,
            seq: 1,
        };
        let event = order.event(1, "Order received and being processed", Value::Null, now);
        (order, event)
    }

    pub(crate) fn event(
        &self,
        seq: u64,
        message: &str,
        data: Value,
        now: DateTime<Utc>,
    ) -> OrderEvent {
        OrderEvent {
            order_id: self.order_id.clone(),
            customer_id: self.customer_id.clone(),
            seq,
            status: self.status,
            message: message.to_owned(),
            timestamp: now,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(err: ValidationErrors) -> Vec<String> {
        err.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn each_location_keeps_the_form_the_client_wrote() {
        let nested =
            json!({"address": "123 Main St", "coordinates": {"lat": 40.7128, "lng": -74.006}});
        let flat = json!({"lat": 40.6782, "lng": -73.9442, "address": "456 Oak Ave"});
        let body = json!({
            "pickupLocation": nested,
            "deliveryAddress": flat,
            "packageDetails": {"weight": 5.5},
        });
        let order = NewOrder::parse(&body).unwrap();
        assert_eq!(order.pickup_location.form, LocationForm::Nested);
        assert_eq!(order.delivery_address.form, LocationForm::Flat);
        assert_eq!(
            serde_json::to_value(&order.pickup_location).unwrap(),
            nested
        );
        assert_eq!(serde_json::to_value(&order.delivery_address).unwrap(), flat);
        for written in [nested, flat] {
            let read: Location = serde_json::from_value(written.clone()).unwrap();
            assert_eq!(serde_json::to_value(read).unwrap(), written);
        }
    }

    #[test]
    fn accepts_the_nested_form_of_seed_000_8_1() {
        let body = json!({
            "customerId": "usr_12345",
            "pickupLocation": {"address": "123 Main St", "coordinates": {"lat": 40.7128, "lng": -74.006}},
            "deliveryAddress": {"address": "456 Oak Ave", "coordinates": {"lat": 40.6782, "lng": -73.9442}},
            "packageDetails": {"weight": 5.5, "dimensions": "30x20x10", "description": "Electronics", "fragile": true},
            "scheduledPickupTime": "2026-02-05T09:00:00Z",
            "specialInstructions": "ring doorbell"
        });
        let order = NewOrder::parse(&body).unwrap();
        assert_eq!(order.pickup_location.lat, 40.7128);
        assert_eq!(
            order.delivery_address.address.as_deref(),
            Some("456 Oak Ave")
        );
        assert!(order.package_details.fragile);
        assert!(order.scheduled_pickup_time.is_some());
    }

    #[test]
    fn accepts_the_flat_form_of_seed_000_13_1() {
        let body = json!({
            "pickupLocation": {"lat": 40.7128, "lng": -74.006, "address": "123 Main St"},
            "deliveryAddress": {"lat": 40.7589, "lng": -73.9851},
            "packageDetails": {"weight": 1, "dimensions": {"length": 30, "width": 20, "height": 10}}
        });
        let order = NewOrder::parse(&body).unwrap();
        assert_eq!(order.delivery_address.lng, -73.9851);
        assert!(!order.package_details.fragile);
    }

    #[test]
    fn reports_every_bad_field_with_its_path() {
        let body = json!({
            "pickupLocation": {"coordinates": {"lat": 91, "lng": "x"}},
            "packageDetails": {"weight": 0, "fragile": "yes"},
            "scheduledPickupTime": "tomorrow"
        });
        assert_eq!(
            fields(NewOrder::parse(&body).unwrap_err()),
            [
                "pickupLocation.coordinates.lat",
                "pickupLocation.coordinates.lng",
                "deliveryAddress",
                "packageDetails.weight",
                "packageDetails.fragile",
                "scheduledPickupTime"
            ]
        );
    }

    #[test]
    fn dimension_names_must_be_plain() {
        let body = json!({
            "pickupLocation": {"lat": 1, "lng": 1},
            "deliveryAddress": {"lat": 1, "lng": 1},
            "packageDetails": {"weight": 1, "dimensions": {"$gt": 1}}
        });
        assert_eq!(
            fields(NewOrder::parse(&body).unwrap_err()),
            ["packageDetails.dimensions"]
        );
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(fields(NewOrder::parse(&json!([1])).unwrap_err()), ["body"]);
    }

    #[test]
    fn integration_status_keeps_the_seeds_shape() {
        let mut states = IntegrationStatus::default();
        states.set(System::Wms, StepState::Completed);
        let wire = serde_json::to_string(&states).unwrap();
        assert_eq!(
            wire,
            r#"{"cms":"PENDING","wms":"COMPLETED","ros":"PENDING"}"#
        );
        let read: IntegrationStatus = serde_json::from_str(&wire).unwrap();
        assert_eq!(read, states);
        let other_keys = r#"{"ros":"FAILED","extra":1,"wms":"PENDING","cms":"COMPLETED"}"#;
        let read: IntegrationStatus = serde_json::from_str(other_keys).unwrap();
        assert_eq!(read.get(System::Ros), StepState::Failed);
        assert_eq!(read.get(System::Cms), StepState::Completed);
        let error =
            serde_json::from_str::<IntegrationStatus>(r#"{"cms":"PENDING","wms":"PENDING"}"#)
                .unwrap_err();
        assert!(error.to_string().contains("missing field `ros`"), "{error}");
    }
}
