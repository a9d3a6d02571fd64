//! The embedded store: one redb file, nothing to install.
//!
//! Every write goes through one dedicated writer thread that practises group commit:
//! it takes everything queued (up to [`MAX_BATCH`] operations), applies it in one
//! write transaction and commits once with `Durability::Immediate`. One fsync then
//! pays for a whole batch, which is what lets a 2-core box take ~10,000 intakes per
//! second while every `Ok` still means "on disk": a `kill -9` right after loses
//! nothing that was acknowledged. Each operation is checked on its own inside the
//! transaction before it writes anything, so one caller's version conflict never
//! fails its neighbours in the batch; only a storage failure (which aborts the
//! transaction) fails them all.
//!
//! Documents are serialised as JSON on the calling task, not on the writer thread, so
//! the single writer spends its time on B-tree work only. When writes arrive one by
//! one (a light load: the writer was idle when one came), it waits up to
//! `[store] commit_window_us` for [`COMPANY`] writes before committing, and commits as
//! soon as they are there: at 1,000 orders a second that turns four commits per
//! order into a third of one, for a few milliseconds per transition, while at
//! 3,000 a second the company comes within a millisecond. The waiting writer sleeps
//! until the window ends or the write that completes its company wakes it, so a light
//! load costs one wake-up per commit rather than one per look at the queue.
//!
//! The orders written last (`[store] cached_orders` of them) are kept in memory with
//! their whole event log, decoded, and the document they are stored as: the order
//! actor reloading the order it was woken for and clients polling a journey's status
//! get them without parsing a document. Every read still looks the order up in its own
//! snapshot of the file and takes the cached copy only if the snapshot holds the very
//! document it was decoded from, so the cache can never show a version the file does
//! not: neither an uncommitted one nor one older than a reader saw before. Only the
//! writer thread changes the cache, after each commit; until then readers of an order
//! in the batch find its cached copy one version behind their snapshot and decode the
//! file, and readers of an order whose commit is still in flight are served the
//! cached copy of the version the file still holds.
//!
//! Lookups by key run on the calling task: served from redb's page cache (or the OS's)
//! they take microseconds, less than handing them to another thread. Listings and
//! sweeps, which load up to `limit` documents, run on tokio's blocking pool so as not
//! to stall a runtime worker that also serves sockets.

use super::contract::{self, Expected};
use super::{
    DriverLocation, DriverStore, EventLog, IdempotencyKey, Intake, OrderPage, OrderQuery,
    OrderStore, StoreError, StoreHealth, UserStore,
};
use crate::domain::{Email, LoginSession, Order, OrderEvent, OrderId, OrderStatus, User, UserId};
use crate::fifo_map::FifoMap;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The file inside the store directory.
pub(crate) const FILE_NAME: &str = "swiftlogistics.redb";

/// Most operations committed by one transaction: large enough to amortise the fsync,
/// small enough that the first caller of a batch does not wait long for the last.
const MAX_BATCH: usize = 1024;

/// Writes queued for the writer thread before callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 8192;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes that make a commit worth its cost: a writer that woke to a lighter batch
/// waits up to its commit window for this many.
const COMPANY: usize = 16;

/// Memory settings of the embedded store (`[store] cache_mib`, `cached_orders`,
/// `commit_window_us`).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Bytes redb may keep as page cache.
    pub cache_bytes: u64,
    /// Recently written orders kept in memory with their event logs.
    pub cached_orders: usize,
    /// How long a lone write waits for others to share its commit.
    pub commit_window: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            cache_bytes: 32 * 1024 * 1024,
            cached_orders: 4096,
            commit_window: Duration::from_micros(3000),
        }
    }
}

/// How long dropping the store waits for the writer to finish its last batch and
/// release the file.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// `(orderId, seq)`: one order's log is one contiguous, ordered key range.
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("order_events");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, &str> = TableDefinition::new("users_by_email");
/// `(customerId, idempotency key) -> orderId`.
const IDEMPOTENCY: TableDefinition<(&str, &str), &str> = TableDefinition::new("idempotency");
/// `(customerId, idempotency key) -> fingerprint of the request`. A table of its own
/// so that data files written before fingerprints existed open unchanged.
const IDEMPOTENCY_FINGERPRINTS: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("idempotency_fingerprints");
/// `(customerId, createdAt secs, createdAt nanos, orderId) -> status`. The status in
/// the value lets a filtered customer listing skip orders without loading them.
const BY_CUSTOMER: TableDefinition<(&str, i64, u32, &str), &str> =
    TableDefinition::new("orders_by_customer");
/// `(driverId, createdAt secs, createdAt nanos, orderId) -> status`: the orders
/// assigned to each driver, keyed like `BY_CUSTOMER`.
const BY_DRIVER: TableDefinition<(&str, i64, u32, &str), &str> =
    TableDefinition::new("orders_by_driver");
/// `(createdAt secs, createdAt nanos, orderId)`: every order, for admins.
const BY_TIME: TableDefinition<(i64, u32, &str), ()> = TableDefinition::new("orders_by_time");
/// `(status, createdAt secs, createdAt nanos, orderId)`: admin listings by status and
/// the unfinished orders to resume after a restart.
const BY_STATUS: TableDefinition<(&str, i64, u32, &str), ()> =
    TableDefinition::new("orders_by_status");
const STATUS_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("status_counts");
const DRIVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("driver_locations");
/// Login sessions by id, and (user id, session id) for revoking a user's sessions.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("login_sessions");
const SESSIONS_BY_USER: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("login_sessions_by_user");

