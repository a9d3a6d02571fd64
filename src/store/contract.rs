//! The rules of the store contract that do not depend on a backend, in one place:
//! what a write must look like before it reaches the database, what the stored order
//! must be for a compare-and-set to apply, when an idempotency key replays, and how a
//! page of orders ends. Both backends call these; only how they read and write
//! differs.

use super::{OrderCursor, OrderPage, StoreError};
use crate::domain::{Order, OrderEvent, OrderId};
use std::sync::Arc;

/// A new order must come with its own first event, at the order's seq.
pub(crate) fn check_intake(order: &Order, first_event: &OrderEvent) -> Result<(), StoreError> {
    if first_event.order_id == order.order_id && first_event.seq == order.seq {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "order {}: the first event must belong to it and carry its seq",
            order.order_id
        )))
    }
}

/// What the stored order must be for an update to apply: the version before it and
/// the seq its log ends at, which the update's events continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) version: u64,
    pub(crate) log_end: u64,
}

impl Expected {
    /// Checks an update on its own (before any IO): a version past the first, events
    /// of this order only, consecutive and ending at the order's seq.
    pub(crate) fn of_update(order: &Order, events: &[Arc<OrderEvent>]) -> Result<Self, StoreError> {
        let Some(version) = order.version.checked_sub(1) else {
            return Err(StoreError::Corrupt(format!(
                "order {}: an update carries version 1 or more",
                order.order_id
            )));
        };
        let consecutive = events
            .windows(2)
            .all(|w| w[0].seq.checked_add(1) == Some(w[1].seq));
        let ends_at_order = events.last().is_none_or(|e| e.seq == order.seq);
        let same_order = events.iter().all(|e| e.order_id == order.order_id);
        if !(consecutive && ends_at_order && same_order) {
            return Err(StoreError::Corrupt(format!(
                "order {}: events must be its own, consecutive and end at seq {}",
                order.order_id, order.seq
            )));
        }
        let log_end = match events.first() {
            Some(first) => first.seq.checked_sub(1).ok_or_else(|| {
                StoreError::Corrupt(format!("order {}: event seqs start at 1", order.order_id))
            })?,
            None => order.seq,
        };
        Ok(Self { version, log_end })
    }

    /// Why the stored order (at `stored_version`, its log ending at `stored_seq`)
    /// refuses the update, if it does: someone else changed it first (the caller
    /// reloads and decides again), or the update's events do not continue its log.
    pub(crate) fn refusal(
        &self,
        order: &OrderId,
        stored_version: u64,
        stored_seq: u64,
    ) -> Option<StoreError> {
        if stored_version != self.version {
            Some(StoreError::VersionConflict {
                expected: self.version,
            })
        } else if stored_seq != self.log_end {
            Some(broken_log(order, stored_seq))
        } else {
            None
        }
    }
}

/// An update whose events do not continue the stored log (which ends at `stored_seq`).
pub(crate) fn broken_log(order: &OrderId, stored_seq: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "order {order}: events must continue the log after seq {stored_seq}"
    ))
}

/// Whether a request may replay the order an earlier request with the same key made:
/// when both came with the same fingerprint, or the earlier order was stored before
/// fingerprints existed (`None`). Otherwise the key is being reused.
pub(crate) fn replays(stored_fingerprint: Option<&str>, fingerprint: &str) -> bool {
    stored_fingerprint.is_none_or(|stored| stored == fingerprint)
}

