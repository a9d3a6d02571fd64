//! The MongoDB store (DESIGN section 8): several nodes share one database.
//!
//! Correctness rests on single-document atomic writes only: no multi-document
//! transactions (a standalone `mongod` has none) and no `Client::bulk_write` (MongoDB
//! 8 only). Each operation is shaped so that one document write is the commit point:
//!
//! * **An order and its event log are one document.** The `orders` document carries
//!   its whole event log in an `events` array. `apply` is one `update_one` filtered on
//!   the expected `version` (compare-and-set) that `$set`s the new order fields and
//!   `$push`es the new events, so a transition and its events commit together or not
//!   at all, whatever crashes when. `events()` reads this array: it is the
//!   authoritative log, complete and gap-free by construction. An order's log is
//!   short (one event per step, retry and compensation of one journey), far from the
//!   16 MB document limit.
//! * **`order_events` is a copy for operators** (one document per event, unique
//!   `orderId + seq`, as DESIGN section 8 asks), inserted right after the commit.
//!   Writing it first instead would leave events of transitions that then lose the
//!   compare-and-set or die before it; writing it as the only log would leave
//!   transitions without events after a crash between the two writes. So the copy
//!   comes second and nothing in the runtime reads it: if a process dies between the
//!   commit and the copy, or the copy fails, the copy lacks that transition's events
//!   (logged as a warning, counted in `swift_store_event_copy_failures_total`) while
//!   the log that replay and the API serve stays whole.
//! * **The idempotency key is a field of the order document** (`idempotencyKey`,
//!   unique per customer through a partial unique index), so intake is one insert
//!   that writes the order, its first event and its key together. A separate key
//!   collection written before the order would leave a key without an order when the
//!   creator dies in between, and taking such a key over is unsafe: a creator that
//!   is merely slow, not dead, can still insert its order afterwards and the key
//!   would then have two orders. With the key inside the order there is no such
//!   window to handle.
//!
//! * **Concurrent orders share round trips.** Inserts of new orders, compare-and-set
//!   updates, lookups by order id and the `order_events` copies each go through a
//!   group-commit queue (`store::batch`): what callers ask for while earlier calls are
//!   in flight travels in the next call, as one `insert_many`, one `update` command
//!   with many statements, or one `find` with `$in`. Every statement stays a
//!   single-document write with its own filter, so batching changes how many round
//!   trips a load needs, not what commits together. The `update` command reports
//!   only how many statements matched; when fewer matched than were sent, the store
//!   finds the winners by the random `commit` id each compare-and-set stamps on the
//!   first event it appends (events are never rewritten, so the stamp stays), and
//!   explains each miss as before.
//!
//! Dates that are queried or sorted on (and the other timestamps, so operators can
//! query them too) are stored as BSON dates, which have millisecond precision:
//! documents read back carry their times truncated to the millisecond. Everything
//! else is stored as the domain types serialise it (camelCase), so the documents read
//! like the API's JSON.
//!
//! Every call is bounded by the store timeout (`[store] timeout_secs`), both through
//! the driver's server selection and connect timeouts and a `tokio` timeout around
//! the whole call (the copy into `order_events` after a commit has a bound of its
//! own and never fails the call). A call that times out may still take effect afterwards: callers
//! treat `Unavailable` as "outcome unknown", as with the embedded store.

