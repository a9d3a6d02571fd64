//! What each kind of order update carries under `data`, one struct per kind. These
//! shapes are the WebSocket and UI schema (the `order-update` frames) and what the
//! event log stores: change them only together with the pages and the stored logs.
//! The saga builds them and serialises each once, into its event.

use super::ids::UserId;
use super::order::Route;
use super::saga::Operation;
use serde::Serialize;
use serde_json::Value;

/// CMS_VALIDATED: who the customer turned out to be.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomerValidated<'a> {
    pub(crate) customer_data: CustomerData<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CustomerData<'a> {
    pub(crate) id: &'a UserId,
    pub(crate) name: &'a str,
    pub(crate) tier: &'a str,
}

/// INVENTORY_RESERVED: where the parcel's goods wait.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InventoryReserved<'a> {
    /// Always `"RESERVED"`.
    pub(crate) inventory: &'static str,
    pub(crate) warehouse: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) picking_location: Option<&'a str>,
}

/// ROUTE_OPTIMIZED: the route the driver will take.
#[derive(Debug, Serialize)]
pub(crate) struct RouteOptimized<'a> {
    pub(crate) route: &'a Route,
}

/// COMPENSATING, when it begins: why, and the undo steps ahead.
#[derive(Debug, Serialize)]
pub(crate) struct CompensationStarted<'a> {
    pub(crate) reason: &'a str,
    pub(crate) compensations: &'a [Operation],
}

/// FAILED or CANCELLED: why the order ended.
#[derive(Debug, Serialize)]
pub(crate) struct OrderEnded<'a> {
    pub(crate) reason: &'a str,
}

/// OUT_FOR_DELIVERY or DELIVERED: the driver assigned, and who reported it (the
/// driver, or an admin on their behalf).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryReported<'a> {
    pub(crate) driver_id: Option<&'a UserId>,
    pub(crate) by: &'a UserId,
}

/// An update's payload as its event stores it. Updates of the other kinds
/// (RECEIVED, READY_FOR_DELIVERY, a compensation step done) carry none: `null`.
pub(crate) fn payload(data: &impl Serialize) -> Value {
    // Cannot fail: these are plain structs of strings and numbers, with no maps
    // keyed by anything but strings.
    serde_json::to_value(data).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_keep_the_shapes_the_pages_read() {
        let customer = UserId::from_trusted("usr_1");
        assert_eq!(
            payload(&CustomerValidated {
                customer_data: CustomerData {
                    id: &customer,
                    name: "John",
                    tier: "gold",
                },
            }),
            json!({"customerData": {"id": "usr_1", "name": "John", "tier": "gold"}})
        );
        assert_eq!(
            payload(&InventoryReserved {
                inventory: "RESERVED",
                warehouse: "WH-1",
                picking_location: None,
            }),
            json!({"inventory": "RESERVED", "warehouse": "WH-1"})
        );
        assert_eq!(
            payload(&CompensationStarted {
                reason: "no stock",
                compensations: &[Operation::CancelCustomerOrder],
            }),
            json!({"reason": "no stock", "compensations": [Operation::CancelCustomerOrder]})
        );
        assert_eq!(
            payload(&DeliveryReported {
                driver_id: None,
                by: &customer,
            }),
            json!({"driverId": null, "by": "usr_1"})
        );
    }
}
