//! Seed 001's status view of an order: the stage it is in, how far it got, and
//! each back-office step with its state and the time it settled. Read from the
//! order and its event log alone, so every reader renders the same view.

use super::ids::OrderId;
use super::order::{Order, OrderEvent};
use super::saga::{Operation, StepState, System, next_operation};
use super::status::OrderStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Progress {
    pub(crate) completed: usize,
    pub(crate) total: usize,
    pub(crate) percentage: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Processing {
    pub(crate) current_stage: String,
    pub(crate) progress: Progress,
}

/// Seed 001's status view.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusView {
    pub(crate) order_id: OrderId,
    pub(crate) status: OrderStatus,
    pub(crate) processing: Processing,
    pub(crate) steps: Vec<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failure_reason: Option<String>,
}

/// What the order is busy with: the system working on it (`CMS_PROCESSING`…),
/// `COMPENSATING`, `COMPLETED` once processing is done and the order awaits a
/// driver, or the status itself afterwards.
fn current_stage(order: &Order) -> String {
    if order.status == OrderStatus::Compensating {
        return "COMPENSATING".into();
    }
    match next_operation(order) {
        Some(op) if !op.is_compensation() => {
            format!("{}_PROCESSING", op.system().as_str().to_uppercase())
        }
        _ if order.status == OrderStatus::ReadyForDelivery => "COMPLETED".into(),
        _ => order.status.as_str().into(),
    }
}

pub(crate) fn status_view(order: &Order, events: &[Arc<OrderEvent>]) -> StatusView {
    let total = System::ALL.len();
    let completed = System::ALL
        .into_iter()
        .filter(|s| order.integration_status.get(*s) == StepState::Completed)
        .count();
    let percentage = u32::try_from(completed * 100 / total).unwrap_or(100);
    StatusView {
        order_id: order.order_id.clone(),
        status: order.status,
        processing: Processing {
            current_stage: current_stage(order),
            progress: Progress {
                completed,
                total,
                percentage,
            },
        },
        steps: step_views(order, events),
        failure_reason: order.failure_reason.clone(),
    }
}

/// Where one back-office step of an order stands, in seed 001's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum StepProgress {
    Pending,
    InProgress,
    Completed,
    Failed,
    Compensated,
}

/// Seed 001's view of progress: each system's step with its state and the time it
/// settled, taken from the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepView {
    pub(crate) step: &'static str,
    pub(crate) name: &'static str,
    pub(crate) status: StepProgress,
    pub(crate) timestamp: Option<DateTime<Utc>>,
}

pub(crate) fn step_views(order: &Order, events: &[Arc<OrderEvent>]) -> Vec<StepView> {
    let current = next_operation(order).filter(|op| !op.is_compensation());
    System::ALL
        .into_iter()
        .map(|system| {
            let spec = system.spec();
            let ((step, name), (done_status, _)) = (spec.view, spec.reaches);
            let state = order.integration_status.get(system);
            let status = match state {
                StepState::Pending if current.map(Operation::system) == Some(system) => {
                    StepProgress::InProgress
                }
                StepState::Pending => StepProgress::Pending,
                StepState::Completed => StepProgress::Completed,
                StepState::Refused | StepState::Failed => StepProgress::Failed,
                StepState::Compensated => StepProgress::Compensated,
            };
            let timestamp = events
                .iter()
                .find(|e| e.status == done_status)
                .map(|e| e.timestamp);
            StepView {
                step,
                name,
                status,
                timestamp,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use crate::domain::saga::{SagaInput, decide};
    use crate::domain::{CustomerProfile, OperationOutcome, Reservation};
    use serde_json::json;

    fn shared(events: Vec<OrderEvent>) -> Vec<Arc<OrderEvent>> {
        events.into_iter().map(Arc::new).collect()
    }

    fn received() -> (Order, OrderEvent) {
        fixtures::received_by("ORD-20260204-ABC", "usr_1", Utc::now())
    }

    fn validated(order: &Order) -> crate::domain::SagaDecision {
        decide(
            order,
            SagaInput::Outcome(
                Operation::ValidateCustomer,
                OperationOutcome::CustomerValidated(CustomerProfile {
                    name: "John".into(),
                    tier: "gold".into(),
                }),
            ),
            Utc::now(),
        )
        .unwrap()
    }

    #[test]
    fn status_view_has_the_seed_001_shape_and_follows_progress() {
        let (order, first) = received();
        let first = Arc::new(first);
        let view = serde_json::to_value(status_view(&order, std::slice::from_ref(&first))).unwrap();
        assert_eq!(view["orderId"], "ORD-20260204-ABC");
        assert_eq!(view["status"], "RECEIVED");
        assert_eq!(view["processing"]["currentStage"], "CMS_PROCESSING");
        assert_eq!(
            view["processing"]["progress"],
            json!({"completed": 0, "total": 3, "percentage": 0})
        );
        assert_eq!(view["steps"][0]["step"], "CMS_VERIFICATION");
        assert_eq!(view["steps"][0]["status"], "IN_PROGRESS");
        assert!(view["steps"][0]["timestamp"].is_null());
        assert!(view.get("failureReason").is_none());

        let validated = validated(&order);
        let reserved = decide(
            &validated.order,
            SagaInput::Outcome(
                Operation::ReserveInventory,
                OperationOutcome::InventoryReserved(Reservation {
                    warehouse: "WH-1".into(),
                    picking_location: Some("A-1".into()),
                }),
            ),
            Utc::now(),
        )
        .unwrap();
        let events = [
            vec![first],
            shared(validated.events),
            shared(reserved.events),
        ]
        .concat();
        let view = serde_json::to_value(status_view(&reserved.order, &events)).unwrap();
        assert_eq!(view["processing"]["currentStage"], "ROS_PROCESSING");
        assert_eq!(view["processing"]["progress"]["completed"], 2);
        assert_eq!(view["processing"]["progress"]["percentage"], 66);
        assert_eq!(view["steps"][1]["status"], "COMPLETED");
        assert!(view["steps"][1]["timestamp"].is_string());

        let cancelling = decide(&reserved.order, SagaInput::Cancel, Utc::now()).unwrap();
        let view = status_view(&cancelling.order, &events);
        assert_eq!(view.processing.current_stage, "COMPENSATING");
    }

    #[test]
    fn step_progress_has_its_wire_names() {
        for (progress, name) in [
            (StepProgress::Pending, "PENDING"),
            (StepProgress::InProgress, "IN_PROGRESS"),
            (StepProgress::Completed, "COMPLETED"),
            (StepProgress::Failed, "FAILED"),
            (StepProgress::Compensated, "COMPENSATED"),
        ] {
            assert_eq!(serde_json::to_value(progress).unwrap(), json!(name));
        }
    }

    #[test]
    fn step_views_follow_progress() {
        let (order, first) = received();
        let d = validated(&order);
        let events = shared([vec![first], d.events].concat());
        let views = step_views(&d.order, &events);
        let states: Vec<_> = views
            .iter()
            .map(|v| serde_json::to_value(v.status).unwrap())
            .collect();
        assert_eq!(states, ["COMPLETED", "IN_PROGRESS", "PENDING"]);
        assert!(views[0].timestamp.is_some());
    }
}
