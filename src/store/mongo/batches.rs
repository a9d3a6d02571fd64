//! The store's batched calls: what the group-commit queues (`batch`) of new orders,
//! compare-and-set updates and lookups by id send to the server, and how each
//! request of a batch learns its own outcome.

use super::batch::Batcher;
use super::encoding::{COMMIT_FIELD, EVENTS_FIELD, integer, order_projection};
use super::{DUPLICATE_KEY, ORDERS, corrupt, failure, no_answer, unavailable, within};
use crate::store::StoreError;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::{Collection, Database};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Requests one batched call carries at most, and such calls in flight at once. A
/// database server works through a call as a whole, so a call is also how long
/// everyone else's next call may wait behind it: batches are kept short enough that
/// an order placed while the server is busy is not stuck behind seconds of other
/// orders' transitions, and numerous enough to keep the server busy.
const BATCH: usize = 64;
const BATCHES_IN_FLIGHT: usize = 2;

/// The group-commit queues, shared by every clone of the store; their tasks end when
/// the last clone is dropped.
pub(super) struct Batches {
    pub(crate) inserts: Batcher<Document, Inserted>,
    pub(crate) updates: Batcher<CasWrite, CasOutcome>,
    pub(crate) reads: Batcher<String, Option<Document>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inserted {
    Created,
    /// A unique index refused the order: its idempotency key (or id) is taken.
    Duplicate,
}

/// One compare-and-set statement of a batched `update` command.
pub(super) struct CasWrite {
    pub(crate) order_id: String,
    pub(crate) filter: Document,
    pub(crate) update: Document,
    pub(crate) commit: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CasOutcome {
    Applied,
    /// The filter matched nothing; `explain_miss` says why.
    Missed,
}

impl Batches {
    pub(super) fn start(db: &Database, timeout: Duration) -> Self {
        let orders: Collection<Document> = db.collection(ORDERS);
        let inserts = {
            let orders = orders.clone();
            Batcher::spawn(BATCH, BATCHES_IN_FLIGHT, move |documents| {
                insert_orders(orders.clone(), timeout, documents)
            })
        };
        let updates = {
            let db = db.clone();
            Batcher::spawn(BATCH, BATCHES_IN_FLIGHT, move |writes| {
                compare_and_set_many(db.clone(), timeout, writes)
            })
        };
        let reads = {
            let orders = orders.clone();
            Batcher::spawn(BATCH, BATCHES_IN_FLIGHT, move |ids| {
                read_orders(orders.clone(), timeout, ids)
            })
        };
        Self {
            inserts,
            updates,
            reads,
        }
    }
}

/// The same result for every request of a batch.
fn same_for_all<T: Clone>(
    count: usize,
    result: Result<T, StoreError>,
) -> Vec<Result<T, StoreError>> {
    vec![result; count]
}

/// One `insert_many` for many new orders; a unique index refusing one of them does
/// not stop the others (`ordered: false`) and is reported for that order only.
async fn insert_orders(
    orders: Collection<Document>,
    timeout: Duration,
    documents: Vec<Document>,
) -> Vec<Result<Inserted, StoreError>> {
    let count = documents.len();
    let result = tokio::time::timeout(timeout, orders.insert_many(documents).ordered(false)).await;
    let error = match result {
        Err(_) => return same_for_all(count, Err(no_answer(timeout))),
        Ok(Ok(_)) => return same_for_all(count, Ok(Inserted::Created)),
        Ok(Err(error)) => error,
    };
    match error.kind.as_ref() {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(refused),
            write_concern_error: None,
            ..
        }) => {
            let mut results = same_for_all(count, Ok(Inserted::Created));
            for refusal in refused {
                if let Some(result) = results.get_mut(refusal.index) {
                    *result = if refusal.code == DUPLICATE_KEY {
                        Ok(Inserted::Duplicate)
                    } else {
                        Err(corrupt(format!(
                            "the database refused the order (code {}): {}",
                            refusal.code, refusal.message
                        )))
                    };
                }
            }
            results
        }
        _ => same_for_all(count, Err(failure(error))),
    }
}

