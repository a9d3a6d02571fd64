//! The saga's step request and reply: what the order asks of an adapter and what the
//! adapter answers. Both travel between nodes (RabbitMQ), so their serde form is a
//! wire format: change it only together with every node that reads it.

use super::ids::{OrderId, UserId};
use super::order::{Location, PackageDetails};
use super::saga::{Operation, OperationOutcome};
use serde::{Deserialize, Serialize};

/// A call the order saga asks an adapter to make. Carries what every protocol needs,
/// so an adapter on any node can serve it without reading the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRequest {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub operation: Operation,
    /// Distinguishes a retry from the call it replaces, so late replies are dropped.
    pub attempt: u32,
    /// The shard ownership the request was made under (see `bus::ShardEvent`): a
    /// reply reaching a later owner of the shard is recognised as an old attempt's.
    #[serde(default)]
    pub epoch: u64,
    pub pickup: Location,
    pub delivery: Location,
    pub package: PackageDetails,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
}

impl StepRequest {
    pub(crate) fn idempotency_key(&self) -> String {
        self.operation.idempotency_key(&self.order_id)
    }
}

/// How an adapter answered a step request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StepReply {
    /// Success or business refusal: final for this operation.
    Settled { outcome: OperationOutcome },
    /// Worth retrying later (timeout, outage, open circuit).
    Transient { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_keep_their_wire_form() {
        let transient = StepReply::Transient {
            reason: "timed out after 5000 ms".into(),
        };
        assert_eq!(
            serde_json::to_value(&transient).unwrap(),
            json!({"kind": "transient", "reason": "timed out after 5000 ms"})
        );
        let settled = StepReply::Settled {
            outcome: OperationOutcome::Undone,
        };
        let wire = serde_json::to_value(&settled).unwrap();
        assert_eq!(wire["kind"], "settled");
        assert_eq!(serde_json::from_value::<StepReply>(wire).unwrap(), settled);
    }
}