/// The creation time as an index key component, at full precision so that index
/// order is exactly `created_at` order (and cursors taken from documents match).
fn time_key(at: &DateTime<Utc>) -> (i64, u32) {
    (at.timestamp(), at.timestamp_subsec_nanos())
}

fn unavailable(e: impl Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(corrupt)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(corrupt)
}

/// The part of a stored order the writer needs to check a compare-and-set; parsing
/// only these fields keeps the writer thread's work per transition small.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderHead {
    customer_id: UserId,
    #[serde(default)]
    driver_id: Option<UserId>,
    status: OrderStatus,
    created_at: DateTime<Utc>,
    version: u64,
    seq: u64,
}

/// An order document ready to be written, with the fields its indexes are keyed on.
struct OrderRecord {
    id: OrderId,
    order_id: String,
    customer_id: String,
    driver_id: Option<String>,
    created: (i64, u32),
    status: OrderStatus,
    seq: u64,
    document: Vec<u8>,
}

impl OrderRecord {
    fn new(order: &Order) -> Result<Self, StoreError> {
        Ok(Self {
            id: order.order_id.clone(),
            order_id: order.order_id.as_str().to_owned(),
            customer_id: order.customer_id.as_str().to_owned(),
            driver_id: order.driver_id.as_ref().map(|d| d.as_str().to_owned()),
            created: time_key(&order.created_at),
            status: order.status,
            seq: order.seq,
            document: encode(order)?,
        })
    }
}

enum Write {
    InsertUser {
        user_id: String,
        email: String,
        document: Vec<u8>,
    },
    CreateOrder {
        order: OrderRecord,
        first_event: Vec<u8>,
        /// The key and the fingerprint of its request.
        idempotency: Option<(String, String)>,
        /// The same, for the cache.
        recent: (Arc<Order>, Arc<OrderEvent>),
    },
    Apply {
        order: OrderRecord,
        /// What the stored order must be (already checked against the update).
        expected: Expected,
        /// `(seq, document)`, already checked to be consecutive and to end at
        /// `order.seq`.
        events: Vec<(u64, Vec<u8>)>,
        /// The same, shared with the caller, for the cache.
        recent: (Arc<Order>, Vec<Arc<OrderEvent>>),
    },
    PutDriver {
        driver_id: String,
        document: Vec<u8>,
    },
    InsertSession {
        id: String,
        user_id: String,
        document: Vec<u8>,
    },
    RotateSession {
        id: String,
        expected_generation: u64,
        token_hash: String,
    },
    RevokeSessions {
        scope: SessionScope,
        at: DateTime<Utc>,
    },
}

enum SessionScope {
    One(String),
    User(String),
}

enum Done {
    Written,
    /// Sessions changed: the rotated one's new document, or how many were revoked.
    Rotated(Option<Vec<u8>>),
    Revoked(u64),
    /// The stored document of the order an earlier request with the same key made.
    Replayed(Vec<u8>),
    /// The key came with another request before.
    KeyReused,
}

/// Where the writer sends a caller its answer.
type Reply = oneshot::Sender<Result<Done, StoreError>>;

struct Request {
    write: Write,
    reply: Reply,
}

/// An order as last committed, with its whole event log and the document it is
/// stored as.
struct Recent {
    /// Shared with whoever committed it (the order's actor, an HTTP command) and
    /// with the readers it was handed to.
    order: Arc<Order>,
    /// Shared with the readers of the log, copied only if one still holds it when
    /// the order changes.
    events: EventLog,
    /// What the orders table holds for this version: a reader uses the decoded copy
    /// only when its snapshot of the file holds exactly these bytes.
    document: Vec<u8>,
}

/// The orders written last, oldest evicted first (see the module documentation).
struct RecentOrders {
    entries: FifoMap<String, Recent>,
}

impl RecentOrders {
    fn new(capacity: usize) -> Self {
        // Sized once: the cache fills to `capacity` and stays there.
        Self {
            entries: FifoMap::preallocated(capacity),
        }
    }

    /// Brings a cached order to the version just committed, or drops it if its
    /// cached log does not end where the new events begin (it cannot be completed).
    /// It keeps its place in the eviction order: orders leave oldest intake first.
    fn advance(
        &mut self,
        stored: OrderRecord,
        (order, events): (Arc<Order>, Vec<Arc<OrderEvent>>),
    ) {
        let Some(entry) = self.entries.get_mut(stored.order_id.as_str()) else {
            return;
        };
        let continues = events
            .first()
            .is_none_or(|first| first.seq == entry.order.seq + 1);
        if continues {
            entry.order = order;
            Arc::make_mut(&mut entry.events).extend(events);
            entry.document = stored.document;
        } else {
            self.entries.remove(stored.order_id.as_str());
        }
    }

    fn put(&mut self, id: &str, recent: Recent) {
        self.entries.insert(id.to_owned(), recent);
    }
}

type SharedRecent = Arc<std::sync::Mutex<RecentOrders>>;