use super::batch::Batcher;
use super::{DriverLocation, Intake, OrderCursor, OrderPage, OrderQuery, Store, StoreError};
use crate::domain::{Email, Order, OrderEvent, OrderId, OrderStatus, User, UserId};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{Error as DbError, ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

const ORDERS: &str = "orders";
const ORDER_EVENTS: &str = "order_events";
const USERS: &str = "users";
const DRIVERS: &str = "drivers";

/// The server's code for a unique index violation (`DuplicateKey`).
const DUPLICATE_KEY: i32 = 11000;

/// The embedded event log inside an order document.
const EVENTS_FIELD: &str = "events";
const IDEMPOTENCY_FIELD: &str = "idempotencyKey";
/// The random id a compare-and-set stamps on the first event it appends.
const COMMIT_FIELD: &str = "commit";

/// Requests one batched call carries at most, and such calls in flight at once. A
/// database server works through a call as a whole, so a call is also how long
/// everyone else's next call may wait behind it: batches are kept short enough that
/// an order placed while the server is busy is not stuck behind seconds of other
/// orders' transitions, and numerous enough to keep the server busy.
const BATCH: usize = 64;
const BATCHES_IN_FLIGHT: usize = 2;
/// Event copies are cheap per document and nobody waits for them: fewer, larger calls.
const COPY_BATCH: usize = 128;
const COPIES_IN_FLIGHT: usize = 1;
/// Connections the driver may open unless the URI says otherwise: every batch queue's
/// calls in flight, plus room for the unbatched calls (listings, users, event logs).
const MIN_POOL_SIZE: u32 = 32;

/// The top-level fields an `Order` leaves out when they are `None`. `apply` sets the
/// fields an order has and must unset these when the new order lacks them, or a value
/// the order dropped (a finished compensation, say) would survive in the document.
/// A unit test checks this list against the serialised `Order`.
const ORDER_OPTIONAL_FIELDS: [&str; 8] = [
    "scheduledPickupTime",
    "specialInstructions",
    "customer",
    "warehouse",
    "route",
    "compensation",
    "failureReason",
    "driverId",
];

/// Fields fixed when an order is placed: an update never rewrites them, so an update
/// cannot change an order's identity, owner or age whatever its caller sends.
pub const IMMUTABLE_FIELDS: [&str; 3] = ["orderId", "customerId", "createdAt"];

/// Timestamps stored as BSON dates, per kind of document.
const ORDER_DATES: &[&str] = &["createdAt", "updatedAt", "scheduledPickupTime"];
const EVENT_DATES: &[&str] = &["timestamp"];
const USER_DATES: &[&str] = &["createdAt"];
const DRIVER_DATES: &[&str] = &["updatedAt"];

fn unavailable(e: impl Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Whether the server refused a write because of a unique index. Matched by code,
/// never by message text (which differs between servers and versions).
fn is_duplicate_key(e: &DbError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            write_concern_error: None,
            ..
        }) => !errors.is_empty() && errors.iter().all(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// Maps a driver error to the store's vocabulary: documents the driver cannot decode
/// or the server refuses to store are `Corrupt` (retrying cannot help); everything
/// else (network, server selection, timeouts, a stepping-down primary, write concern)
/// is `Unavailable`.
fn failure(e: DbError) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::BsonDeserialization(_) | ErrorKind::BsonSerialization(_) => {
            corrupt(format!("cannot convert a document: {e}"))
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => corrupt(format!(
            "the database refused the document (code {}): {}",
            w.code, w.message
        )),
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) if !errors.is_empty() => corrupt(format!(
            "the database refused a document (code {}): {}",
            errors[0].code, errors[0].message
        )),
        _ => unavailable(format!("database call failed: {e}")),
    }
}

fn bson_date(at: &DateTime<Utc>) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(at.timestamp_millis()))
}

fn bson_int(value: u64) -> Result<Bson, StoreError> {
    i64::try_from(value)
        .map(Bson::Int64)
        .map_err(|_| corrupt(format!("{value} does not fit a BSON integer")))
}

/// Serialises a domain value, turning the named RFC 3339 fields into BSON dates.
fn encode<T: Serialize>(value: &T, dates: &[&str]) -> Result<Document, StoreError> {
    let mut document = bson::to_document(value).map_err(corrupt)?;
    for field in dates {
        let parsed = match document.get(*field) {
            Some(Bson::String(text)) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| corrupt(format!("{field}: {e}")))?
                .with_timezone(&Utc),
            _ => continue,
        };
        document.insert(*field, bson_date(&parsed));
    }
    Ok(document)
}

