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
//!   16 MB document limit. The log's sequence is unique by construction (the filter
//!   pins where new events continue it), `since` replay reads the events after a
//!   seq from it, and it is the audit trail. There is no separate event collection:
//!   no documented feature needs one, and copying every event into one doubled the
//!   writes per order (an operator finds an order's events with
//!   `db.orders.find({orderId}, {events: 1})`, or every event with
//!   `$unwind: "$events"`).
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
//!   updates and lookups by order id each go through a group-commit queue (`batch`): what callers ask
//!   for while earlier calls are in flight travels in the next call, as one `insert_many`, one `update` command
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
//! the whole call. A call that times out may still take effect afterwards: callers
//! treat `Unavailable` as "outcome unknown", as with the embedded store.
//!
//! The module is split by concern: `encoding` (documents and the domain types),
//! `batch` and `batches` (group commit), `indexes` (what `connect` sets up), and one
//! module per store port with its operations (`orders`, `users`, `drivers`).

mod batch;
mod batches;
mod drivers;
mod encoding;
mod indexes;
mod orders;
mod users;

pub(crate) use encoding::IMMUTABLE_FIELDS;

use super::{StoreError, StoreHealth};
use async_trait::async_trait;
use batches::Batches;
use mongodb::bson::doc;
use mongodb::error::{Error as DbError, ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database, bson::Document};
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

const ORDERS: &str = "orders";
const USERS: &str = "users";
const DRIVERS: &str = "drivers";
const SESSIONS: &str = "login_sessions";

/// The server's code for a unique index violation (`DuplicateKey`).
const DUPLICATE_KEY: i32 = 11000;

/// Connections the driver may open unless the URI says otherwise: every batch queue's
/// calls in flight, plus room for the unbatched calls (listings, users, event logs).
const MIN_POOL_SIZE: u32 = 32;

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

/// The MongoDB-backed [`Store`](super::Store). Cheap to clone (the driver's client is a handle to
/// one shared connection pool).
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    orders: Collection<Document>,
    users: Collection<Document>,
    drivers: Collection<Document>,
    sessions: Collection<Document>,
    timeout: Duration,
    batches: Arc<Batches>,
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
            sessions: db.collection(SESSIONS),
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

    /// The document of `collection` that `filter` finds, as a domain value whose
    /// `dates` are BSON dates.
    async fn find_decoded<T: DeserializeOwned>(
        &self,
        collection: &Collection<Document>,
        filter: Document,
        dates: &[&str],
    ) -> Result<Option<T>, StoreError> {
        self.bounded(async {
            collection
                .find_one(filter)
                .projection(doc! { "_id": 0 })
                .await
                .map_err(failure)?
                .map(|document| encoding::decode(document, dates))
                .transpose()
        })
        .await
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
}

#[async_trait]
impl StoreHealth for MongoStore {
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
}