/// One `update` command carrying many compare-and-set statements. The reply counts
/// the statements that matched; when that falls short, one read finds which ones did
/// by their commit stamps.
async fn compare_and_set_many(
    db: Database,
    timeout: Duration,
    writes: Vec<CasWrite>,
) -> Vec<Result<CasOutcome, StoreError>> {
    let count = writes.len();
    let mut stamps = Vec::with_capacity(count);
    let mut statements = Vec::with_capacity(count);
    for write in writes {
        stamps.push((write.order_id, write.commit));
        statements.push(doc! { "q": write.filter, "u": write.update });
    }
    let command = doc! { "update": ORDERS, "updates": statements, "ordered": false };
    let reply = match within(timeout, db.run_command(command)).await {
        Ok(reply) => reply,
        Err(error) => return same_for_all(count, Err(error)),
    };
    if reply.contains_key("writeConcernError") {
        return same_for_all(
            count,
            Err(unavailable(format!("write concern failed: {reply}"))),
        );
    }
    let mut results: Vec<Option<Result<CasOutcome, StoreError>>> = vec![None; count];
    if let Ok(refused) = reply.get_array("writeErrors") {
        for refusal in refused.iter().filter_map(Bson::as_document) {
            let index = integer(refusal, "index").and_then(|i| usize::try_from(i).ok());
            if let Some(result) = index.and_then(|i| results.get_mut(i)) {
                *result = Some(Err(corrupt(format!(
                    "the database refused the update (code {}): {}",
                    integer(refusal, "code").unwrap_or_default(),
                    refusal.get_str("errmsg").unwrap_or_default()
                ))));
            }
        }
    }
    let sent = results.iter().filter(|r| r.is_none()).count();
    let matched = integer(&reply, "n").and_then(|n| usize::try_from(n).ok());
    if matched == Some(sent) {
        return results
            .into_iter()
            .map(|r| r.unwrap_or(Ok(CasOutcome::Applied)))
            .collect();
    }
    let unsettled: Vec<Document> = results
        .iter()
        .zip(&stamps)
        .filter(|(result, _)| result.is_none())
        .map(|(_, (id, commit))| doc! { "orderId": id, format!("{EVENTS_FIELD}.{COMMIT_FIELD}"): commit })
        .collect();
    let stamped = async {
        let cursor = db
            .collection::<Document>(ORDERS)
            .find(doc! { "$or": unsettled })
            .projection(
                doc! { "_id": 0, "orderId": 1, format!("{EVENTS_FIELD}.{COMMIT_FIELD}"): 1 },
            )
            .await?;
        cursor.try_collect::<Vec<Document>>().await
    };
    // Two statements of one batch may race for the same order: the winner is the one
    // whose stamp is in the log, not merely the order.
    let winners: HashSet<(String, i64)> = match within(timeout, stamped).await {
        Ok(found) => found.iter().flat_map(commit_stamps).collect(),
        Err(error) => return fill(results, Err(error)),
    };
    results
        .into_iter()
        .zip(stamps)
        .map(|(result, stamp)| {
            result.unwrap_or(Ok(if winners.contains(&stamp) {
                CasOutcome::Applied
            } else {
                CasOutcome::Missed
            }))
        })
        .collect()
}

/// The `(orderId, commit)` pairs of an order document's stamped events.
fn commit_stamps(order: &Document) -> Vec<(String, i64)> {
    let Ok(id) = order.get_str("orderId") else {
        return Vec::new();
    };
    let Ok(events) = order.get_array(EVENTS_FIELD) else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(Bson::as_document)
        .filter_map(|event| event.get_i64(COMMIT_FIELD).ok())
        .map(|commit| (id.to_owned(), commit))
        .collect()
}

/// Settles every still-open result with `outcome`.
fn fill<T: Clone>(
    results: Vec<Option<Result<T, StoreError>>>,
    outcome: Result<T, StoreError>,
) -> Vec<Result<T, StoreError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| outcome.clone()))
        .collect()
}

/// One `find` with `$in` for many orders looked up by id.
async fn read_orders(
    orders: Collection<Document>,
    timeout: Duration,
    ids: Vec<String>,
) -> Vec<Result<Option<Document>, StoreError>> {
    let read = async {
        let cursor = orders
            .find(doc! { "orderId": { "$in": &ids } })
            .projection(order_projection())
            .await?;
        cursor.try_collect::<Vec<Document>>().await
    };
    let found = match within(timeout, read).await {
        Ok(found) => found,
        Err(error) => return same_for_all(ids.len(), Err(error)),
    };
    let by_id: HashMap<&str, &Document> = found
        .iter()
        .filter_map(|d| Some((d.get_str("orderId").ok()?, d)))
        .collect();
    // The same order may be asked for twice in one batch: each asker gets a copy.
    ids.iter()
        .map(|id| Ok(by_id.get(id.as_str()).map(|&d| d.clone())))
        .collect()
}