/// The inverse of [`encode`]: BSON dates back to the RFC 3339 text the domain types
/// deserialise from.
fn decode<T: DeserializeOwned>(mut document: Document, dates: &[&str]) -> Result<T, StoreError> {
    for field in dates {
        let millis = match document.get(*field) {
            Some(Bson::DateTime(at)) => at.timestamp_millis(),
            _ => continue,
        };
        let at = DateTime::<Utc>::from_timestamp_millis(millis)
            .ok_or_else(|| corrupt(format!("{field}: date out of range")))?;
        document.insert(*field, at.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    bson::from_document(document).map_err(corrupt)
}

fn encode_events(events: &[OrderEvent]) -> Result<Vec<Document>, StoreError> {
    events.iter().map(|e| encode(e, EVENT_DATES)).collect()
}

/// Reads an order document without its log and key (which `Order` does not carry).
fn order_projection() -> Document {
    doc! { "_id": 0, EVENTS_FIELD: 0, IDEMPOTENCY_FIELD: 0 }
}

/// The part of a stored order that explains why a compare-and-set matched nothing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderHead {
    version: u64,
    seq: u64,
}

/// The MongoDB-backed [`Store`]. Cheap to clone (the driver's client is a handle to
/// one shared connection pool).
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    orders: Collection<Document>,
    users: Collection<Document>,
    drivers: Collection<Document>,
    timeout: Duration,
    batches: Arc<Batches>,
}