/// A page of `orders` (newest first, at most a page); `more` tells whether the
/// listing found orders past them, so that the next page starts after the last one.
pub(crate) fn page(orders: Vec<Order>, more: bool) -> OrderPage {
    let next = match orders.last() {
        Some(last) if more => Some(OrderCursor {
            created_at: last.created_at,
            order_id: last.order_id.clone(),
        }),
        _ => None,
    };
    OrderPage { orders, next }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use crate::domain::fixtures;
    use chrono::{TimeZone, Utc};

    /// A received order with its first event, at a time with milliseconds (which
    /// every backend keeps).
    pub(crate) fn placed() -> (Order, OrderEvent) {
        let at = Utc
            .timestamp_millis_opt(1_770_000_000_123)
            .single()
            .unwrap();
        fixtures::received_by("ORD-20260204-AAAA", "usr_a", at)
    }

    /// The order one step on, with the events of that step (`count` of them).
    fn stepped(count: u64) -> (Order, Vec<Arc<OrderEvent>>) {
        let (mut order, first) = placed();
        order.version += 1;
        order.status = OrderStatus::CmsValidated;
        let from = order.seq;
        let events = (1..=count)
            .map(|n| {
                Arc::new(OrderEvent {
                    seq: from + n,
                    ..first.clone()
                })
            })
            .collect();
        order.seq = from + count;
        (order, events)
    }

    #[test]
    fn a_new_order_needs_its_own_first_event_at_its_seq() {
        let (order, event) = placed();
        assert!(check_intake(&order, &event).is_ok());
        let mut late = event.clone();
        late.seq += 1;
        assert!(matches!(
            check_intake(&order, &late),
            Err(StoreError::Corrupt(_))
        ));
        let mut foreign = event;
        foreign.order_id = OrderId::parse("ORD-20260204-BBBB").unwrap();
        assert!(matches!(
            check_intake(&order, &foreign),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn an_update_expects_the_version_before_it_and_the_log_its_events_continue() {
        let (order, events) = stepped(2);
        assert_eq!(
            Expected::of_update(&order, &events).unwrap(),
            Expected {
                version: order.version - 1,
                log_end: order.seq - 2,
            }
        );
        // Without events the log must already end where the order says.
        assert_eq!(Expected::of_update(&order, &[]).unwrap().log_end, order.seq);
    }

    #[test]
    fn malformed_updates_are_refused_before_any_io() {
        let (order, events) = stepped(2);
        let mut first = order.clone();
        first.version = 0;
        let mut gap = events.clone();
        Arc::make_mut(&mut gap[1]).seq += 1;
        let mut short = order.clone();
        short.seq += 1;
        let mut foreign = events.clone();
        Arc::make_mut(&mut foreign[0]).order_id = OrderId::parse("ORD-20260204-BBBB").unwrap();
        let mut from_zero = events[..1].to_vec();
        Arc::make_mut(&mut from_zero[0]).seq = 0;
        let mut at_zero = order.clone();
        at_zero.seq = 0;
        for (order, events) in [
            (&first, &events),
            (&order, &gap),
            (&short, &events),
            (&order, &foreign),
            (&at_zero, &from_zero),
        ] {
            assert!(
                matches!(
                    Expected::of_update(order, events),
                    Err(StoreError::Corrupt(_))
                ),
                "{order:?} {events:?}"
            );
        }
    }

    #[test]
    fn a_stored_order_refuses_an_update_made_from_another_version_or_log() {
        let (order, events) = stepped(1);
        let expected = Expected::of_update(&order, &events).unwrap();
        let id = &order.order_id;
        assert!(
            expected
                .refusal(id, expected.version, expected.log_end)
                .is_none()
        );
        assert!(matches!(
            expected.refusal(id, expected.version + 1, expected.log_end + 1),
            Some(StoreError::VersionConflict { expected: v }) if v == expected.version
        ));
        assert!(matches!(
            expected.refusal(id, expected.version, expected.log_end + 1),
            Some(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_key_replays_only_the_request_it_came_with() {
        assert!(replays(Some("f1"), "f1"));
        assert!(!replays(Some("f1"), "f2"));
        assert!(
            replays(None, "f2"),
            "orders stored before fingerprints replay"
        );
    }

    #[test]
    fn a_page_points_past_its_last_order_only_when_more_follow() {
        let (order, _) = placed();
        let last = page(vec![order.clone()], true);
        assert_eq!(
            last.next,
            Some(OrderCursor {
                created_at: order.created_at,
                order_id: order.order_id.clone(),
            })
        );
        assert_eq!(page(vec![order], false).next, None);
        assert_eq!(page(Vec::new(), true).next, None);
    }
}
