//! Orders and step outcomes for the domain's unit tests and the journey simulation.

use super::order::{
    CustomerProfile, Location, NewOrder, Order, PackageDetails, Reservation, Route,
};
use super::saga::{Operation, OperationOutcome};
use super::{OrderId, UserId};
use chrono::{DateTime, Utc};

pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-02-04T16:20:30Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A fresh order, as intake stores it.
pub fn received(id: &str) -> Order {
    let loc = Location::at(1.0, 2.0, None);
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
    let id = OrderId::parse(id).unwrap();
    Order::receive(id, UserId::from_trusted("usr_1"), request, now()).0
}

pub fn profile() -> OperationOutcome {
    OperationOutcome::CustomerValidated(CustomerProfile {
        name: "John".into(),
        tier: "premium".into(),
    })
}

pub fn reserved() -> OperationOutcome {
    OperationOutcome::InventoryReserved(Reservation {
        warehouse: "WH-001".into(),
        picking_location: Some("A-1".into()),
    })
}

pub fn routed() -> OperationOutcome {
    OperationOutcome::RouteOptimized(Route {
        route_id: Some("RT-1".into()),
        waypoints: vec![],
        distance: 1.0,
        eta: "2026-02-05T10:45:00Z".into(),
    })
}

/// What the operation's system answers when it succeeds.
pub fn success(operation: Operation) -> OperationOutcome {
    match operation {
        Operation::ValidateCustomer => profile(),
        Operation::ReserveInventory => reserved(),
        Operation::OptimizeRoute => routed(),
        _ => OperationOutcome::Undone,
    }
}