/// The group-commit queues, shared by every clone of the store; their tasks end when
/// the last clone is dropped.
struct Batches {
    inserts: Batcher<Document, Inserted>,
    updates: Batcher<CasWrite, CasOutcome>,
    reads: Batcher<String, Option<Document>>,
    copies: Batcher<Vec<Document>, ()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inserted {
    Created,
    /// A unique index refused the order: its idempotency key (or id) is taken.
    Duplicate,
}

/// One compare-and-set statement of a batched `update` command.
struct CasWrite {
    order_id: String,
    filter: Document,
    update: Document,
    commit: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasOutcome {
    Applied,
    /// The filter matched nothing; `explain_miss` says why.
    Missed,
}

impl Batches {
    fn start(db: &Database, timeout: Duration) -> Self {
        let orders: Collection<Document> = db.collection(ORDERS);
        let order_events: Collection<Document> = db.collection(ORDER_EVENTS);
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
        let copies = Batcher::spawn(COPY_BATCH, COPIES_IN_FLIGHT, move |logs| {
            copy_events(order_events.clone(), timeout, logs)
        });
        Self {
            inserts,
            updates,
            reads,
            copies,
        }
    }
}

fn no_answer(timeout: Duration) -> StoreError {
    unavailable(format!("no answer from MongoDB within {timeout:?}"))
}

/// A driver call bounded by `timeout`, its failure in the store's vocabulary.
async fn within<T>(
    timeout: Duration,
    call: impl IntoFuture<Output = Result<T, DbError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call.into_future())
        .await
        .map_err(|_| no_answer(timeout))?
        .map_err(failure)
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

/// A reply's integer field, whichever width the server chose.
fn integer(document: &Document, field: &str) -> Option<i64> {
    match document.get(field) {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        _ => None,
    }
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

/// Copies committed events into `order_events` for operators, many orders' events in
/// one `insert_many`. Never fails anyone: the events are already committed in their
/// orders' own logs, and an error here only leaves the copy short (see the module
/// documentation).
async fn copy_events(
    order_events: Collection<Document>,
    timeout: Duration,
    logs: Vec<Vec<Document>>,
) -> Vec<Result<(), StoreError>> {
    let count = logs.len();
    let documents: Vec<Document> = logs.into_iter().flatten().collect();
    let copied = documents.len();
    let result =
        tokio::time::timeout(timeout, order_events.insert_many(documents).ordered(false)).await;
    let error = match result {
        Ok(Ok(_)) => None,
        // Already copied (a repeated call after an unknown outcome).
        Ok(Err(e)) if is_duplicate_key(&e) => None,
        Ok(Err(e)) => Some(failure(e)),
        Err(_) => Some(no_answer(timeout)),
    };
    if let Some(error) = error {
        metrics::counter!("swift_store_event_copy_failures_total").increment(copied as u64);
        tracing::warn!(events = copied, %error, "events committed but not copied to order_events");
    }
    same_for_all(count, Ok(()))
}

impl MongoStore {
    /// Connects to `uri`, uses `database`, and creates the collections' indexes if
    /// they are missing (idempotent: every node runs this at start). `timeout` bounds
    /// every later call and each step of connecting; a server that cannot be reached
    /// within it gives `StoreError::Unavailable`.
    pub async fn connect(uri: &str, database: &str, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = tokio::time::timeout(timeout, ClientOptions::parse(uri))
            .await
            .map_err(|_| unavailable(format!("cannot resolve {uri:?} within {timeout:?}")))?
            .map_err(|e| unavailable(format!("invalid MongoDB URI: {e}")))?;
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options
            .app_name
            .get_or_insert_with(|| "swiftlogistics".to_owned());
        options.max_pool_size.get_or_insert(MIN_POOL_SIZE);
        let client = Client::with_options(options).map_err(failure)?;
        let db = client.database(database);
        let store = Self {
            orders: db.collection(ORDERS),
            users: db.collection(USERS),
            drivers: db.collection(DRIVERS),
            batches: Arc::new(Batches::start(&db, timeout)),
            db,
            timeout,
        };
        store.bounded(store.create_indexes()).await?;
        Ok(store)
    }

    /// The database this store writes to (tests drop it when they are done).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs one store call within the timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| no_answer(self.timeout))?
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = || IndexOptions::builder().unique(true).build();
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        let unique_index =
            |keys: Document| IndexModel::builder().keys(keys).options(unique()).build();
        let idempotency = IndexModel::builder()
            .keys(doc! { "customerId": 1, IDEMPOTENCY_FIELD: 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! { IDEMPOTENCY_FIELD: { "$exists": true } })
                    .build(),
            )
            .build();
        self.orders
            .create_indexes([
                unique_index(doc! { "orderId": 1 }),
                // A customer's orders, newest first (GET /api/orders).
                index(doc! { "customerId": 1, "createdAt": -1, "orderId": -1 }),
                // Every order, newest first (admins).
                index(doc! { "createdAt": -1, "orderId": -1 }),
                // Admin listings by status, unfinished orders, counts.
                index(doc! { "status": 1, "createdAt": -1, "orderId": -1 }),
                // A driver's work list (GET /api/driver/orders).
                index(doc! { "driverId": 1, "status": 1, "createdAt": -1, "orderId": -1 }),
                idempotency,
            ])
            .await
            .map_err(failure)?;
        self.db
            .collection::<Document>(ORDER_EVENTS)
            .create_index(unique_index(doc! { "orderId": 1, "seq": 1 }))
            .await
            .map_err(failure)?;
        self.users
            .create_indexes([
                unique_index(doc! { "email": 1 }),
                unique_index(doc! { "id": 1 }),
            ])
            .await
            .map_err(failure)?;
        self.drivers
            .create_index(unique_index(doc! { "driverId": 1 }))
            .await
            .map_err(failure)?;
        Ok(())
    }

    async fn find_order(&self, filter: Document) -> Result<Option<Order>, StoreError> {
        self.orders
            .find_one(filter)
            .projection(order_projection())
            .await
            .map_err(failure)?
            .map(|document| decode(document, ORDER_DATES))
            .transpose()
    }

    async fn insert_user_once(&self, user: &User) -> Result<(), StoreError> {
        let document = encode(user, USER_DATES)?;
        match self.users.insert_one(document).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                let email_taken = self
                    .users
                    .find_one(doc! { "email": user.email.as_str() })
                    .projection(doc! { "_id": 1 })
                    .await
                    .map_err(failure)?
                    .is_some();
                if email_taken {
                    Err(StoreError::DuplicateEmail)
                } else {
                    Err(StoreError::Corrupt(format!(
                        "a user with id {} already exists",
                        user.id
                    )))
                }
            }
            Err(e) => Err(failure(e)),
        }
    }

