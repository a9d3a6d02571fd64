//! The order saga of DESIGN section 4 as a pure function: given an order and what
//! just happened, it returns the next order state, the events to append, and the
//! operation to run next. The OrderActor only executes these decisions, so every
//! branch (refusal, exhausted retries, cancel, compensation) is tested here without
//! IO.
//!
//! Steps run in sequence CMS -> WMS -> ROS. Running WMS and ROS side by side would
//! save one round trip, but INVENTORY_RESERVED and ROUTE_OPTIMIZED would then arrive
//! in either order; the strict order keeps statuses meaningful to customers.

use super::ids::UserId;
use super::order::{Compensation, CustomerProfile, Order, OrderEvent, Reservation, Route};
use super::status::OrderStatus;
use super::update::{
    self, CompensationStarted, CustomerData, CustomerValidated, DeliveryReported,
    InventoryReserved, OrderEnded, RouteOptimized,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Cms,
    Wms,
    Ros,
}

/// A back-office system's step in the journey: everything the domain and the wire
/// formats say about it, one row per system in `System::spec`. The typed parts it
/// names (the `Operation` and `OrderStatus` variants) and what a success records on
/// the order (`settle_forward`) stay typed; everything else reads the row.
#[derive(Debug)]
pub(crate) struct StepSpec {
    /// Its wire name: `integrationStatus` key, queue and metric label, URL segment.
    pub(crate) name: &'static str,
    /// The call that does the step, and its name in idempotency keys and logs.
    pub(crate) forward: (Operation, &'static str),
    /// The call that undoes it, its name, and what the customer reads when the undo
    /// could not be done (see `refusal`).
    pub(crate) compensation: (Operation, &'static str, &'static str),
    /// The status its success announces, and the event's message.
    pub(crate) reaches: (OrderStatus, &'static str),
    /// The step's id and name in seed 001's status view.
    pub(crate) view: (&'static str, &'static str),
    /// Seed 000's catalogue event for its success (also its routing key), and the
    /// fields it carries: each a name and its path in the success event's data.
    pub(crate) success_event: &'static str,
    pub(crate) success_fields: &'static [(&'static str, &'static [&'static str])],
    /// What the customer reads when this system says no. Customer-visible reasons
    /// are these fixed domain words: what the remote system said, and every error on
    /// the way (addresses, OS errors, parser messages), goes to the logs with the
    /// order id instead, for it can be internal or even hostile.
    refusal: &'static str,
    /// What the customer reads when the retry budget ran out without an answer.
    no_answer: &'static str,
    /// Whether its forward call changes the remote system (customer validation only
    /// reads), so that one whose outcome we never learned must be undone.
    pub(crate) forward_has_effect: bool,
}

impl System {
    /// Every system, in the order the journey runs them (CMS -> WMS -> ROS), which
    /// is also their order of declaration (see `index`).
    pub const ALL: [System; 3] = [System::Cms, System::Wms, System::Ros];