fn lock(recent: &SharedRecent) -> std::sync::MutexGuard<'_, RecentOrders> {
    // The cache holds plain data: a panic elsewhere cannot leave it half-changed.
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The redb-backed [`Store`](super::Store). Dropping it lets the writer thread commit what is
/// already queued, stop, and close the file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    recent: SharedRecent,
    /// `None` only while dropping.
    writes: Option<mpsc::Sender<Request>>,
    /// The writer thread, woken by the write that completes its company.
    writer: std::thread::Thread,
    /// Disconnects when the writer thread has finished and released the database.
    /// (In a mutex only because a receiver is not `Sync`.)
    writer_gone: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    timeout: Duration,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, with the default 10 s bound per call.
    /// Blocks while redb opens the file, which includes repairing it after a crash.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_TIMEOUT, Tuning::default())
    }

    /// Like [`EmbeddedStore::open`], with the bound on every call (`[store]
    /// timeout_secs`; a call that exceeds it fails with `StoreError::Unavailable`) and
    /// the memory settings of `tuning`.
    pub fn open_with(dir: &Path, timeout: Duration, tuning: Tuning) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(usize::try_from(tuning.cache_bytes).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        create_tables(&db).map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel(QUEUE_DEPTH);
        let (gone_signal, writer_gone) = std::sync::mpsc::channel();
        let writer_db = Arc::clone(&db);
        let recent: SharedRecent = Arc::new(std::sync::Mutex::new(RecentOrders::new(
            tuning.cached_orders,
        )));
        let writer = Writer {
            recent: Arc::clone(&recent),
            window: tuning.commit_window,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer.run(&writer_db, queue);
                drop(writer_db);
                drop(gone_signal);
            })
            .map_err(|e| unavailable(format!("cannot start the writer thread: {e}")))?
            .thread()
            .clone();
        Ok(Self {
            db,
            recent,
            writes: Some(writes),
            writer,
            writer_gone: std::sync::Mutex::new(writer_gone),
            timeout,
        })
    }

    async fn write(&self, write: Write) -> Result<Done, StoreError> {
        let writes = self
            .writes
            .as_ref()
            .ok_or_else(|| unavailable("the store is closing"))?;
        let (reply, answer) = oneshot::channel();
        let round_trip = async {
            writes
                .send(Request { write, reply })
                .await
                .map_err(|_| unavailable("the writer thread has stopped"))?;
            // Queued with the first write (which the writer holds): company enough
            // for a writer waiting in its commit window to commit now.
            if writes.max_capacity() - writes.capacity() + 1 >= COMPANY {
                self.writer.unpark();
            }
            answer
                .await
                .map_err(|_| unavailable("the writer thread has stopped"))?
        };
        // A write that times out may still commit afterwards, as with any database
        // whose client gives up: callers treat Unavailable as "outcome unknown".
        tokio::time::timeout(self.timeout, round_trip)
            .await
            .map_err(|_| unavailable(format!("no commit within {:?}", self.timeout)))?
    }

    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let task = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            read(&txn)
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(unavailable(format!("read task failed: {join}"))),
            Err(_) => Err(unavailable(format!("no read within {:?}", self.timeout))),
        }
    }

    /// A lookup by key, on the calling task (see the module documentation).
    fn lookup<T>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        read(&txn)
    }

    /// An order as this reader's snapshot of the file holds it: taken from the cache
    /// of recent orders when the snapshot holds the very document the cached copy was
    /// decoded from, else decoded by `from_file` (given the snapshot and the document).
    /// `None` if there is no such order.
    fn read_order<T>(
        &self,
        id: &OrderId,
        cached: impl FnOnce(&Recent) -> T,
        from_file: impl FnOnce(&ReadTransaction, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.lookup(|txn| {
            let orders = txn.open_table(ORDERS).map_err(unavailable)?;
            let Some(stored) = orders.get(id.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let document = stored.value();
            let hit = lock(&self.recent)
                .entries
                .get(id.as_str())
                .filter(|recent| recent.document == document)
                .map(cached);
            match hit {
                Some(found) => Ok(Some(found)),
                None => from_file(txn, document).map(Some),
            }
        })
    }
}

impl Drop for EmbeddedStore {
    /// Closing the queue lets the writer commit what is queued and exit; waiting
    /// for it (bounded) means the file is released once the store is gone, so it can
    /// be opened again at once.
    fn drop(&mut self) {
        self.writes = None;
        // A writer waiting in its commit window commits what it holds now.
        self.writer.unpark();
        // Disconnected (the normal end) or timed out: either way nothing more to do.
        if let Ok(writer_gone) = self.writer_gone.lock() {
            let _ = writer_gone.recv_timeout(SHUTDOWN_WAIT);
        }
    }
}

/// Up to `limit` events of an order's log from `seq` `from` on, in order.
fn logged_events(
    txn: &ReadTransaction,
    id: &OrderId,
    from: u64,
    limit: usize,
) -> Result<Vec<Arc<OrderEvent>>, StoreError> {
    let events = txn.open_table(EVENTS).map_err(unavailable)?;
    let range = events
        .range::<(&str, u64)>((id.as_str(), from)..=(id.as_str(), u64::MAX))
        .map_err(unavailable)?;
    let mut found = Vec::new();
    for entry in range.take(limit) {
        let (_, document) = entry.map_err(unavailable)?;
        found.push(Arc::new(decode(document.value())?));
    }
    Ok(found)
}

fn create_tables(db: &Database) -> Result<(), Fatal> {
    let txn = db.begin_write()?;
    txn.open_table(ORDERS)?;
    txn.open_table(EVENTS)?;
    txn.open_table(USERS)?;
    txn.open_table(USERS_BY_EMAIL)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(IDEMPOTENCY_FINGERPRINTS)?;
    txn.open_table(BY_CUSTOMER)?;
    txn.open_table(BY_DRIVER)?;
    txn.open_table(BY_TIME)?;
    txn.open_table(BY_STATUS)?;
    txn.open_table(STATUS_COUNTS)?;
    txn.open_table(DRIVERS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(SESSIONS_BY_USER)?;
    txn.commit()?;
    Ok(())
}

/// The writer thread: group commit, and the cache of recent orders.
struct Writer {
    recent: SharedRecent,
    window: Duration,
}

fn gather(queue: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

impl Writer {
    fn run(&self, db: &Database, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // A writer that finds work waiting is busy: batches fill while it commits,
            // and waiting would only slow a saturated node down. One that had to wait
            // for this write sees a light load, where the window pays.
            let (first, was_idle) = match queue.try_recv() {
                Ok(request) => (request, false),
                Err(_) => match queue.blocking_recv() {
                    Some(request) => (request, true),
                    None => return,
                },
            };
            batch.push(first);
            if was_idle {
                // Woken early by the write that completes the company (or by a wake-up
                // left from an earlier one, hence the loop).
                let deadline = std::time::Instant::now() + self.window;
                while !queue.is_closed() && queue.len() + 1 < COMPANY {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
            }
            gather(&mut queue, &mut batch);
            self.commit_batch(db, &mut batch);
        }
    }

    /// Applies and commits one batch, then answers every caller. Answers are sent
    /// only after the commit, so no caller hears `Ok` for a write that could still be
    /// lost.
    fn commit_batch(&self, db: &Database, batch: &mut Vec<Request>) {
        match apply_batch(db, batch) {
            Ok(results) => {
                let replies = self.remember(batch.drain(..).zip(results));
                for (reply, result) in replies {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "store batch failed");
                let message = format!("write transaction failed: {e}");
                for request in batch.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    /// Moves the committed versions of the batch's orders into the cache (new
    /// orders, and changed ones whose log was cached whole before) and hands back
    /// each caller's answer. Until then readers of a changed order find the cached
    /// copy older than their snapshot and decode the file.
    fn remember(
        &self,
        committed: impl Iterator<Item = (Request, Result<Done, StoreError>)>,
    ) -> Vec<(Reply, Result<Done, StoreError>)> {
        let mut replies = Vec::with_capacity(committed.size_hint().0);
        let mut recent = lock(&self.recent);
        for (request, result) in committed {
            if matches!(result, Ok(Done::Written)) {
                match request.write {
                    Write::CreateOrder {
                        order, recent: new, ..
                    } => {
                        let (placed, first) = new;
                        let entry = Recent {
                            order: placed,
                            events: Arc::new(vec![first]),
                            document: order.document,
                        };
                        recent.put(&order.order_id, entry);
                    }
                    Write::Apply {
                        order, recent: new, ..
                    } => recent.advance(order, new),
                    Write::InsertUser { .. }
                    | Write::PutDriver { .. }
                    | Write::InsertSession { .. }
                    | Write::RotateSession { .. }
                    | Write::RevokeSessions { .. } => {}
                }
            }
            replies.push((request.reply, result));
        }
        replies
    }
}

/// A storage failure inside the write transaction: the transaction is lost and every
/// operation of the batch fails with it. (Kept as text: redb's errors are large.)
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! fatal_from {
    ($($error:ty),+) => {
        $(impl From<$error> for Fatal {
            fn from(e: $error) -> Self {
                Self(e.to_string())
            }
        })+
    };
}

fatal_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

/// Outer error: the batch is lost. Inner error: that one operation was refused
/// before it wrote anything.
type OpResult = Result<Result<Done, StoreError>, Fatal>;

fn apply_batch(db: &Database, batch: &[Request]) -> Result<Vec<Result<Done, StoreError>>, Fatal> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables::open(&txn)?;
        let mut counts: HashMap<OrderStatus, i64> = HashMap::new();
        for request in batch {
            let result = match &request.write {
                Write::InsertUser {
                    user_id,
                    email,
                    document,
                } => tables.insert_user(user_id, email, document)?,
                Write::CreateOrder {
                    order,
                    first_event,
                    idempotency,
                    ..
                } => tables.create_order(
                    order,
                    first_event,
                    idempotency.as_ref().map(|(k, f)| (k.as_str(), f.as_str())),
                    &mut counts,
                )?,
                Write::Apply {
                    order,
                    expected,
                    events,
                    ..
                } => tables.apply(order, *expected, events, &mut counts)?,
                Write::PutDriver {
                    driver_id,
                    document,
                } => {
                    tables
                        .drivers
                        .insert(driver_id.as_str(), document.as_slice())?;
                    Ok(Done::Written)
                }
                Write::InsertSession {
                    id,
                    user_id,
                    document,
                } => {
                    tables.sessions.insert(id.as_str(), document.as_slice())?;
                    tables
                        .sessions_by_user
                        .insert((user_id.as_str(), id.as_str()), ())?;
                    Ok(Done::Written)
                }
                Write::RotateSession {
                    id,
                    expected_generation,
                    token_hash,
                } => tables.rotate_session(id, *expected_generation, token_hash)?,
                Write::RevokeSessions { scope, at } => tables.revoke_sessions(scope, *at)?,
            };
            results.push(result);
        }
        tables.add_counts(&counts)?;
    }
    txn.commit()?;
    Ok(results)
}

struct Tables<'txn> {
    orders: redb::Table<'txn, &'static str, &'static [u8]>,
    events: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    users: redb::Table<'txn, &'static str, &'static [u8]>,
    users_by_email: redb::Table<'txn, &'static str, &'static str>,
    idempotency: redb::Table<'txn, (&'static str, &'static str), &'static str>,
    fingerprints: redb::Table<'txn, (&'static str, &'static str), &'static str>,
    by_customer: redb::Table<'txn, (&'static str, i64, u32, &'static str), &'static str>,
    by_driver: redb::Table<'txn, (&'static str, i64, u32, &'static str), &'static str>,
    by_time: redb::Table<'txn, (i64, u32, &'static str), ()>,
    by_status: redb::Table<'txn, (&'static str, i64, u32, &'static str), ()>,
    status_counts: redb::Table<'txn, &'static str, u64>,
    drivers: redb::Table<'txn, &'static str, &'static [u8]>,
    sessions: redb::Table<'txn, &'static str, &'static [u8]>,
    sessions_by_user: redb::Table<'txn, (&'static str, &'static str), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, Fatal> {
        Ok(Self {
            orders: txn.open_table(ORDERS)?,
            events: txn.open_table(EVENTS)?,
            users: txn.open_table(USERS)?,
            users_by_email: txn.open_table(USERS_BY_EMAIL)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            fingerprints: txn.open_table(IDEMPOTENCY_FINGERPRINTS)?,
            by_customer: txn.open_table(BY_CUSTOMER)?,
            by_driver: txn.open_table(BY_DRIVER)?,
            by_time: txn.open_table(BY_TIME)?,
            by_status: txn.open_table(BY_STATUS)?,
            status_counts: txn.open_table(STATUS_COUNTS)?,
            drivers: txn.open_table(DRIVERS)?,
            sessions: txn.open_table(SESSIONS)?,
            sessions_by_user: txn.open_table(SESSIONS_BY_USER)?,
        })
    }

    fn stored_session(&self, id: &str) -> Result<Result<Option<LoginSession>, StoreError>, Fatal> {
        Ok(match self.sessions.get(id)? {
            Some(document) => decode(document.value()).map(Some),
            None => Ok(None),
        })
    }

    fn rotate_session(&mut self, id: &str, expected: u64, token_hash: &str) -> OpResult {
        let mut session = match self.stored_session(id)? {
            Ok(Some(session)) => session,
            Ok(None) => return Ok(Ok(Done::Rotated(None))),
            Err(e) => return Ok(Err(e)),
        };
        if session.generation != expected || session.revoked_at.is_some() {
            return Ok(Ok(Done::Rotated(None)));
        }
        session.generation += 1;
        token_hash.clone_into(&mut session.token_hash);
        let document = match encode(&session) {
            Ok(document) => document,
            Err(e) => return Ok(Err(e)),
        };
        self.sessions.insert(id, document.as_slice())?;
        Ok(Ok(Done::Rotated(Some(document))))
    }

    fn revoke_sessions(&mut self, scope: &SessionScope, at: DateTime<Utc>) -> OpResult {
        let ids: Vec<String> = match scope {
            SessionScope::One(id) => vec![id.clone()],
            SessionScope::User(user) => {
                let mut ids = Vec::new();
                for entry in self.sessions_by_user.range((user.as_str(), "")..)? {
                    let (key, _) = entry?;
                    let (owner, id) = key.value();
                    if owner != user.as_str() {
                        break;
                    }
                    ids.push(id.to_owned());
                }
                ids
            }
        };
        let mut revoked = 0;
        for id in ids {
            let mut session = match self.stored_session(&id)? {
                Ok(Some(session)) if session.revoked_at.is_none() => session,
                Ok(_) => continue,
                Err(e) => return Ok(Err(e)),
            };
            session.revoked_at = Some(at);
            let document = match encode(&session) {
                Ok(document) => document,
                Err(e) => return Ok(Err(e)),
            };
            self.sessions.insert(id.as_str(), document.as_slice())?;
            revoked += 1;
        }
        Ok(Ok(Done::Revoked(revoked)))
    }

    fn insert_user(&mut self, user_id: &str, email: &str, document: &[u8]) -> OpResult {
        if self.users_by_email.get(email)?.is_some() {
            return Ok(Err(StoreError::DuplicateEmail));
        }
        if self.users.get(user_id)?.is_some() {
            return Ok(Err(StoreError::Corrupt(format!(
                "a user with id {user_id} already exists"
            ))));
        }
        self.users.insert(user_id, document)?;
        self.users_by_email.insert(email, user_id)?;
        Ok(Ok(Done::Written))
    }

    fn create_order(
        &mut self,
        order: &OrderRecord,
        first_event: &[u8],
        idempotency: Option<(&str, &str)>,
        counts: &mut HashMap<OrderStatus, i64>,
    ) -> OpResult {
        let customer = order.customer_id.as_str();
        let id = order.order_id.as_str();
        if let Some((key, fingerprint)) = idempotency {
            let earlier = self
                .idempotency
                .get((customer, key))?
                .map(|id| id.value().to_owned());
            if let Some(earlier) = earlier {
                let stored = self.fingerprints.get((customer, key))?;
                let stored = stored.as_ref().map(|stored| stored.value());
                if !contract::replays(stored, fingerprint) {
                    return Ok(Ok(Done::KeyReused));
                }
                return Ok(match self.orders.get(earlier.as_str())? {
                    Some(document) => Ok(Done::Replayed(document.value().to_vec())),
                    None => Err(StoreError::Corrupt(format!(
                        "idempotency key refers to missing order {earlier}"
                    ))),
                });
            }
        }
        if self.orders.get(id)?.is_some() {
            // A generated id collided: creating expects no order at all (version 0).
            return Ok(Err(StoreError::VersionConflict { expected: 0 }));
        }
        let (secs, nanos) = order.created;
        let status = order.status.as_str();
        self.orders.insert(id, order.document.as_slice())?;
        self.events.insert((id, order.seq), first_event)?;
        if let Some((key, fingerprint)) = idempotency {
            self.idempotency.insert((customer, key), id)?;
            self.fingerprints.insert((customer, key), fingerprint)?;
        }
        self.by_customer
            .insert((customer, secs, nanos, id), status)?;
        if let Some(driver) = order.driver_id.as_deref() {
            self.by_driver.insert((driver, secs, nanos, id), status)?;
        }
        self.by_time.insert((secs, nanos, id), ())?;
        self.by_status.insert((status, secs, nanos, id), ())?;
        *counts.entry(order.status).or_default() += 1;
        Ok(Ok(Done::Written))
    }

    fn apply(
        &mut self,
        order: &OrderRecord,
        expected: Expected,
        events: &[(u64, Vec<u8>)],
        counts: &mut HashMap<OrderStatus, i64>,
    ) -> OpResult {
        let id = order.order_id.as_str();
        let stored = match self.orders.get(id)? {
            Some(document) => decode::<OrderHead>(document.value()),
            None => return Ok(Err(StoreError::NotFound(order.id.clone()))),
        };
        let stored = match stored {
            Ok(head) => head,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(refusal) = expected.refusal(&order.id, stored.version, stored.seq) {
            return Ok(Err(refusal));
        }
        // The MongoDB store never rewrites these fields; this one refuses the update.
        if stored.customer_id.as_str() != order.customer_id
            || time_key(&stored.created_at) != order.created
        {
            return Ok(Err(StoreError::Corrupt(format!(
                "order {id}: an update may not change the customer or the creation time"
            ))));
        }
        self.orders.insert(id, order.document.as_slice())?;
        for (seq, document) in events {
            self.events.insert((id, *seq), document.as_slice())?;
        }
        let (secs, nanos) = order.created;
        let stored_driver = stored.driver_id.as_ref().map(UserId::as_str);
        let driver = order.driver_id.as_deref();
        if stored_driver != driver || stored.status != order.status {
            if let Some(old) = stored_driver {
                self.by_driver.remove((old, secs, nanos, id))?;
            }
            if let Some(new) = driver {
                self.by_driver
                    .insert((new, secs, nanos, id), order.status.as_str())?;
            }
        }
        if stored.status != order.status {
            let customer = order.customer_id.as_str();
            let (old, new) = (stored.status.as_str(), order.status.as_str());
            self.by_customer.insert((customer, secs, nanos, id), new)?;
            self.by_status.remove((old, secs, nanos, id))?;
            self.by_status.insert((new, secs, nanos, id), ())?;
            *counts.entry(stored.status).or_default() -= 1;
            *counts.entry(order.status).or_default() += 1;
        }
        Ok(Ok(Done::Written))
    }

    /// Status counts change once per batch rather than once per operation.
    fn add_counts(&mut self, deltas: &HashMap<OrderStatus, i64>) -> Result<(), Fatal> {
        for (status, delta) in deltas {
            if *delta == 0 {
                continue;
            }
            let key = status.as_str();
            let current = self.status_counts.get(key)?.map_or(0, |c| c.value());
            let next = current.saturating_add_signed(*delta);
            if next == 0 {
                self.status_counts.remove(key)?;
            } else {
                self.status_counts.insert(key, next)?;
            }
        }
        Ok(())
    }
}

/// Loads the documents of the orders named by `ids`, in that order.
fn load_orders(txn: &ReadTransaction, ids: &[String]) -> Result<Vec<Order>, StoreError> {
    let orders = txn.open_table(ORDERS).map_err(unavailable)?;
    ids.iter()
        .map(|id| match orders.get(id.as_str()).map_err(unavailable)? {
            Some(document) => decode(document.value()),
            None => Err(StoreError::Corrupt(format!(
                "order {id} is indexed but missing"
            ))),
        })
        .collect()
}

#[async_trait]
impl StoreHealth for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.lookup(|txn| {
            txn.open_table(STATUS_COUNTS).map_err(unavailable)?;
            Ok(())
        })
    }
}

