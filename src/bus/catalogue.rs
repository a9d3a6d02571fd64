//! Seed 000's event catalogue (its sections 5 and 8.3): what a consumer written
//! against the seed expects on `events_exchange`, derived from our order events.
//!
//! One catalogue event per order transition, in the seed's envelope
//! `{"type", "data", "timestamp"}`: RECEIVED gives `ORDER_CREATED`, each
//! back-office success its step's event (`cms.success`, `wms.success`,
//! `ros.success`: `StepSpec::success_event`), and every other status change a
//! generic `order.update`. docs/asyncapi.yaml describes the same catalogue for
//! consumers.

use crate::domain::{OrderEvent, OrderStatus, System};
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// One message of the catalogue, ready to publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CatalogueEvent {
    /// The topic routing key on `events_exchange`.
    #[serde(skip)]
    pub(crate) routing_key: String,
    /// The seed's event name (`ORDER_CREATED`, `cms.success`, ..., `order.update`).
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) data: Value,
    /// RFC 3339 with microseconds, as the seed's examples show.
    pub(crate) timestamp: String,
}

impl CatalogueEvent {
    /// Unique per order transition, so a consumer can drop a redelivered copy.
    pub(crate) fn message_id(&self, event: &OrderEvent) -> String {
        format!("{}:{}", event.order_id, event.seq)
    }
}

/// The catalogue event that announces `event`.
pub(crate) fn catalogue_event(event: &OrderEvent) -> CatalogueEvent {
    let timestamp = event.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut data = Map::new();
    data.insert("orderId".into(), json!(event.order_id));
    data.insert("status".into(), json!(event.status));
    data.insert("message".into(), json!(event.message));
    let (routing_key, kind) = match (event.status, System::reaching(event.status)) {
        (OrderStatus::Received, _) => {
            data.insert("customer".into(), json!({"id": event.customer_id}));
            ("order.created".to_owned(), "ORDER_CREATED")
        }
        // A back-office success carries what the system answered (its step's
        // `success_fields`), null where the answer had no such field.
        (_, Some(system)) => {
            let spec = system.spec();
            for (key, path) in spec.success_fields {
                let field = path
                    .iter()
                    .try_fold(&event.data, |value, name| value.get(name));
                data.insert((*key).into(), field.cloned().unwrap_or(Value::Null));
            }
            (spec.success_event.to_owned(), spec.success_event)
        }
        (status, None) => {
            let details = match &event.data {
                Value::Null => json!({}),
                other => other.clone(),
            };
            data.insert("details".into(), details);
            (format!("order.status.{}", status.as_str()), "order.update")
        }
    };
    data.insert("seq".into(), json!(event.seq));
    data.insert("timestamp".into(), json!(timestamp));
    CatalogueEvent {
        routing_key,
        kind,
        data: Value::Object(data),
        timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderId, UserId};
    use chrono::{TimeZone, Utc};

    fn event(seq: u64, status: OrderStatus, message: &str, data: Value) -> OrderEvent {
        OrderEvent {
            order_id: OrderId::generate(Utc::now()),
            customer_id: UserId::generate(),
            seq,
            status,
            message: message.to_owned(),
            timestamp: Utc.with_ymd_and_hms(2026, 2, 4, 16, 20, 30).unwrap(),
            data,
        }
    }

    #[test]
    fn an_order_is_created_in_the_seeds_envelope() {
        let received = event(1, OrderStatus::Received, "Order received", Value::Null);
        let created = catalogue_event(&received);
        assert_eq!(created.routing_key, "order.created");
        let wire = serde_json::to_value(&created).unwrap();
        assert_eq!(wire["type"], "ORDER_CREATED");
        assert_eq!(wire["timestamp"], "2026-02-04T16:20:30.000000Z");
        assert_eq!(wire["data"]["orderId"], json!(received.order_id));
        assert_eq!(wire["data"]["status"], "RECEIVED");
        assert_eq!(wire["data"]["message"], "Order received");
        assert_eq!(wire["data"]["customer"]["id"], json!(received.customer_id));
        assert_eq!(wire["data"]["timestamp"], wire["timestamp"]);
        assert!(wire.get("routing_key").is_none() && wire.get("routingKey").is_none());
        assert_eq!(
            created.message_id(&received),
            format!("{}:1", received.order_id)
        );
    }

    #[test]
    fn back_office_successes_carry_what_each_system_answered() {
        let customer = json!({"customerData": {"id": "usr_1", "name": "Ann", "tier": "gold"}});
        let cms = catalogue_event(&event(2, OrderStatus::CmsValidated, "ok", customer));
        assert_eq!(
            (cms.routing_key.as_str(), cms.kind),
            ("cms.success", "cms.success")
        );
        assert_eq!(cms.data["status"], "CMS_VALIDATED");
        assert_eq!(cms.data["customerData"]["tier"], "gold");

        let stock =
            json!({"inventory": "RESERVED", "warehouse": "WH-001", "pickingLocation": "A-12-05"});
        let wms = catalogue_event(&event(3, OrderStatus::InventoryReserved, "ok", stock));
        assert_eq!(
            (wms.routing_key.as_str(), wms.kind),
            ("wms.success", "wms.success")
        );
        assert_eq!(wms.data["inventory"], "RESERVED");
        assert_eq!(wms.data["warehouse"], "WH-001");
        assert_eq!(wms.data["pickingLocation"], "A-12-05");

        let route = json!({"route": {"routeId": "R1", "waypoints": [{"lat": 1.0, "lng": 2.0}],
            "distance": 12.3, "eta": "2026-02-05T10:45:00Z"}});
        let ros = catalogue_event(&event(4, OrderStatus::RouteOptimized, "ok", route));
        assert_eq!(
            (ros.routing_key.as_str(), ros.kind),
            ("ros.success", "ros.success")
        );
        assert_eq!(ros.data["route"]["waypoints"][0]["lat"], 1.0);
        assert_eq!(ros.data["eta"], "2026-02-05T10:45:00Z");
        assert_eq!(ros.data["distance"], 12.3);
        assert_eq!(ros.data["seq"], 4);
    }

    #[test]
    fn every_other_change_is_a_generic_status_update() {
        for status in OrderStatus::ALL {
            if matches!(
                status,
                OrderStatus::Received
                    | OrderStatus::CmsValidated
                    | OrderStatus::InventoryReserved
                    | OrderStatus::RouteOptimized
            ) {
                continue;
            }
            let update = catalogue_event(&event(5, status, "changed", json!({"reason": "x"})));
            assert_eq!(update.kind, "order.update", "{status}");
            assert_eq!(
                update.routing_key,
                format!("order.status.{}", status.as_str())
            );
            assert_eq!(update.data["status"], status.as_str());
            assert_eq!(update.data["details"]["reason"], "x");
        }
        let ready = catalogue_event(&event(
            5,
            OrderStatus::ReadyForDelivery,
            "ready",
            Value::Null,
        ));
        assert_eq!(ready.data["details"], json!({}));
    }

    #[test]
    fn the_asyncapi_document_describes_every_event() {
        let document = include_str!("../../docs/asyncapi.yaml");
        for status in OrderStatus::ALL {
            let published = catalogue_event(&event(2, status, "m", Value::Null));
            let channel = match published.kind {
                "order.update" => "  order.status.{status}:".to_owned(),
                _ => format!("  {}:", published.routing_key),
            };
            assert!(document.contains(&channel), "{channel}");
            assert!(
                document.contains(&format!("name: {}", published.kind)),
                "{}",
                published.kind
            );
            assert!(document.contains(status.as_str()), "{status}");
        }
    }
}