    /// The single insert that commits an order, its first event and its key (batched
    /// with other new orders).
    async fn insert_order(
        &self,
        order: &Order,
        first_event: &OrderEvent,
        idempotency_key: Option<&str>,
    ) -> Result<Intake, StoreError> {
        let mut document = encode(order, ORDER_DATES)?;
        document.insert(EVENTS_FIELD, vec![encode(first_event, EVENT_DATES)?]);
        if let Some(key) = idempotency_key {
            document.insert(IDEMPOTENCY_FIELD, key);
        }
        match self.batches.inserts.submit(document).await? {
            Inserted::Created => Ok(Intake::Created),
            Inserted::Duplicate => {
                // Either the key was used before (its order exists: no order is ever
                // deleted) or, far less likely, the generated order id collided.
                if let Some(key) = idempotency_key {
                    let filter = doc! {
                        "customerId": order.customer_id.as_str(),
                        IDEMPOTENCY_FIELD: key,
                    };
                    if let Some(earlier) = self.find_order(filter).await? {
                        return Ok(Intake::Replayed(Box::new(earlier)));
                    }
                }
                Err(StoreError::VersionConflict { expected: 0 })
            }
        }
    }

    /// The compare-and-set of [`Store::apply`]. The filter also pins where the new
    /// events must continue the log, so the common case is one statement in a batched
    /// call; only a miss reads the order to say why. What an order never changes is
    /// left out of the update (each filter field and each rewritten index key costs
    /// the server time on every transition). An update without events (which the batch
    /// could not tell apart from a lost race) goes alone as `update_one`.
    async fn compare_and_set(
        &self,
        order: &Order,
        events: &[OrderEvent],
    ) -> Result<(), StoreError> {
        let id = order.order_id.as_str();
        let expected = order.version.saturating_sub(1);
        let log_end = match events.first() {
            Some(first) => first
                .seq
                .checked_sub(1)
                .ok_or_else(|| StoreError::Corrupt(format!("order {id}: event seqs start at 1")))?,
            None => order.seq,
        };
        let filter = doc! {
            "orderId": id,
            "version": bson_int(expected)?,
            "seq": bson_int(log_end)?,
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

    /// Why a compare-and-set on `order` (expecting stored version `expected`)
    /// matched nothing.
    async fn explain_miss(&self, order: &Order, expected: u64) -> StoreError {
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
        if head.version != expected {
            return StoreError::VersionConflict { expected };
        }
        StoreError::Corrupt(format!(
            "order {id}: events must continue the log after seq {}",
            head.seq
        ))
    }

    /// Queues committed events for the `order_events` copy. Never fails the caller:
    /// the events are already committed in the order's own log.
    async fn copy_events(&self, events: &[OrderEvent]) {
        let Some(first) = events.first() else {
            return;
        };
        let queued = match encode_events(events) {
            Ok(documents) => self.bounded(self.batches.copies.send(documents)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            metrics::counter!("swift_store_event_copy_failures_total")
                .increment(events.len() as u64);
            tracing::warn!(
                order_id = %first.order_id,
                from_seq = first.seq,
                count = events.len(),
                error = %e,
                "events committed but not copied to order_events"
            );
        }
    }

    async fn put_driver_once(&self, document: Document, driver: &str) -> Result<(), StoreError> {
        let filter = doc! { "driverId": driver };
        match self
            .drivers
            .replace_one(filter.clone(), document.clone())
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            // Two first reports of one driver raced to insert: the other one made the
            // document, so this one now replaces it.
            Err(e) if is_duplicate_key(&e) => self
                .drivers
                .replace_one(filter, document)
                .await
                .map(|_| ())
                .map_err(failure),
            Err(e) => Err(failure(e)),
        }
    }
}

fn validate_apply(order: &Order, events: &[OrderEvent]) -> Result<(), StoreError> {
    if order.version == 0 {
        return Err(StoreError::Corrupt(format!(
            "order {}: an update carries version 1 or more",
            order.order_id
        )));
    }
    let consecutive = events
        .windows(2)
        .all(|w| w[0].seq.checked_add(1) == Some(w[1].seq));
    let ends_at_order = events.last().is_none_or(|e| e.seq == order.seq);
    let same_order = events.iter().all(|e| e.order_id == order.order_id);
    if consecutive && ends_at_order && same_order {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "order {}: events must be its own, consecutive and end at seq {}",
            order.order_id, order.seq
        )))
    }
}