    /// The system's place in `ALL`, for tables with one entry per system.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// This system's step in the journey: one row per system, and everything the
    /// domain and the wire formats say about it. The rest of the crate reads it.
    pub(crate) fn spec(self) -> &'static StepSpec {
        match self {
            Self::Cms => &StepSpec {
                name: "cms",
                forward: (Operation::ValidateCustomer, "cms.validate"),
                compensation: (
                    Operation::CancelCustomerOrder,
                    "cms.cancel",
                    "the order could not be withdrawn from the customer records",
                ),
                reaches: (OrderStatus::CmsValidated, "Customer validated successfully"),
                view: ("CMS_VERIFICATION", "Customer Verification"),
                success_event: "cms.success",
                success_fields: &[("customerData", &["customerData"])],
                refusal: "the customer could not be validated",
                no_answer: "the customer records system did not answer in time",
                forward_has_effect: false,
            },
            Self::Wms => &StepSpec {
                name: "wms",
                forward: (Operation::ReserveInventory, "wms.reserve"),
                compensation: (
                    Operation::ReleaseInventory,
                    "wms.release",
                    "the reserved stock could not be released",
                ),
                reaches: (
                    OrderStatus::InventoryReserved,
                    "Inventory reserved successfully",
                ),
                view: ("WMS_REGISTRATION", "Inventory Reservation"),
                success_event: "wms.success",
                success_fields: &[
                    ("inventory", &["inventory"]),
                    ("warehouse", &["warehouse"]),
                    ("pickingLocation", &["pickingLocation"]),
                ],
                refusal: "the warehouse has no stock for the package",
                no_answer: "the warehouse did not answer in time",
                forward_has_effect: true,
            },
            Self::Ros => &StepSpec {
                name: "ros",
                forward: (Operation::OptimizeRoute, "ros.optimize"),
                compensation: (
                    Operation::CancelRoute,
                    "ros.cancel",
                    "the planned route could not be cancelled",
                ),
                reaches: (OrderStatus::RouteOptimized, "Route optimized successfully"),
                view: ("ROS_OPTIMIZATION", "Route Optimization"),
                success_event: "ros.success",
                // Seed 000 shows both the route object and its eta and distance beside it.
                success_fields: &[
                    ("eta", &["route", "eta"]),
                    ("distance", &["route", "distance"]),
                    ("route", &["route"]),
                ],
                refusal: "no route could be planned for the delivery",
                no_answer: "the route service did not answer in time",
                forward_has_effect: true,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// The wire names of every system, for messages: `cms, wms or ros`.
    pub(crate) fn names() -> String {
        let names: Vec<_> = Self::ALL.into_iter().map(Self::as_str).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// The system whose success announces `status`, if any.
    pub(crate) fn reaching(status: OrderStatus) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.spec().reaches.0 == status)
    }

    fn forward(self) -> Operation {
        self.spec().forward.0
    }

    fn compensation(self) -> Operation {
        self.spec().compensation.0
    }

    fn refusal(self) -> &'static str {
        self.spec().refusal
    }

    fn no_answer(self) -> &'static str {
        self.spec().no_answer
    }

    fn uncertain_call_may_have_effect(self) -> bool {
        self.spec().forward_has_effect
    }
}

// `ALL` lists the systems in their order of declaration, so `System::index` is
// their place in it.
const _: () = {
    let mut i = 0;
    while i < System::ALL.len() {
        assert!(System::ALL[i] as usize == i);
        i += 1;
    }
};

/// One call to an external system: the three forward steps and their undos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    ValidateCustomer,
    ReserveInventory,
    OptimizeRoute,
    CancelRoute,
    ReleaseInventory,
    CancelCustomerOrder,
}

impl Operation {
    /// The system this operation calls; its row (`System::spec`) says the rest.
    pub(crate) fn system(self) -> System {
        match self {
            Self::ValidateCustomer | Self::CancelCustomerOrder => System::Cms,
            Self::ReserveInventory | Self::ReleaseInventory => System::Wms,
            Self::OptimizeRoute | Self::CancelRoute => System::Ros,
        }
    }

    pub(crate) fn is_compensation(self) -> bool {
        self.system().compensation() == self
    }

    pub(crate) fn name(self) -> &'static str {
        let spec = self.system().spec();
        if self.is_compensation() {
            spec.compensation.1
        } else {
            spec.forward.1
        }
    }

    /// What the customer reads when this undo could not be done (see `System::refusal`).
    fn undo_failure(self) -> &'static str {
        if self.is_compensation() {
            self.system().spec().compensation.2
        } else {
            "a step could not be undone"
        }
    }

    /// Sent with every request so that a redelivered or resumed call never acts twice.
    pub(crate) fn idempotency_key(self, order_id: &super::OrderId) -> String {
        format!("{order_id}:{}", self.name())
    }
}

/// Progress of one system for one order; the values of `integrationStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepState {
    #[default]
    Pending,
    Completed,
    /// The system said no (unknown customer, no stock, no route).
    Refused,
    /// Gave up after the retry budget; the outcome on the remote side is unknown.
    Failed,
    Compensated,
}

