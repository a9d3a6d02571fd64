//! Orders and their event logs ([`OrderStore`]): intake as one insert, transitions
//! as one compare-and-set, listings and sweeps as queries on the order documents.

use super::batches::{CasOutcome, CasWrite, Inserted};
use super::encoding::{
    COMMIT_FIELD, EVENT_DATES, EVENTS_FIELD, FINGERPRINT_FIELD, IDEMPOTENCY_FIELD,
    IMMUTABLE_FIELDS, ORDER_DATES, ORDER_OPTIONAL_FIELDS, OrderHead, bson_date, bson_int, decode,
    encode, encode_events, order_id_of, order_projection,
};
use super::{MongoStore, corrupt, failure};
use crate::domain::{Order, OrderEvent, OrderId, OrderStatus, UserId};
use crate::store::contract::{self, Expected};
use crate::store::{
    EventLog, IdempotencyKey, Intake, OrderPage, OrderQuery, OrderStore, StoreError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use std::sync::Arc;

/// Takes the event log out of an order document: up to `limit` events with `seq >
/// after`, in order.
fn take_log(
    document: &mut Document,
    id: &OrderId,
    after: u64,
    limit: usize,
) -> Result<Vec<Arc<OrderEvent>>, StoreError> {
    let Some(Bson::Array(log)) = document.remove(EVENTS_FIELD) else {
        return Err(StoreError::Corrupt(format!("order {id} has no event log")));
    };
    let mut events = Vec::new();
    for entry in log {
        if events.len() >= limit {
            break;
        }
        let Bson::Document(entry) = entry else {
            return Err(StoreError::Corrupt(format!(
                "order {id}: an event is not a document"
            )));
        };
        let event: OrderEvent = decode(entry, EVENT_DATES)?;
        if event.seq > after {
            events.push(Arc::new(event));
        }
    }
    Ok(events)
}

impl MongoStore {
    /// What an intake refused by a unique index means. Either the key was used
    /// before (its order exists: no order is ever deleted) or, far less likely, the
    /// generated order id collided.
    async fn refused_intake(
        &self,
        customer: &UserId,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Intake, StoreError> {
        if let Some(IdempotencyKey { key, fingerprint }) = idempotency {
            let filter = doc! { "customerId": customer.as_str(), IDEMPOTENCY_FIELD: key };
            let earlier = self
                .orders
                .find_one(filter)
                .projection(doc! { "_id": 0, EVENTS_FIELD: 0, IDEMPOTENCY_FIELD: 0 })
                .await
                .map_err(failure)?;
            if let Some(mut earlier) = earlier {
                let stored = earlier.remove(FINGERPRINT_FIELD);
                // A stored fingerprint that is not text (no writer stores one) reads
                // as empty.
                let stored = stored.as_ref().map(|s| s.as_str().unwrap_or_default());
                if !contract::replays(stored, fingerprint) {
                    return Ok(Intake::KeyReused);
                }
                let earlier = decode(earlier, ORDER_DATES)?;
                return Ok(Intake::Replayed(Box::new(earlier)));
            }
        }
        Err(StoreError::VersionConflict { expected: 0 })
    }

    /// The compare-and-set of [`OrderStore::apply`]. The filter also pins where the new
    /// events must continue the log, so the common case is one statement in a batched
    /// call; only a miss reads the order to say why. What an order never changes is
    /// left out of the update (each filter field and each rewritten index key costs
    /// the server time on every transition). An update without events (which the batch
    /// could not tell apart from a lost race) goes alone as `update_one`.
    async fn compare_and_set(
        &self,
        order: &Order,
        expected: Expected,
        events: &[Arc<OrderEvent>],
    ) -> Result<(), StoreError> {
        let id = order.order_id.as_str();
        let filter = doc! {
            "orderId": id,
            "version": bson_int(expected.version)?,
            "seq": bson_int(expected.log_end)?,
        };
        let mut fields = encode(order, ORDER_DATES)?;
        for immutable in IMMUTABLE_FIELDS {
            fields.remove(immutable);
        }
        let dropped: Document = ORDER_OPTIONAL_FIELDS
            .iter()
            .filter(|field| !fields.contains_key(**field))
            .map(|field| ((*field).to_owned(), Bson::String(String::new())))
            .collect();
        let mut update = doc! { "$set": fields };
        if !dropped.is_empty() {
            update.insert("$unset", dropped);
        }
        let mut appended = encode_events(events)?;
        let outcome = match appended.first_mut() {
            None => {
                let result = self
                    .orders
                    .update_one(filter, update)
                    .await
                    .map_err(failure)?;
                if result.matched_count == 1 {
                    CasOutcome::Applied
                } else {
                    CasOutcome::Missed
                }
            }
            Some(first) => {
                let commit: i64 = rand::random();
                first.insert(COMMIT_FIELD, commit);
                update.insert("$push", doc! { EVENTS_FIELD: { "$each": appended } });
                let write = CasWrite {
                    order_id: id.to_owned(),
                    filter,
                    update,
                    commit,
                };
                self.batches.updates.submit(write).await?
            }
        };
        match outcome {
            CasOutcome::Applied => Ok(()),
            CasOutcome::Missed => Err(self.explain_miss(order, expected).await),
        }
    }

    /// Why a compare-and-set on `order` (expecting the stored order at `expected`)
    /// matched nothing.
    async fn explain_miss(&self, order: &Order, expected: Expected) -> StoreError {
        let id = order.order_id.as_str();
        let head = match self
            .orders
            .find_one(doc! { "orderId": id })
            .projection(doc! { "_id": 0, "version": 1, "seq": 1 })
            .await
        {
            Ok(Some(head)) => head,
            Ok(None) => return StoreError::NotFound(order.order_id.clone()),
            Err(e) => return failure(e),
        };
        let head: OrderHead = match bson::from_document(head) {
            Ok(head) => head,
            Err(e) => return corrupt(e),
        };
        // Both matching now means the log moved on and back, which it cannot: report
        // the log, as the filter's other half.
        expected
            .refusal(&order.order_id, head.version, head.seq)
            .unwrap_or_else(|| contract::broken_log(&order.order_id, head.seq))
    }
}

#[async_trait]
impl OrderStore for MongoStore {
    async fn create_order(
        &self,
        order: &Arc<Order>,
        first_event: &Arc<OrderEvent>,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Intake, StoreError> {
        contract::check_intake(order, first_event)?;
        // One insert commits the order, its first event and its key (batched with
        // other new orders).
        let mut document = encode(order, ORDER_DATES)?;
        document.insert(EVENTS_FIELD, vec![encode(first_event, EVENT_DATES)?]);
        if let Some(IdempotencyKey { key, fingerprint }) = idempotency {
            document.insert(IDEMPOTENCY_FIELD, key);
            document.insert(FINGERPRINT_FIELD, fingerprint);
        }
        self.bounded(async {
            match self.batches.inserts.submit(document).await? {
                Inserted::Created => Ok(Intake::Created),
                Inserted::Duplicate => self.refused_intake(&order.customer_id, idempotency).await,
            }
        })
        .await
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError> {
        self.bounded(self.batches.reads.submit(id.as_str().to_owned()))
            .await?
            .map(|document| decode(document, ORDER_DATES).map(Arc::new))
            .transpose()
    }

    async fn order_with_log(
        &self,
        id: &OrderId,
    ) -> Result<Option<(Arc<Order>, EventLog)>, StoreError> {
        self.bounded(async {
            let found = self
                .orders
                .find_one(doc! { "orderId": id.as_str() })
                .projection(doc! { "_id": 0, IDEMPOTENCY_FIELD: 0, FINGERPRINT_FIELD: 0 })
                .await
                .map_err(failure)?;
            let Some(mut found) = found else {
                return Ok(None);
            };
            let events = take_log(&mut found, id, 0, usize::MAX)?;
            Ok(Some((
                Arc::new(decode(found, ORDER_DATES)?),
                Arc::new(events),
            )))
        })
        .await
    }

    async fn orders(&self, query: &OrderQuery) -> Result<OrderPage, StoreError> {
        let limit = query.limit;
        if limit == 0 {
            return Ok(contract::page(Vec::new(), false));
        }
        let mut filter = Document::new();
        if let Some(customer) = &query.customer {
            filter.insert("customerId", customer.as_str());
        }
        if let Some(driver) = &query.driver {
            filter.insert("driverId", driver.as_str());
        }
        if let Some(status) = query.status {
            filter.insert("status", status.as_str());
        }
        if let Some(after) = &query.after {
            let at = bson_date(&after.created_at);
            filter.insert(
                "$or",
                vec![
                    doc! { "createdAt": { "$lt": at.clone() } },
                    doc! { "createdAt": at, "orderId": { "$lt": after.order_id.as_str() } },
                ],
            );
        }
        // One more than a page tells whether another page follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut orders: Vec<Order> = self
            .bounded(async {
                let cursor = self
                    .orders
                    .find(filter)
                    .sort(doc! { "createdAt": -1, "orderId": -1 })
                    .limit(fetch)
                    .projection(order_projection())
                    .await
                    .map_err(failure)?;
                let documents: Vec<Document> = cursor.try_collect().await.map_err(failure)?;
                documents
                    .into_iter()
                    .map(|document| decode(document, ORDER_DATES))
                    .collect()
            })
            .await?;
        let more = orders.len() > limit;
        orders.truncate(limit);
        Ok(contract::page(orders, more))
    }

    async fn apply(
        &self,
        order: &Arc<Order>,
        events: &[Arc<OrderEvent>],
    ) -> Result<(), StoreError> {
        let expected = Expected::of_update(order, events)?;
        self.bounded(self.compare_and_set(order, expected, events))
            .await
    }

    async fn events(
        &self,
        id: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<OrderEvent>>, StoreError> {
        self.bounded(async {
            let found = self
                .orders
                .find_one(doc! { "orderId": id.as_str() })
                .projection(doc! { "_id": 0, EVENTS_FIELD: 1 })
                .await
                .map_err(failure)?;
            match found {
                Some(mut found) => take_log(&mut found, id, after, limit),
                None => Ok(Vec::new()),
            }
        })
        .await
    }

    async fn unfinished_orders(
        &self,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<Vec<OrderId>, StoreError> {
        let processing: Vec<&str> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_processing())
            .map(OrderStatus::as_str)
            .collect();
        let mut filter = doc! { "status": { "$in": processing } };
        if let Some(at) = unchanged_since {
            filter.insert("updatedAt", doc! { "$lt": bson_date(&at) });
        }
        self.bounded(async {
            let cursor = self
                .orders
                .find(filter)
                // Oldest first: they have waited longest.
                .sort(doc! { "createdAt": 1, "orderId": 1 })
                .projection(doc! { "_id": 0, "orderId": 1 })
                .await
                .map_err(failure)?;
            let documents: Vec<Document> = cursor.try_collect().await.map_err(failure)?;
            documents.iter().map(order_id_of).collect()
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        let groups: Vec<Document> = self
            .bounded(async {
                let cursor = self
                    .orders
                    .aggregate([doc! { "$group": { "_id": "$status", "count": { "$sum": 1 } } }])
                    .await
                    .map_err(failure)?;
                cursor.try_collect().await.map_err(failure)
            })
            .await?;
        let mut counts = Vec::with_capacity(groups.len());
        for group in groups {
            let status = group
                .get_str("_id")
                .ok()
                .and_then(OrderStatus::parse)
                .ok_or_else(|| corrupt(format!("unknown order status in {group}")))?;
            let count = match group.get("count") {
                Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
                Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
                _ => None,
            }
            .ok_or_else(|| corrupt(format!("bad status count in {group}")))?;
            if count > 0 {
                counts.push((status, count));
            }
        }
        counts.sort_by_key(|(status, _)| OrderStatus::ALL.iter().position(|s| s == status));
        Ok(counts)
    }
}
