//! Documents and the domain types: what each kind of document holds, which of its
//! fields are BSON dates, and the fields the store adds to an order document (its
//! event log, its idempotency key).

use super::corrupt;
use crate::domain::{OrderEvent, OrderId};
use crate::store::StoreError;
use chrono::{DateTime, SecondsFormat, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The embedded event log inside an order document.
pub(super) const EVENTS_FIELD: &str = "events";
pub(super) const IDEMPOTENCY_FIELD: &str = "idempotencyKey";
/// The fingerprint of the request that came with the key.
pub(super) const FINGERPRINT_FIELD: &str = "idempotencyFingerprint";
/// The random id a compare-and-set stamps on the first event it appends.
pub(super) const COMMIT_FIELD: &str = "commit";

/// The top-level fields an `Order` leaves out when they are `None`. `apply` sets the
/// fields an order has and must unset these when the new order lacks them, or a value
/// the order dropped (a finished compensation, say) would survive in the document.
/// A unit test checks this list against the serialised `Order`.
pub(super) const ORDER_OPTIONAL_FIELDS: [&str; 8] = [
    "scheduledPickupTime",
    "specialInstructions",
    "customer",
    "warehouse",
    "route",
    "compensation",
    "failureReason",
    "driverId",
];

/// Fields fixed when an order is placed: an update never rewrites them, so an update
/// cannot change an order's identity, owner or age whatever its caller sends.
pub(crate) const IMMUTABLE_FIELDS: [&str; 3] = ["orderId", "customerId", "createdAt"];

/// Timestamps stored as BSON dates, per kind of document.
pub(super) const ORDER_DATES: &[&str] = &["createdAt", "updatedAt", "scheduledPickupTime"];
pub(super) const EVENT_DATES: &[&str] = &["timestamp"];
pub(super) const USER_DATES: &[&str] = &["createdAt"];
pub(super) const DRIVER_DATES: &[&str] = &["updatedAt"];
pub(super) const SESSION_DATES: &[&str] = &["createdAt", "expiresAt", "revokedAt"];

pub(super) fn bson_date(at: &DateTime<Utc>) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(at.timestamp_millis()))
}

pub(super) fn bson_int(value: u64) -> Result<Bson, StoreError> {
    i64::try_from(value)
        .map(Bson::Int64)
        .map_err(|_| corrupt(format!("{value} does not fit a BSON integer")))
}

/// Serialises a domain value, turning the named RFC 3339 fields into BSON dates.
pub(super) fn encode<T: Serialize>(value: &T, dates: &[&str]) -> Result<Document, StoreError> {
    let mut document = bson::to_document(value).map_err(corrupt)?;
    for field in dates {
        let parsed = match document.get(*field) {
            Some(Bson::String(text)) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| corrupt(format!("{field}: {e}")))?
                .with_timezone(&Utc),
            _ => continue,
        };
        document.insert(*field, bson_date(&parsed));
    }
    Ok(document)
}

/// The inverse of [`encode`]: BSON dates back to the RFC 3339 text the domain types
/// deserialise from.
pub(super) fn decode<T: DeserializeOwned>(
    mut document: Document,
    dates: &[&str],
) -> Result<T, StoreError> {
    for field in dates {
        let millis = match document.get(*field) {
            Some(Bson::DateTime(at)) => at.timestamp_millis(),
            _ => continue,
        };
        let at = DateTime::<Utc>::from_timestamp_millis(millis)
            .ok_or_else(|| corrupt(format!("{field}: date out of range")))?;
        document.insert(*field, at.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    bson::from_document(document).map_err(corrupt)
}

pub(super) fn encode_events(events: &[Arc<OrderEvent>]) -> Result<Vec<Document>, StoreError> {
    events.iter().map(|e| encode(&**e, EVENT_DATES)).collect()
}

/// Reads an order document without its log and key (which `Order` does not carry).
pub(super) fn order_projection() -> Document {
    doc! { "_id": 0, EVENTS_FIELD: 0, IDEMPOTENCY_FIELD: 0, FINGERPRINT_FIELD: 0 }
}

/// The part of a stored order that explains why a compare-and-set matched nothing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OrderHead {
    pub(crate) version: u64,
    pub(crate) seq: u64,
}

pub(super) fn order_id_of(document: &Document) -> Result<OrderId, StoreError> {
    let raw = document
        .get_str("orderId")
        .map_err(|e| corrupt(format!("order without an id: {e}")))?;
    OrderId::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("malformed order id {raw:?}")))
}

/// A reply's integer field, whichever width the server chose.
pub(super) fn integer(document: &Document, field: &str) -> Option<i64> {
    match document.get(field) {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Compensation, CustomerProfile, Operation, Order, OrderStatus, Reservation, Route, UserId,
        Waypoint,
    };
    use chrono::TimeZone;
    use std::collections::BTreeSet;

    fn at_millis(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap()
    }

    fn bare_order() -> Order {
        crate::store::contract::tests::placed().0
    }

    /// An order with every optional field set. (When `Order` gains a field, set it
    /// here so the check below sees it.)
    fn full_order() -> Order {
        Order {
            scheduled_pickup_time: Some(at_millis(1_770_000_100_000)),
            special_instructions: Some("ring twice".into()),
            customer: Some(CustomerProfile {
                name: "Ada".into(),
                tier: "gold".into(),
            }),
            warehouse: Some(Reservation {
                warehouse: "WH-1".into(),
                picking_location: Some("A-1".into()),
            }),
            route: Some(Route {
                route_id: Some("R-1".into()),
                waypoints: vec![Waypoint { lat: 1.0, lng: 2.0 }],
                distance: 3.5,
                eta: "2026-02-04T18:00:00Z".into(),
            }),
            compensation: Some(Compensation {
                outcome: OrderStatus::Failed,
                reason: "no stock".into(),
                remaining: vec![Operation::CancelCustomerOrder],
            }),
            failure_reason: Some("no stock".into()),
            driver_id: Some(UserId::from_trusted("usr_d")),
            ..bare_order()
        }
    }

    fn keys(document: &Document) -> BTreeSet<String> {
        document.keys().cloned().collect()
    }

    #[test]
    fn optional_field_list_matches_the_order_document() {
        let full = keys(&encode(&full_order(), ORDER_DATES).unwrap());
        let bare = keys(&encode(&bare_order(), ORDER_DATES).unwrap());
        let optional: BTreeSet<String> = full.difference(&bare).cloned().collect();
        let listed: BTreeSet<String> = ORDER_OPTIONAL_FIELDS
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(optional, listed);
        assert!(!full.contains(EVENTS_FIELD) && !full.contains(IDEMPOTENCY_FIELD));
    }

    #[test]
    fn dates_are_bson_dates_and_read_back_equal() {
        let order = full_order();
        let document = encode(&order, ORDER_DATES).unwrap();
        for field in ORDER_DATES {
            assert!(
                matches!(document.get(*field), Some(Bson::DateTime(_))),
                "{field} is {:?}",
                document.get(*field)
            );
        }
        assert_eq!(document.get_str("status").unwrap(), "RECEIVED");
        let back: Order = decode(document, ORDER_DATES).unwrap();
        assert_eq!(back, order);
    }

    #[test]
    fn undecodable_documents_are_corrupt() {
        let result: Result<Order, _> = decode(doc! { "orderId": 7 }, ORDER_DATES);
        assert!(matches!(result, Err(StoreError::Corrupt(_))));
    }
}