/// What an operation came back with, as the adapters classify it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum OperationOutcome {
    CustomerValidated(CustomerProfile),
    InventoryReserved(Reservation),
    RouteOptimized(Route),
    /// A compensating operation took effect (or had nothing to undo).
    Undone,
    /// A business refusal: retrying cannot help. `reason` is what the system said,
    /// for the logs only: customers read `System::refusal`.
    Refused {
        reason: String,
    },
    /// Transient failures outlasted the retry budget, or the reply broke the
    /// protocol: either way the outcome on the remote side is unknown. `reason` is
    /// the last error, for the logs only: customers read `System::no_answer`.
    Exhausted {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SagaInput {
    Outcome(Operation, OperationOutcome),
    Cancel,
    /// An admin gives the order to a driver (or to another driver).
    Assign {
        driver: UserId,
    },
    /// The order leaves with its driver, or arrives; `by` is who said so (the
    /// assigned driver or an admin), kept in the event for the audit trail.
    Delivery {
        status: OrderStatus,
        by: UserId,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SagaDecision {
    pub order: Order,
    pub events: Vec<OrderEvent>,
    pub(crate) next: Option<Operation>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaRejection {
    /// The input does not fit the order's state (a late reply to a call already
    /// settled, for instance); nothing changes.
    #[error("stale input for the order's current state")]
    Stale,
    /// A request the client may retry only once the state changes: answered as 409.
    #[error("{0}")]
    Conflict(String),
}

/// The operation the order is waiting on, if any. Used to start and to resume.
pub(crate) fn next_operation(order: &Order) -> Option<Operation> {
    if let Some(compensation) = &order.compensation {
        return compensation.remaining.first().copied();
    }
    if !order.status.is_processing() {
        return None;
    }
    System::ALL
        .into_iter()
        .find(|s| order.integration_status.get(*s) == StepState::Pending)
        .map(System::forward)
}

/// Undo operations for everything that may have taken effect, latest first.
fn compensation_plan(order: &Order) -> Vec<Operation> {
    // The step that may be in flight: the first pending one, if all before it passed.
    let current = System::ALL
        .into_iter()
        .find(|s| order.integration_status.get(*s) != StepState::Completed)
        .filter(|s| order.integration_status.get(*s) == StepState::Pending);
    System::ALL
        .into_iter()
        .rev()
        .filter(|s| match order.integration_status.get(*s) {
            // A route the optimiser gave no id for cannot be cancelled.
            StepState::Completed => {
                *s != System::Ros || order.route.as_ref().is_none_or(|r| r.route_id.is_some())
            }
            StepState::Failed => s.uncertain_call_may_have_effect(),
            StepState::Pending => Some(*s) == current && s.uncertain_call_may_have_effect(),
            StepState::Refused | StepState::Compensated => false,
        })
        .map(System::compensation)
        .collect()
}

struct Draft {
    order: Order,
    events: Vec<OrderEvent>,
    now: DateTime<Utc>,
}

impl Draft {
    fn new(order: &Order, now: DateTime<Utc>) -> Self {
        let mut order = order.clone();
        order.version += 1;
        order.updated_at = now;
        Self {
            order,
            events: Vec::new(),
            now,
        }
    }

    fn announce(&mut self, status: OrderStatus, message: &str, data: Value) {
        self.order.status = status;
        self.order.seq += 1;
        let event = self.order.event(self.order.seq, message, data, self.now);
        self.events.push(event);
    }

    fn begin_compensation(&mut self, outcome: OrderStatus, reason: String) {
        let remaining = compensation_plan(&self.order);
        if remaining.is_empty() {
            self.finish(outcome, reason);
        } else {
            let message = format!("Compensating: {reason}");
            self.announce(
                OrderStatus::Compensating,
                &message,
                update::payload(&CompensationStarted {
                    reason: &reason,
                    compensations: &remaining,
                }),
            );
            self.order.compensation = Some(Compensation {
                outcome,
                reason,
                remaining,
            });
        }
    }

    fn finish(&mut self, outcome: OrderStatus, reason: String) {
        self.order.compensation = None;
        let message = match outcome {
            OrderStatus::Cancelled => "Order cancelled".to_owned(),
            _ => format!("Order failed: {reason}"),
        };
        self.order.failure_reason = Some(reason.clone());
        self.announce(
            outcome,
            &message,
            update::payload(&OrderEnded { reason: &reason }),
        );
    }

    fn done(self) -> SagaDecision {
        let next = next_operation(&self.order);
        SagaDecision {
            order: self.order,
            events: self.events,
            next,
        }
    }
}

pub fn decide(
    order: &Order,
    input: SagaInput,
    now: DateTime<Utc>,
) -> Result<SagaDecision, SagaRejection> {
    let mut draft = Draft::new(order, now);
    match input {
        SagaInput::Outcome(op, outcome) => {
            if next_operation(order) != Some(op) {
                return Err(SagaRejection::Stale);
            }
            if op.is_compensation() {
                settle_compensation(&mut draft, op, outcome)?;
            } else {
                settle_forward(&mut draft, op, outcome)?;
            }
        }
        SagaInput::Cancel => {
            if !order.status.is_cancellable() {
                return Err(SagaRejection::Conflict(format!(
                    "an order that is {} can no longer be cancelled",
                    order.status
                )));
            }
            draft.begin_compensation(OrderStatus::Cancelled, "cancelled by the customer".into());
        }
        SagaInput::Assign { driver } => {
            // Once the parcel is on a van, the driver carrying it is the one who
            // delivers it; a failed, cancelled or compensating order needs no one.
            let open = !order.status.is_terminal()
                && !matches!(
                    order.status,
                    OrderStatus::OutForDelivery | OrderStatus::Compensating
                );
            if !open {
                return Err(SagaRejection::Conflict(format!(
                    "an order that is {} cannot be assigned to a driver",
                    order.status
                )));
            }
            // Not a status change, so no update for the customer's event log; the
            // order document shows the driver, and the API logs who assigned whom.
            draft.order.driver_id = Some(driver);
        }
        SagaInput::Delivery { status, by } => {
            if order.status.next_delivery_report() != Some(status) {
                return Err(SagaRejection::Conflict(format!(
                    "cannot move an order from {} to {status}",
                    order.status
                )));
            }
            let message = match status {
                OrderStatus::OutForDelivery => "Out for delivery",
                _ => "Delivered",
            };
            let data = update::payload(&DeliveryReported {
                driver_id: order.driver_id.as_ref(),
                by: &by,
            });
            draft.announce(status, message, data);
        }
    }
    Ok(draft.done())
}

fn settle_forward(
    draft: &mut Draft,
    op: Operation,
    outcome: OperationOutcome,
) -> Result<(), SagaRejection> {
    let system = op.system();
    // What the success records on the order, and what its event carries.
    let data = match (op, outcome) {
        (Operation::ValidateCustomer, OperationOutcome::CustomerValidated(profile)) => {
            let data = update::payload(&CustomerValidated {
                customer_data: CustomerData {
                    id: &draft.order.customer_id,
                    name: &profile.name,
                    tier: &profile.tier,
                },
            });
            draft.order.customer = Some(profile);
            data
        }
        (Operation::ReserveInventory, OperationOutcome::InventoryReserved(reservation)) => {
            let data = update::payload(&InventoryReserved {
                inventory: "RESERVED",
                warehouse: &reservation.warehouse,
                picking_location: reservation.picking_location.as_deref(),
            });
            draft.order.warehouse = Some(reservation);
            data
        }
        (Operation::OptimizeRoute, OperationOutcome::RouteOptimized(route)) => {
            let data = update::payload(&RouteOptimized { route: &route });
            draft.order.route = Some(route);
            data
        }
        (_, OperationOutcome::Refused { .. }) => {
            draft
                .order
                .integration_status
                .set(system, StepState::Refused);
            draft.begin_compensation(OrderStatus::Failed, system.refusal().to_owned());
            return Ok(());
        }
        (_, OperationOutcome::Exhausted { .. }) => {
            draft
                .order
                .integration_status
                .set(system, StepState::Failed);
            draft.begin_compensation(OrderStatus::Failed, system.no_answer().to_owned());
            return Ok(());
        }
        _ => return Err(SagaRejection::Stale),
    };
    draft
        .order
        .integration_status
        .set(system, StepState::Completed);
    let (status, message) = system.spec().reaches;
    draft.announce(status, message, data);
    // The last step done, the order waits for its driver.
    if next_operation(&draft.order).is_none() {
        draft.announce(
            OrderStatus::ReadyForDelivery,
            "Order ready for delivery",
            Value::Null,
        );
    }
    Ok(())
}

fn settle_compensation(
    draft: &mut Draft,
    op: Operation,
    outcome: OperationOutcome,
) -> Result<(), SagaRejection> {
    let Some(mut compensation) = draft.order.compensation.take() else {
        return Err(SagaRejection::Stale);
    };
    let system = op.system();
    let message = match outcome {
        OperationOutcome::Undone => {
            draft
                .order
                .integration_status
                .set(system, StepState::Compensated);
            format!(
                "{} compensated ({})",
                system.as_str().to_uppercase(),
                op.name()
            )
        }
        OperationOutcome::Refused { .. } | OperationOutcome::Exhausted { .. } => {
            // An undo that cannot be done is recorded for operators (integration
            // status, logs) and the saga moves on: holding the order forever would
            // help no one.
            draft
                .order
                .integration_status
                .set(system, StepState::Failed);
            compensation.reason = format!("{}; {}", compensation.reason, op.undo_failure());
            format!(
                "{} could not be compensated",
                system.as_str().to_uppercase()
            )
        }
        _ => return Err(SagaRejection::Stale),
    };
    compensation.remaining.retain(|o| *o != op);
    if compensation.remaining.is_empty() {
        draft.finish(compensation.outcome, compensation.reason);
    } else {
        draft.order.compensation = Some(compensation);
        draft.announce(OrderStatus::Compensating, &message, Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{self, now, profile, reserved, routed};

    fn received() -> Order {
        fixtures::received("ORD-1")
    }

    fn step(order: &Order, op: Operation, outcome: OperationOutcome) -> SagaDecision {
        decide(order, SagaInput::Outcome(op, outcome), now()).unwrap()
    }

    fn ready() -> Order {
        let d = step(&received(), Operation::ValidateCustomer, profile());
        let d = step(&d.order, Operation::ReserveInventory, reserved());
        step(&d.order, Operation::OptimizeRoute, routed()).order
    }

    fn statuses(d: &SagaDecision) -> Vec<OrderStatus> {
        d.events.iter().map(|e| e.status).collect()
    }

    #[test]
    fn happy_path_runs_cms_then_wms_then_ros_and_ends_ready() {
        let order = received();
        assert_eq!(next_operation(&order), Some(Operation::ValidateCustomer));
        let d = step(&order, Operation::ValidateCustomer, profile());
        assert_eq!(statuses(&d), [OrderStatus::CmsValidated]);
        assert_eq!(d.next, Some(Operation::ReserveInventory));
        assert_eq!(d.events[0].seq, 2);
        let d = step(&d.order, Operation::ReserveInventory, reserved());
        assert_eq!(d.next, Some(Operation::OptimizeRoute));
        let d = step(&d.order, Operation::OptimizeRoute, routed());
        assert_eq!(
            statuses(&d),
            [OrderStatus::RouteOptimized, OrderStatus::ReadyForDelivery]
        );
        assert_eq!(d.next, None);
        assert_eq!(d.order.seq, 5);
        assert_eq!(d.order.version, 4);
        assert!(d.order.route.is_some() && d.order.warehouse.is_some());
    }

    #[test]
    fn late_or_unexpected_replies_change_nothing() {
        let order = received();
        let stale = decide(
            &order,
            SagaInput::Outcome(Operation::ReserveInventory, reserved()),
            now(),
        );
        assert_eq!(stale, Err(SagaRejection::Stale));
        let mismatched = decide(
            &order,
            SagaInput::Outcome(Operation::ValidateCustomer, reserved()),
            now(),
        );
        assert_eq!(mismatched, Err(SagaRejection::Stale));
    }

    #[test]
    fn refusal_compensates_completed_steps_in_reverse_and_fails() {
        let d = step(&received(), Operation::ValidateCustomer, profile());
        let d = step(&d.order, Operation::ReserveInventory, reserved());
        let d = step(
            &d.order,
            Operation::OptimizeRoute,
            OperationOutcome::Refused {
                reason: "no route".into(),
            },
        );
        assert_eq!(statuses(&d), [OrderStatus::Compensating]);
        assert_eq!(
            d.order.compensation.as_ref().unwrap().remaining,
            [Operation::ReleaseInventory, Operation::CancelCustomerOrder]
        );
        assert_eq!(d.next, Some(Operation::ReleaseInventory));
        let d = step(
            &d.order,
            Operation::ReleaseInventory,
            OperationOutcome::Undone,
        );
        assert_eq!(d.next, Some(Operation::CancelCustomerOrder));
        let d = step(
            &d.order,
            Operation::CancelCustomerOrder,
            OperationOutcome::Undone,
        );
        assert_eq!(statuses(&d), [OrderStatus::Failed]);
        assert_eq!(d.next, None);
        assert_eq!(
            d.order.failure_reason.as_deref(),
            Some("no route could be planned for the delivery")
        );
        assert_eq!(
            d.order.integration_status.get(System::Wms),
            StepState::Compensated
        );
        assert_eq!(
            d.order.integration_status.get(System::Ros),
            StepState::Refused
        );
    }

    #[test]
    fn unknown_customer_fails_at_once_with_nothing_to_undo() {
        let d = step(
            &received(),
            Operation::ValidateCustomer,
            OperationOutcome::Refused {
                reason: "unknown customer".into(),
            },
        );
        assert_eq!(statuses(&d), [OrderStatus::Failed]);
        assert_eq!(d.next, None);
    }

    #[test]
    fn exhausted_reservation_is_released_because_it_may_have_happened() {
        let d = step(&received(), Operation::ValidateCustomer, profile());
        let d = step(
            &d.order,
            Operation::ReserveInventory,
            OperationOutcome::Exhausted {
                reason: "timeout".into(),
            },
        );
        assert_eq!(
            d.order.compensation.as_ref().unwrap().remaining,
            [Operation::ReleaseInventory, Operation::CancelCustomerOrder]
        );
    }

    #[test]
    fn cancel_before_delivery_undoes_everything_and_ends_cancelled() {
        let d = decide(&ready(), SagaInput::Cancel, now()).unwrap();
        assert_eq!(d.next, Some(Operation::CancelRoute));
        let d = step(&d.order, Operation::CancelRoute, OperationOutcome::Undone);
        let d = step(
            &d.order,
            Operation::ReleaseInventory,
            OperationOutcome::Undone,
        );
        let d = step(
            &d.order,
            Operation::CancelCustomerOrder,
            OperationOutcome::Undone,
        );
        assert_eq!(d.order.status, OrderStatus::Cancelled);
    }

    #[test]
    fn cancel_during_a_reservation_also_releases_it() {
        let d = step(&received(), Operation::ValidateCustomer, profile());
        let d = decide(&d.order, SagaInput::Cancel, now()).unwrap();
        assert_eq!(
            d.order.compensation.unwrap().remaining,
            [Operation::ReleaseInventory, Operation::CancelCustomerOrder]
        );
    }

    #[test]
    fn cancel_is_refused_once_out_for_delivery_or_twice() {
        let driver = UserId::from_trusted("usr_d");
        let out = decide(
            &ready(),
            SagaInput::Delivery {
                status: OrderStatus::OutForDelivery,
                by: driver,
            },
            now(),
        )
        .unwrap();
        assert!(matches!(
            decide(&out.order, SagaInput::Cancel, now()),
            Err(SagaRejection::Conflict(_))
        ));
        let compensating = decide(&ready(), SagaInput::Cancel, now()).unwrap();
        assert!(matches!(
            decide(&compensating.order, SagaInput::Cancel, now()),
            Err(SagaRejection::Conflict(_))
        ));
    }

    #[test]
    fn a_failed_undo_is_recorded_and_the_saga_still_ends() {
        let d = decide(&ready(), SagaInput::Cancel, now()).unwrap();
        let d = step(
            &d.order,
            Operation::CancelRoute,
            OperationOutcome::Exhausted {
                reason: "ROS down".into(),
            },
        );
        let d = step(
            &d.order,
            Operation::ReleaseInventory,
            OperationOutcome::Undone,
        );
        let d = step(
            &d.order,
            Operation::CancelCustomerOrder,
            OperationOutcome::Undone,
        );
        assert_eq!(d.order.status, OrderStatus::Cancelled);
        assert_eq!(
            d.order.failure_reason.as_deref(),
            Some("cancelled by the customer; the planned route could not be cancelled")
        );
    }

    #[test]
    fn drivers_move_orders_forward_only() {
        let driver = UserId::from_trusted("usr_d");
        let delivery = |status| SagaInput::Delivery {
            status,
            by: driver.clone(),
        };
        assert!(decide(&received(), delivery(OrderStatus::OutForDelivery), now()).is_err());
        assert!(decide(&ready(), delivery(OrderStatus::Delivered), now()).is_err());
        let out = decide(&ready(), delivery(OrderStatus::OutForDelivery), now()).unwrap();
        let done = decide(&out.order, delivery(OrderStatus::Delivered), now()).unwrap();
        assert_eq!(done.order.status, OrderStatus::Delivered);
        assert!(done.order.status.is_terminal());
    }

    /// Issue 9 item 6: whatever a system or the network said (addresses, OS errors,
    /// parser messages, a hostile server's text), the customer reads domain words.
    #[test]
    fn failure_reasons_are_domain_words_whatever_the_systems_said() {
        let leaks = [
            "http://10.0.0.7:8080/cms",
            "connection refused (os error 111)",
            "expected value at line 1 column 1",
            "<script>",
        ];
        let detail = leaks.join("; ");
        let refused = || OperationOutcome::Refused {
            reason: detail.clone(),
        };
        let exhausted = || OperationOutcome::Exhausted {
            reason: detail.clone(),
        };
        let validated = step(&received(), Operation::ValidateCustomer, profile());
        let reserved = step(&validated.order, Operation::ReserveInventory, reserved());
        let cases = [
            (
                received(),
                Operation::ValidateCustomer,
                refused(),
                "the customer could not be validated",
            ),
            (
                validated.order.clone(),
                Operation::ReserveInventory,
                refused(),
                "the warehouse has no stock for the package",
            ),
            (
                reserved.order.clone(),
                Operation::OptimizeRoute,
                exhausted(),
                "the route service did not answer in time",
            ),
            (
                validated.order,
                Operation::ReserveInventory,
                exhausted(),
                "the warehouse did not answer in time",
            ),
        ];
        for (order, op, outcome, expected) in cases {
            let mut d = step(&order, op, outcome);
            let mut events = d.events.clone();
            // Every undo fails too, with the same chatter.
            while let Some(undo) = d.next {
                d = step(&d.order, undo, exhausted());
                events.extend(d.events.clone());
            }
            assert_eq!(d.order.status, OrderStatus::Failed);
            let reason = d.order.failure_reason.clone().unwrap();
            assert!(reason.starts_with(expected), "{reason}");
            let shown = serde_json::to_string(&(&d.order, &events)).unwrap();
            for leak in leaks {
                assert!(!shown.contains(leak), "{leak} leaked into {shown}");
            }
        }
    }

    #[test]
    fn an_admin_assigns_a_driver_until_the_parcel_leaves() {
        let driver = UserId::from_trusted("usr_d");
        let assign = |driver: &UserId| SagaInput::Assign {
            driver: driver.clone(),
        };
        let early = decide(&received(), assign(&driver), now()).unwrap();
        assert_eq!(early.order.driver_id.as_ref(), Some(&driver));
        assert_eq!(early.order.status, OrderStatus::Received);
        assert!(
            early.events.is_empty(),
            "no status change, nothing to announce"
        );
        assert_eq!(early.order.version, received().version + 1, "but a write");
        assert_eq!(
            early.next,
            Some(Operation::ValidateCustomer),
            "the saga goes on"
        );

        let other = UserId::from_trusted("usr_e");
        let assigned = decide(&ready(), assign(&driver), now()).unwrap();
        let reassigned = decide(&assigned.order, assign(&other), now()).unwrap();
        assert_eq!(reassigned.order.driver_id.as_ref(), Some(&other));

        let out = decide(
            &reassigned.order,
            SagaInput::Delivery {
                status: OrderStatus::OutForDelivery,
                by: other.clone(),
            },
            now(),
        )
        .unwrap();
        assert_eq!(out.order.driver_id.as_ref(), Some(&other), "kept");
        assert_eq!(out.events[0].data["driverId"], "usr_e");
        for closed in [
            out.order,
            decide(&ready(), SagaInput::Cancel, now()).unwrap().order,
        ] {
            assert!(matches!(
                decide(&closed, assign(&driver), now()),
                Err(SagaRejection::Conflict(_))
            ));
        }
    }

    #[test]
    fn each_system_declares_one_step_of_its_own() {
        let mut names = std::collections::HashSet::new();
        let mut statuses = std::collections::HashSet::new();
        for system in System::ALL {
            let spec = system.spec();
            assert!(names.insert(spec.name), "{} twice", spec.name);
            assert!(statuses.insert(spec.reaches.0), "{} twice", spec.reaches.0);
            assert_eq!(System::parse(spec.name), Some(system));
            assert_eq!(serde_json::to_value(system).unwrap(), spec.name);
            let (forward, compensation) = (spec.forward.0, spec.compensation.0);
            assert_eq!((forward.system(), compensation.system()), (system, system));
            assert!(!forward.is_compensation() && compensation.is_compensation());
            assert_eq!(forward.name(), spec.forward.1);
            assert_eq!(compensation.name(), spec.compensation.1);
            assert_eq!(System::reaching(spec.reaches.0), Some(system));
            assert!(spec.reaches.0.is_processing());
        }
        assert_eq!(System::names(), "cms, wms or ros");
    }
}