#[async_trait]
impl UserStore for EmbeddedStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let write = Write::InsertUser {
            user_id: user.id.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            document: encode(user)?,
        };
        self.write(write).await.map(|_| ())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let email = email.as_str();
        self.lookup(|txn| {
            let by_email = txn.open_table(USERS_BY_EMAIL).map_err(unavailable)?;
            let Some(id) = by_email.get(email).map_err(unavailable)? else {
                return Ok(None);
            };
            let users = txn.open_table(USERS).map_err(unavailable)?;
            match users.get(id.value()).map_err(unavailable)? {
                Some(document) => decode(document.value()).map(Some),
                None => Err(StoreError::Corrupt(format!(
                    "e-mail {email} refers to missing user {}",
                    id.value()
                ))),
            }
        })
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.lookup(|txn| {
            let users = txn.open_table(USERS).map_err(unavailable)?;
            match users.get(id.as_str()).map_err(unavailable)? {
                Some(document) => decode(document.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    async fn insert_session(&self, session: &LoginSession) -> Result<(), StoreError> {
        let write = Write::InsertSession {
            id: session.id.clone(),
            user_id: session.user_id.as_str().to_owned(),
            document: encode(session)?,
        };
        self.write(write).await.map(|_| ())
    }

    async fn session(&self, id: &str) -> Result<Option<LoginSession>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
            match sessions.get(id.as_str()).map_err(unavailable)? {
                Some(document) => decode(document.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn rotate_session(
        &self,
        id: &str,
        expected_generation: u64,
        token_hash: &str,
    ) -> Result<Option<LoginSession>, StoreError> {
        let write = Write::RotateSession {
            id: id.to_owned(),
            expected_generation,
            token_hash: token_hash.to_owned(),
        };
        match self.write(write).await? {
            Done::Rotated(Some(document)) => decode(&document).map(Some),
            _ => Ok(None),
        }
    }

    async fn revoke_session(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let scope = SessionScope::One(id.to_owned());
        self.write(Write::RevokeSessions { scope, at })
            .await
            .map(|_| ())
    }

    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let scope = SessionScope::User(user.as_str().to_owned());
        match self.write(Write::RevokeSessions { scope, at }).await? {
            Done::Revoked(count) => Ok(count),
            _ => Ok(0),
        }
    }
}

#[async_trait]
impl OrderStore for EmbeddedStore {
    async fn create_order(
        &self,
        order: &Arc<Order>,
        first_event: &Arc<OrderEvent>,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Intake, StoreError> {
        contract::check_intake(order, first_event)?;
        let write = Write::CreateOrder {
            order: OrderRecord::new(order)?,
            first_event: encode(first_event)?,
            idempotency: idempotency.map(|i| (i.key.to_owned(), i.fingerprint.to_owned())),
            recent: (Arc::clone(order), Arc::clone(first_event)),
        };
        match self.write(write).await? {
            Done::KeyReused => Ok(Intake::KeyReused),
            Done::Replayed(document) => {
                decode(&document).map(|order| Intake::Replayed(Box::new(order)))
            }
            _ => Ok(Intake::Created),
        }
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError> {
        self.read_order(
            id,
            |recent| Arc::clone(&recent.order),
            |_, document| decode(document).map(Arc::new),
        )
    }

    async fn order_with_log(
        &self,
        id: &OrderId,
    ) -> Result<Option<(Arc<Order>, EventLog)>, StoreError> {
        self.read_order(
            id,
            |recent| (Arc::clone(&recent.order), Arc::clone(&recent.events)),
            |txn, document| {
                let log = logged_events(txn, id, 0, usize::MAX)?;
                Ok((Arc::new(decode(document)?), Arc::new(log)))
            },
        )
    }

    async fn orders(&self, query: &OrderQuery) -> Result<OrderPage, StoreError> {
        let query = query.clone();
        self.read(move |txn| list_orders(txn, &query)).await
    }

    async fn apply(
        &self,
        order: &Arc<Order>,
        events: &[Arc<OrderEvent>],
    ) -> Result<(), StoreError> {
        let expected = Expected::of_update(order, events)?;
        let write = Write::Apply {
            order: OrderRecord::new(order)?,
            expected,
            events: events
                .iter()
                .map(|e| Ok((e.seq, encode(&**e)?)))
                .collect::<Result<_, StoreError>>()?,
            recent: (Arc::clone(order), events.to_vec()),
        };
        self.write(write).await.map(|_| ())
    }

    async fn events(
        &self,
        id: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<OrderEvent>>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let found = self.read_order(
            id,
            |recent| {
                recent
                    .events
                    .iter()
                    .filter(|e| e.seq >= from)
                    .take(limit)
                    .map(Arc::clone)
                    .collect()
            },
            |txn, _| logged_events(txn, id, from, limit),
        )?;
        Ok(found.unwrap_or_default())
    }

    async fn unfinished_orders(
        &self,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<Vec<OrderId>, StoreError> {
        self.read(move |txn| {
            let by_status = txn.open_table(BY_STATUS).map_err(unavailable)?;
            let orders = txn.open_table(ORDERS).map_err(unavailable)?;
            let mut ids = Vec::new();
            for status in OrderStatus::ALL.into_iter().filter(|s| s.is_processing()) {
                let (from, to) = status_bounds(status);
                let range = by_status
                    .range::<(&str, i64, u32, &str)>(
                        (from.as_str(), i64::MIN, 0, "")..(to.as_str(), i64::MIN, 0, ""),
                    )
                    .map_err(unavailable)?;
                for entry in range {
                    let (key, _) = entry.map_err(unavailable)?;
                    let id = key.value().3;
                    if let Some(at) = unchanged_since {
                        let Some(document) = orders.get(id).map_err(unavailable)? else {
                            continue;
                        };
                        let order: Order = decode(document.value())?;
                        if order.updated_at >= at {
                            continue;
                        }
                    }
                    ids.push(stored_id(id)?);
                }
            }
            Ok(ids)
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError> {
        self.lookup(|txn| {
            let counts = txn.open_table(STATUS_COUNTS).map_err(unavailable)?;
            let mut found = Vec::new();
            for status in OrderStatus::ALL {
                if let Some(count) = counts.get(status.as_str()).map_err(unavailable)? {
                    if count.value() > 0 {
                        found.push((status, count.value()));
                    }
                }
            }
            Ok(found)
        })
    }
}

#[async_trait]
impl DriverStore for EmbeddedStore {
    async fn put_driver_location(&self, location: &DriverLocation) -> Result<(), StoreError> {
        let write = Write::PutDriver {
            driver_id: location.driver_id.as_str().to_owned(),
            document: encode(location)?,
        };
        self.write(write).await.map(|_| ())
    }

    async fn driver_location(&self, driver: &UserId) -> Result<Option<DriverLocation>, StoreError> {
        self.lookup(|txn| {
            let drivers = txn.open_table(DRIVERS).map_err(unavailable)?;
            match drivers.get(driver.as_str()).map_err(unavailable)? {
                Some(document) => decode(document.value()).map(Some),
                None => Ok(None),
            }
        })
    }
}

fn stored_id(raw: &str) -> Result<OrderId, StoreError> {
    OrderId::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("malformed order id {raw:?}")))
}

/// The first string component of a key range covering exactly `status` (and no other
/// status that merely starts with it): `[status, status + "\0")`.
fn status_bounds(status: OrderStatus) -> (String, String) {
    (status.as_str().to_owned(), format!("{}\0", status.as_str()))
}

/// The ids of `owner`'s orders in an owner index (`BY_CUSTOMER`, `BY_DRIVER`), newest
/// first, strictly before `cursor`, with `status` if given (read from the index value,
/// so skipped orders are never loaded).
fn owned_orders<'t>(
    txn: &'t ReadTransaction,
    index: TableDefinition<(&str, i64, u32, &str), &str>,
    owner: &UserId,
    cursor: Option<&((i64, u32), String)>,
    status: Option<OrderStatus>,
) -> Result<impl Iterator<Item = Result<String, StoreError>> + 't, StoreError> {
    let table = txn.open_table(index).map_err(unavailable)?;
    let owner = owner.as_str();
    let past_owner = format!("{owner}\0");
    let start = (owner, i64::MIN, 0u32, "");
    let range = match cursor {
        Some(((secs, nanos), id)) => {
            table.range::<(&str, i64, u32, &str)>(start..(owner, *secs, *nanos, id.as_str()))
        }
        None => {
            table.range::<(&str, i64, u32, &str)>(start..(past_owner.as_str(), i64::MIN, 0, ""))
        }
    }
    .map_err(unavailable)?;
    let wanted = status.map(OrderStatus::as_str);
    Ok(range.rev().filter_map(move |entry| match entry {
        Ok((key, value)) => wanted
            .is_none_or(|w| w == value.value())
            .then(|| Ok(key.value().3.to_owned())),
        Err(e) => Some(Err(unavailable(e))),
    }))
}

fn list_orders(txn: &ReadTransaction, query: &OrderQuery) -> Result<OrderPage, StoreError> {
    let limit = query.limit;
    if limit == 0 {
        return Ok(contract::page(Vec::new(), false));
    }
    let cursor = query
        .after
        .as_ref()
        .map(|c| (time_key(&c.created_at), c.order_id.as_str().to_owned()));
    let mut ids: Vec<String> = Vec::new();
    match (&query.driver, &query.customer, query.status) {
        (Some(driver), customer, status) => {
            let mut of_driver = owned_orders(txn, BY_DRIVER, driver, cursor.as_ref(), status)?;
            // Rare (a customer's orders with one driver): check each on its document.
            let orders = txn.open_table(ORDERS).map_err(unavailable)?;
            let of_customer = |id: &String| -> Result<bool, StoreError> {
                let Some(customer) = customer else {
                    return Ok(true);
                };
                match orders.get(id.as_str()).map_err(unavailable)? {
                    Some(document) => {
                        Ok(decode::<OrderHead>(document.value())?.customer_id == *customer)
                    }
                    None => Ok(false),
                }
            };
            for id in of_driver.by_ref() {
                let id = id?;
                if of_customer(&id)? {
                    ids.push(id);
                    if ids.len() > limit {
                        break;
                    }
                }
            }
        }
        (None, Some(customer), status) => {
            for id in owned_orders(txn, BY_CUSTOMER, customer, cursor.as_ref(), status)? {
                ids.push(id?);
                if ids.len() > limit {
                    break;
                }
            }
        }
        (None, None, Some(status)) => {
            let table = txn.open_table(BY_STATUS).map_err(unavailable)?;
            let (from, to) = status_bounds(status);
            let start = (from.as_str(), i64::MIN, 0u32, "");
            let range = match &cursor {
                Some(((secs, nanos), id)) => table.range::<(&str, i64, u32, &str)>(
                    start..(from.as_str(), *secs, *nanos, id.as_str()),
                ),
                None => {
                    table.range::<(&str, i64, u32, &str)>(start..(to.as_str(), i64::MIN, 0, ""))
                }
            }
            .map_err(unavailable)?;
            for entry in range.rev().take(limit + 1) {
                let (key, _) = entry.map_err(unavailable)?;
                ids.push(key.value().3.to_owned());
            }
        }
        (None, None, None) => {
            let table = txn.open_table(BY_TIME).map_err(unavailable)?;
            let range = match &cursor {
                Some(((secs, nanos), id)) => {
                    table.range::<(i64, u32, &str)>(..(*secs, *nanos, id.as_str()))
                }
                None => table.range::<(i64, u32, &str)>(..),
            }
            .map_err(unavailable)?;
            for entry in range.rev().take(limit + 1) {
                let (key, _) = entry.map_err(unavailable)?;
                ids.push(key.value().2.to_owned());
            }
        }
    }
    let more = ids.len() > limit;
    ids.truncate(limit);
    Ok(contract::page(load_orders(txn, &ids)?, more))
}
