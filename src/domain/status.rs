//! The order status line of DESIGN section 4, with its wire names.

use super::saga::System;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Received,
    CmsValidated,
    InventoryReserved,
    RouteOptimized,
    ReadyForDelivery,
    OutForDelivery,
    Delivered,
    Compensating,
    Failed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 10] = [
        Self::Received,
        Self::CmsValidated,
        Self::InventoryReserved,
        Self::RouteOptimized,
        Self::ReadyForDelivery,
        Self::OutForDelivery,
        Self::Delivered,
        Self::Compensating,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "RECEIVED",
            Self::CmsValidated => "CMS_VALIDATED",
            Self::InventoryReserved => "INVENTORY_RESERVED",
            Self::RouteOptimized => "ROUTE_OPTIMIZED",
            Self::ReadyForDelivery => "READY_FOR_DELIVERY",
            Self::OutForDelivery => "OUT_FOR_DELIVERY",
            Self::Delivered => "DELIVERED",
            Self::Compensating => "COMPENSATING",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Terminal orders never change again; their actors can be stopped for good.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Cancelled)
    }

    /// Orders still being driven through the back-office systems. They hold an
    /// admission slot and are resumed after a crash.
    pub(crate) fn is_processing(self) -> bool {
        matches!(self, Self::Received | Self::Compensating) || System::reaching(self).is_some()
    }

    /// The statuses a driver reports (`POST /api/orders/{id}/delivery`): the parcel
    /// left with them, or it arrived.
    pub(crate) fn is_delivery_report(self) -> bool {
        matches!(self, Self::OutForDelivery | Self::Delivered)
    }

    /// The delivery report that may follow this status, if any: the parcel leaves
    /// once ready, and arrives once out.
    pub(crate) fn next_delivery_report(self) -> Option<Self> {
        match self {
            Self::ReadyForDelivery => Some(Self::OutForDelivery),
            Self::OutForDelivery => Some(Self::Delivered),
            _ => None,
        }
    }

    /// A client may cancel until the parcel has left with a driver.
    pub(crate) fn is_cancellable(self) -> bool {
        !self.is_terminal() && !matches!(self, Self::OutForDelivery | Self::Compensating)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(OrderStatus::parse("PROCESSING"), None);
    }

    #[test]
    fn out_for_delivery_cannot_be_cancelled() {
        assert!(OrderStatus::ReadyForDelivery.is_cancellable());
        assert!(!OrderStatus::OutForDelivery.is_cancellable());
        assert!(!OrderStatus::Delivered.is_cancellable());
    }

    #[test]
    fn drivers_report_the_parcel_leaving_then_arriving() {
        let reports: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_delivery_report())
            .collect();
        assert_eq!(
            reports,
            [OrderStatus::OutForDelivery, OrderStatus::Delivered]
        );
        assert_eq!(
            OrderStatus::ReadyForDelivery.next_delivery_report(),
            Some(OrderStatus::OutForDelivery)
        );
        assert_eq!(
            OrderStatus::OutForDelivery.next_delivery_report(),
            Some(OrderStatus::Delivered)
        );
        for status in OrderStatus::ALL {
            if let Some(next) = status.next_delivery_report() {
                assert!(next.is_delivery_report());
            }
        }
        assert_eq!(OrderStatus::RouteOptimized.next_delivery_report(), None);
        assert_eq!(OrderStatus::Delivered.next_delivery_report(), None);
    }
}
