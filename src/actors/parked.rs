//! Step requests parked on an open circuit, and whether one is still wanted when the
//! circuit lets it go.
//!
//! A request can wait a long time on an open circuit, and its order does not wait
//! with it: the saga retries, gives up and compensates, or the customer cancels. A
//! parked RESERVE sent after its order began compensating would reserve stock that
//! nobody releases. So before a parked request goes out, the adapter reads the order
//! once from the store and `verdict` decides; a request whose order has moved on is
//! dropped (acknowledged, not sent). Among requests parked here, only the newest
//! attempt of an order's operation is sent: the order waits on that one only.

use crate::bus::Acker;
use crate::domain::StepRequest;
use crate::domain::saga::next_operation;
use crate::domain::{Operation, Order, OrderId, OrderStatus};
use std::collections::{HashMap, VecDeque};

/// Why a parked request is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moot {
    /// The store no longer has the order.
    UnknownOrder,
    /// A newer attempt of the same operation is parked too.
    Superseded,
    /// The order waits on another operation (or on none): the step settled, or the
    /// order is compensating, failed, cancelled or delivered.
    MovedOn {
        status: OrderStatus,
        waiting_on: Option<Operation>,
    },
}

impl std::fmt::Display for Moot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownOrder => f.write_str("the order does not exist"),
            Self::Superseded => f.write_str("a newer attempt is waiting"),
            Self::MovedOn {
                status,
                waiting_on: Some(op),
            } => write!(f, "the order is {status} and waits on {}", op.name()),
            Self::MovedOn {
                status,
                waiting_on: None,
            } => write!(f, "the order is {status} and waits on no call"),
        }
    }
}

/// Send the parked `request`, or why not, given its order as persisted now.
pub(crate) fn verdict(request: &StepRequest, order: Option<&Order>) -> Result<(), Moot> {
    let Some(order) = order else {
        return Err(Moot::UnknownOrder);
    };
    let waiting_on = next_operation(order);
    if waiting_on == Some(request.operation) {
        Ok(())
    } else {
        Err(Moot::MovedOn {
            status: order.status,
            waiting_on,
        })
    }
}

/// First in, first out, remembering the newest attempt parked per order operation:
/// the highest attempt number within one shard ownership (`epoch`), and the latest
/// parked when the shard changed owners (attempt numbers start again with each).
#[derive(Default)]
pub(crate) struct ParkedQueue {
    /// Each request with its acknowledgement and the `traceparent` of the step that
    /// asked for it, so that the call joins the order's trace when it goes.
    queue: VecDeque<(Box<StepRequest>, Acker, Option<String>)>,
    newest: HashMap<(OrderId, Operation), (u64, u32)>,
}

impl ParkedQueue {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn push(&mut self, request: Box<StepRequest>, ack: Acker, trace: Option<String>) {
        let this = (request.epoch, request.attempt);
        let newest = self
            .newest
            .entry((request.order_id.clone(), request.operation))
            .or_insert(this);
        if newest.0 != this.0 || newest.1 < this.1 {
            *newest = this;
        }
        self.queue.push_back((request, ack, trace));
    }

    /// The oldest parked request, with `Err(Superseded)` when a newer attempt of it
    /// is parked behind it.
    pub(crate) fn pop(&mut self) -> Option<ParkedCall> {
        let (request, ack, trace) = self.queue.pop_front()?;
        let key = (request.order_id.clone(), request.operation);
        let current = match self.newest.get(&key) {
            Some(newest) if *newest != (request.epoch, request.attempt) => Err(Moot::Superseded),
            _ => {
                self.newest.remove(&key);
                Ok(())
            }
        };
        Some((request, ack, trace, current))
    }
}

