//! Orders and events for the unit tests of every layer, made the way intake and the
//! saga make them.

use super::{Location, NewOrder, Order, OrderEvent, OrderId, OrderStatus, PackageDetails, UserId};
use chrono::{DateTime, Utc};
use serde_json::json;

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

/// Order `id` of `customer` as intake writes it at `now`, with its RECEIVED event.
pub(crate) fn received(id: &str, customer: &str, now: DateTime<Utc>) -> (Order, OrderEvent) {
    Order::receive(
        OrderId::parse(id).unwrap(),
        UserId::from_trusted(customer),
        parcel(),
        now,
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