fn order_id_of(document: &Document) -> Result<OrderId, StoreError> {
    let raw = document
        .get_str("orderId")
        .map_err(|e| corrupt(format!("order without an id: {e}")))?;
    OrderId::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("malformed order id {raw:?}")))
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            self.db
                .run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(failure)
        })
        .await
    }

    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        self.bounded(self.insert_user_once(user)).await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.bounded(async {
            self.users
                .find_one(doc! { "email": email.as_str() })
                .projection(doc! { "_id": 0 })
                .await
                .map_err(failure)?
                .map(|document| decode(document, USER_DATES))
                .transpose()
        })
        .await
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.bounded(async {
            self.users
                .find_one(doc! { "id": id.as_str() })
                .projection(doc! { "_id": 0 })
                .await
                .map_err(failure)?
                .map(|document| decode(document, USER_DATES))
                .transpose()
        })
        .await
    }

    async fn create_order(
        &self,
        order: &Order,
        first_event: &OrderEvent,
        idempotency_key: Option<&str>,
    ) -> Result<Intake, StoreError> {
        if first_event.order_id != order.order_id || first_event.seq != order.seq {
            return Err(StoreError::Corrupt(format!(
                "order {}: the first event must belong to it and carry its seq",
                order.order_id
            )));
        }
        let intake = self
            .bounded(self.insert_order(order, first_event, idempotency_key))
            .await?;
        if intake == Intake::Created {
            self.copy_events(std::slice::from_ref(first_event)).await;
        }
        Ok(intake)
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.bounded(self.batches.reads.submit(id.as_str().to_owned()))
            .await?
            .map(|document| decode(document, ORDER_DATES))
            .transpose()
    }

    async fn orders(&self, query: &OrderQuery) -> Result<OrderPage, StoreError> {
        let limit = query.limit;
        if limit == 0 {
            return Ok(OrderPage {
                orders: Vec::new(),
                next: None,
            });
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
        let next = match orders.last() {
            Some(last) if more => Some(OrderCursor {
                created_at: last.created_at,
                order_id: last.order_id.clone(),
            }),
            _ => None,
        };
        Ok(OrderPage { orders, next })
    }

    async fn apply(&self, order: &Order, events: &[OrderEvent]) -> Result<(), StoreError> {
        validate_apply(order, events)?;
        self.bounded(self.compare_and_set(order, events)).await?;
        self.copy_events(events).await;
        Ok(())
    }

    async fn events(
        &self,
        id: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OrderEvent>, StoreError> {
        self.bounded(async {
            let found = self
                .orders
                .find_one(doc! { "orderId": id.as_str() })
                .projection(doc! { "_id": 0, EVENTS_FIELD: 1 })
                .await
                .map_err(failure)?;
            let Some(mut found) = found else {
                return Ok(Vec::new());
            };
            let log = match found.remove(EVENTS_FIELD) {
                Some(Bson::Array(log)) => log,
                _ => {
                    return Err(StoreError::Corrupt(format!("order {id} has no event log")));
                }
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
                    events.push(event);
                }
            }
            Ok(events)
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

    async fn put_driver_location(&self, location: &DriverLocation) -> Result<(), StoreError> {
        let document = encode(location, DRIVER_DATES)?;
        self.bounded(self.put_driver_once(document, location.driver_id.as_str()))
            .await
    }

    async fn driver_location(&self, driver: &UserId) -> Result<Option<DriverLocation>, StoreError> {
        self.bounded(async {
            self.drivers
                .find_one(doc! { "driverId": driver.as_str() })
                .projection(doc! { "_id": 0 })
                .await
                .map_err(failure)?
                .map(|document| decode(document, DRIVER_DATES))
                .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Compensation, CustomerProfile, Location, NewOrder, Operation, PackageDetails, Reservation,
        Route, Waypoint,
    };
    use chrono::TimeZone;
    use std::collections::BTreeSet;

    fn at_millis(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap()
    }

    fn bare_order() -> Order {
        let request = NewOrder {
            pickup_location: Location {
                lat: 1.0,
                lng: 2.0,
                address: None,
            },
            delivery_address: Location {
                lat: 3.0,
                lng: 4.0,
                address: None,
            },
            package_details: PackageDetails {
                weight: 1.5,
                dimensions: None,
                description: None,
                fragile: false,
            },
            scheduled_pickup_time: None,
            special_instructions: None,
        };
        let now = at_millis(1_770_000_000_123);
        Order::receive(
            OrderId::parse("ORD-20260204-AAAA").unwrap(),
            UserId::from_trusted("usr_a"),
            request,
            now,
        )
        .0
    }

    /// An order with every optional field set. (When `Order` gains a field, set it
    /// here so the check below sees it.)
    fn full_order() -> Order {
        Order {
            scheduled_pickup_time: Some(at_millis(1_770_000_100_000)),
            special_instructions: Some("ring twice".into()),
            customer: Some(CustomerProfile {
                name: "Ada".into(),
                tier: "gold".into(),
            }),
            warehouse: Some(Reservation {
                warehouse: "WH-1".into(),
                picking_location: "A-1".into(),
            }),
            route: Some(Route {
                route_id: "R-1".into(),
                waypoints: vec![Waypoint { lat: 1.0, lng: 2.0 }],
                distance: 3.5,
                eta: "2026-02-04T18:00:00Z".into(),
            }),
            compensation: Some(Compensation {
                outcome: OrderStatus::Failed,
                reason: "no stock".into(),
                remaining: vec![Operation::CancelCustomerOrder],
            }),
            failure_reason: Some("no stock".into()),
            driver_id: Some(UserId::from_trusted("usr_d")),
            ..bare_order()
        }
    }

    fn keys(document: &Document) -> BTreeSet<String> {
        document.keys().cloned().collect()
    }

    #[test]
    fn optional_field_list_matches_the_order_document() {
        let full = keys(&encode(&full_order(), ORDER_DATES).unwrap());
        let bare = keys(&encode(&bare_order(), ORDER_DATES).unwrap());
        let optional: BTreeSet<String> = full.difference(&bare).cloned().collect();
        let listed: BTreeSet<String> = ORDER_OPTIONAL_FIELDS
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(optional, listed);
        assert!(!full.contains(EVENTS_FIELD) && !full.contains(IDEMPOTENCY_FIELD));
    }

    #[test]
    fn dates_are_bson_dates_and_read_back_equal() {
        let order = full_order();
        let document = encode(&order, ORDER_DATES).unwrap();
        for field in ORDER_DATES {
            assert!(
                matches!(document.get(*field), Some(Bson::DateTime(_))),
                "{field} is {:?}",
                document.get(*field)
            );
        }
        assert_eq!(document.get_str("status").unwrap(), "RECEIVED");
        let back: Order = decode(document, ORDER_DATES).unwrap();
        assert_eq!(back, order);
    }

    #[test]
    fn undecodable_documents_are_corrupt() {
        let result: Result<Order, _> = decode(doc! { "orderId": 7 }, ORDER_DATES);
        assert!(matches!(result, Err(StoreError::Corrupt(_))));
    }
}