/// A parked request as it leaves the queue: with its acknowledgement, its trace
/// context, and whether it is still worth making.
pub(crate) type ParkedCall = (Box<StepRequest>, Acker, Option<String>, Result<(), Moot>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use crate::domain::saga::{SagaInput, decide};
    use crate::domain::{CustomerProfile, OperationOutcome};
    use chrono::Utc;

    fn received() -> Order {
        fixtures::received_by("ORD-1", "usr_1", Utc::now()).0
    }

    fn request(order: &Order, operation: Operation, attempt: u32) -> StepRequest {
        StepRequest {
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            operation,
            attempt,
            epoch: 0,
            pickup: order.pickup_location.clone(),
            delivery: order.delivery_address.clone(),
            package: order.package_details.clone(),
            route_id: None,
        }
    }

    fn after(order: &Order, input: SagaInput) -> Order {
        decide(order, input, Utc::now()).unwrap().order
    }

    fn validated(order: &Order) -> Order {
        let profile = CustomerProfile {
            name: "A".into(),
            tier: "standard".into(),
        };
        after(
            order,
            SagaInput::Outcome(
                Operation::ValidateCustomer,
                OperationOutcome::CustomerValidated(profile),
            ),
        )
    }

    #[test]
    fn a_request_the_order_still_waits_on_is_sent() {
        let order = received();
        let validate = request(&order, Operation::ValidateCustomer, 1);
        assert_eq!(verdict(&validate, Some(&order)), Ok(()));
        let order = validated(&order);
        let reserve = request(&order, Operation::ReserveInventory, 2);
        assert_eq!(verdict(&reserve, Some(&order)), Ok(()));
    }

    #[test]
    fn a_request_of_a_failed_order_is_dropped() {
        let order = received();
        let validate = request(&order, Operation::ValidateCustomer, 1);
        let failed = after(
            &order,
            SagaInput::Outcome(
                Operation::ValidateCustomer,
                OperationOutcome::Exhausted {
                    reason: "timeout".into(),
                },
            ),
        );
        assert_eq!(failed.status, OrderStatus::Failed);
        assert_eq!(
            verdict(&validate, Some(&failed)),
            Err(Moot::MovedOn {
                status: OrderStatus::Failed,
                waiting_on: None
            })
        );
    }

    #[test]
    fn a_reservation_of_a_compensating_order_is_dropped_but_its_release_is_sent() {
        let order = validated(&received());
        let reserve = request(&order, Operation::ReserveInventory, 2);
        let compensating = after(&order, SagaInput::Cancel);
        assert_eq!(compensating.status, OrderStatus::Compensating);
        assert!(matches!(
            verdict(&reserve, Some(&compensating)),
            Err(Moot::MovedOn {
                status: OrderStatus::Compensating,
                waiting_on: Some(Operation::ReleaseInventory)
            })
        ));
        let release = request(&compensating, Operation::ReleaseInventory, 3);
        assert_eq!(verdict(&release, Some(&compensating)), Ok(()));
    }

    #[test]
    fn a_request_for_a_step_already_settled_is_dropped() {
        let order = received();
        let validate = request(&order, Operation::ValidateCustomer, 1);
        let validated = validated(&order);
        assert!(matches!(
            verdict(&validate, Some(&validated)),
            Err(Moot::MovedOn {
                waiting_on: Some(Operation::ReserveInventory),
                ..
            })
        ));
    }

    #[test]
    fn a_request_of_an_order_the_store_does_not_have_is_dropped() {
        let order = received();
        let validate = request(&order, Operation::ValidateCustomer, 1);
        assert_eq!(verdict(&validate, None), Err(Moot::UnknownOrder));
    }

    #[test]
    fn only_the_newest_parked_attempt_is_current() {
        let order = received();
        let mut parked = ParkedQueue::default();
        parked.push(
            Box::new(request(&order, Operation::ValidateCustomer, 1)),
            Acker::none(),
            None,
        );
        parked.push(
            Box::new(request(&order, Operation::ValidateCustomer, 2)),
            Acker::none(),
            None,
        );
        assert_eq!(parked.len(), 2);
        let (first, _, _, current) = parked.pop().unwrap();
        assert_eq!((first.attempt, current), (1, Err(Moot::Superseded)));
        let (second, _, _, current) = parked.pop().unwrap();
        assert_eq!((second.attempt, current), (2, Ok(())));
        assert!(parked.pop().is_none() && parked.is_empty());
        // Nothing is remembered of requests gone: a later attempt parks afresh.
        parked.push(
            Box::new(request(&order, Operation::ValidateCustomer, 1)),
            Acker::none(),
            None,
        );
        assert_eq!(parked.pop().unwrap().3, Ok(()));
    }

    #[test]
    fn a_new_owners_first_attempt_supersedes_the_old_owners_later_ones() {
        let order = received();
        let mut parked = ParkedQueue::default();
        let mut old_owner = request(&order, Operation::ValidateCustomer, 3);
        old_owner.epoch = 7;
        let mut new_owner = request(&order, Operation::ValidateCustomer, 1);
        new_owner.epoch = 9;
        parked.push(Box::new(old_owner), Acker::none(), None);
        parked.push(Box::new(new_owner), Acker::none(), None);
        let (first, _, _, current) = parked.pop().unwrap();
        assert_eq!((first.epoch, current), (7, Err(Moot::Superseded)));
        let (second, _, _, current) = parked.pop().unwrap();
        assert_eq!((second.epoch, second.attempt, current), (9, 1, Ok(())));
    }
}
