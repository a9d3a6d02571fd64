//! Orders, events and step outcomes for the unit tests of every layer and the
//! journey simulation, made the way intake and the saga make them.

use super::order::{
    CustomerProfile, Location, NewOrder, Order, OrderEvent, PackageDetails, Reservation, Route,
};
use super::saga::{Operation, OperationOutcome};
use super::{OrderId, OrderStatus, UserId};
use chrono::{DateTime, Utc};
use serde_json::json;

pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-02-04T16:20:30Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A 1 kg parcel, picked up and delivered at (1, 2).
pub(crate) fn parcel() -> NewOrder {
    let here = Location::at(1.0, 2.0, None);
    NewOrder {
        pickup_location: here.clone(),
        delivery_address: here,
        package_details: PackageDetails {
            weight: 1.0,
            dimensions: None,
            description: None,
            fragile: false,
        },
        scheduled_pickup_time: None,
        special_instructions: None,
    }
}

/// A fresh order of `usr_1`, as intake stores it.
pub(crate) fn received(id: &str) -> Order {
    received_by(id, "usr_1", now()).0
}

/// Order `id` of `customer` as intake writes it at `at`, with its RECEIVED event.
pub(crate) fn received_by(id: &str, customer: &str, at: DateTime<Utc>) -> (Order, OrderEvent) {
    Order::receive(
        OrderId::parse(id).unwrap(),
        UserId::from_trusted(customer),
        parcel(),
        at,
    )
}

/// The CMS_VALIDATED update of `order`, numbered `seq`, as the bus carries it.
pub(crate) fn validated_event(order: &str, customer: &str, seq: u64) -> OrderEvent {
    OrderEvent {
        order_id: OrderId::parse(order).unwrap(),
        customer_id: UserId::from_trusted(customer),
        seq,
        status: OrderStatus::CmsValidated,
        message: "Customer validated successfully".into(),
        timestamp: Utc::now(),
        data: json!({"customerData": {"id": customer, "name": "Ada", "tier": "gold"}}),
    }
}

pub(crate) fn profile() -> OperationOutcome {
    OperationOutcome::CustomerValidated(CustomerProfile {
        name: "John".into(),
        tier: "premium".into(),
    })
}

pub(crate) fn reserved() -> OperationOutcome {
    OperationOutcome::InventoryReserved(Reservation {
        warehouse: "WH-001".into(),
        picking_location: Some("A-1".into()),
    })
}

pub(crate) fn routed() -> OperationOutcome {
    OperationOutcome::RouteOptimized(Route {
        route_id: Some("RT-1".into()),
        waypoints: vec![],
        distance: 1.0,
        eta: "2026-02-05T10:45:00Z".into(),
    })
}

/// What the operation's system answers when it succeeds.
pub(crate) fn success(operation: Operation) -> OperationOutcome {
    match operation {
        Operation::ValidateCustomer => profile(),
        Operation::ReserveInventory => reserved(),
        Operation::OptimizeRoute => routed(),
        _ => OperationOutcome::Undone,
    }
}
