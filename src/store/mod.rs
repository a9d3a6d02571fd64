//! The store ports: everything the runtime persists, one trait per concern (orders
//! with their events, users with their login sessions, driver locations, health),
//! and `Store`, all of them together. Two adapters implement every port: the embedded
//! redb file (the default) and MongoDB. The checks the contract makes of every write
//! before it reaches a backend are in `contract`, shared by both; one conformance
//! suite (`tests/store_conformance.rs`) runs against both.
//!
//! Order correctness rests on one primitive: `apply`, a compare-and-set on the order's
//! `version` that writes the new order document and its new events atomically. Two
//! writers can never both win; the loser reloads and decides again.

mod contract;
pub mod embedded;
pub mod mongo;

use crate::domain::{Email, LoginSession, Order, OrderEvent, OrderId, OrderStatus, User, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the order was changed by someone else (expected version {expected})")]
    VersionConflict { expected: u64 },
    #[error("an account with this e-mail address already exists")]
    DuplicateEmail,
    #[error("order {0} does not exist")]
    NotFound(OrderId),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Where a page of orders ends; the next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCursor {
    pub created_at: DateTime<Utc>,
    pub order_id: OrderId,
}

#[derive(Debug, Clone)]
pub struct OrderQuery {
    /// `None` lists every customer's orders (admins only).
    pub customer: Option<UserId>,
    /// Only orders assigned to this driver (a driver's work list). A listing is by
    /// customer or by driver: with both set, the driver's orders of that customer.
    pub driver: Option<UserId>,
    pub status: Option<OrderStatus>,
    pub limit: usize,
    pub after: Option<OrderCursor>,
}

#[derive(Debug, Clone)]
pub struct OrderPage {
    /// Newest first.
    pub orders: Vec<Order>,
    pub next: Option<OrderCursor>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    Created,
    /// The customer already placed an order with this idempotency key and the same
    /// request.
    Replayed(Box<Order>),
    /// The customer used this idempotency key before for a different request.
    KeyReused,
}

/// A client's idempotency key with the fingerprint of the request it came with, so
/// that the key cannot be reused for another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverLocation {
    pub driver_id: UserId,
    pub lat: f64,
    pub lng: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

/// An order's whole event log as a store hands it out for reading. Its events are
/// shared values: a store that keeps recent orders in memory holds the very events
/// that were committed and announced, so the log grows and is handed out without
/// copying an event.
pub type EventLog = Arc<Vec<Arc<OrderEvent>>>;

/// Orders and their event logs: intake, the compare-and-set every transition goes
/// through, listings, and the sweeps that find work to resume.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Persists a new order with its first event, atomically. With an idempotency key
    /// that the same customer used before, nothing is written: the earlier order is
    /// returned if the fingerprints match (or the earlier one was stored without
    /// one), `Intake::KeyReused` if they differ. Both are shared, as in `apply`.
    async fn create_order(
        &self,
        order: &Arc<Order>,
        first_event: &Arc<OrderEvent>,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Intake, StoreError>;

    /// The order as stored; shared, not copied, where the store holds it in memory.
    async fn order(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError>;

    /// The order with its whole event log, read together: what a status or detail
    /// view shows, in one store read instead of two (and one consistent snapshot).
    /// The log is shared, not copied, where the store holds it in memory.
    async fn order_with_log(
        &self,
        id: &OrderId,
    ) -> Result<Option<(Arc<Order>, EventLog)>, StoreError>;
    async fn orders(&self, query: &OrderQuery) -> Result<OrderPage, StoreError>;

    /// Compare-and-set: succeeds only if the stored version is `order.version - 1`;
    /// writes the order and appends `events` (whose seqs continue the log) together.
    /// Both are shared: a store that keeps recent orders in memory keeps these.
    async fn apply(&self, order: &Arc<Order>, events: &[Arc<OrderEvent>])
    -> Result<(), StoreError>;

    /// The order's events with `seq > after`, in order, at most `limit`.
    async fn events(
        &self,
        id: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<OrderEvent>>, StoreError>;

    /// Orders still being processed (see `OrderStatus::is_processing`): resumed after
    /// a restart or a shard take-over. With `unchanged_since`, only those whose last
    /// change is older than that: the ones nobody seems to be driving.
    async fn unfinished_orders(
        &self,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<Vec<OrderId>, StoreError>;

    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, StoreError>;
}

/// Accounts and their login sessions (refresh-token families).
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError>;

    /// `rotate_session` is a compare-and-set: it installs `token_hash` as generation
    /// `expected_generation + 1` only if the session is at `expected_generation` and
    /// not revoked, and returns the updated session; `None` when it was not (a
    /// concurrent rotation, a replay, a revocation).
    async fn insert_session(&self, session: &LoginSession) -> Result<(), StoreError>;
    async fn session(&self, id: &str) -> Result<Option<LoginSession>, StoreError>;
    async fn rotate_session(
        &self,
        id: &str,
        expected_generation: u64,
        token_hash: &str,
    ) -> Result<Option<LoginSession>, StoreError>;
    /// Idempotent; an unknown id is not an error.
    async fn revoke_session(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Revokes every live session of the user; returns how many.
    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}

/// Where each driver was last seen: one document per driver, replaced on every
/// report, unrelated to any order's log.
#[async_trait]
pub trait DriverStore: Send + Sync + 'static {
    async fn put_driver_location(&self, location: &DriverLocation) -> Result<(), StoreError>;
    async fn driver_location(&self, driver: &UserId) -> Result<Option<DriverLocation>, StoreError>;
}

/// Whether the store answers at all.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Every port together, for wiring: the node opens one backend and hands it out as
/// this. A part that needs one concern takes that port instead (an `Arc<dyn Store>`
/// coerces to `Arc<dyn UserStore>` and the like).
pub trait Store: OrderStore + UserStore + DriverStore + StoreHealth {}

impl<T: OrderStore + UserStore + DriverStore + StoreHealth> Store for T {}

pub type SharedStore = Arc<dyn Store>;
