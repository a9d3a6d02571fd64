//! Application services: what a request may do to orders, independent of HTTP.
//!
//! Changes that a client asks for (cancel, delivery) are decided here with the pure
//! saga and written with the store's compare-and-set; the order's actor is then woken
//! to act on the new state. The store, not a lock in some process, is the arbiter, so
//! these work on any node of a cluster.

use crate::bus::{OrderCommand, SharedBus};
use crate::domain::saga::{self, SagaRejection};
use crate::domain::{
    NewOrder, Operation, Order, OrderEvent, OrderId, OrderStatus, Role, SagaDecision, SagaInput,
    UserId, ValidationErrors,
};
use crate::store::{
    EventLog, IdempotencyKey, Intake, OrderPage, OrderQuery, SharedStore, StoreError,
};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub(crate) mod drivers;
mod visibility;

pub(crate) use drivers::DriverService;
use visibility::Action;
pub(crate) use visibility::Viewer;

/// Most times a request re-reads and re-decides after losing a compare-and-set race.
const MAX_CAS_ATTEMPTS: usize = 8;

/// Fresh ids drawn for a new order whose id another order already has.
const ID_DRAWS: usize = 3;

/// Orders of each kind in a driver's work list (ready for pickup, carrying).
pub(crate) const DRIVER_WORK_LIMIT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("order not found")]
    NotFound,
    #[error("the request has invalid fields")]
    Invalid(ValidationErrors),
    #[error("{0}")]
    Conflict(String),
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    #[error("too many orders in flight; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    /// The node is shutting down; another node (or this one restarted) takes it.
    #[error("this node is shutting down; retry in {retry_after_secs} s")]
    Draining { retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

impl From<KeptChanging> for ServiceError {
    fn from(_: KeptChanging) -> Self {
        Self::Conflict("the order is changing too fast; try again".into())
    }
}

/// A driver's work: what waits for them at the warehouse and what they carry,
/// newest first, each list at most `DRIVER_WORK_LIMIT` long.
#[derive(Debug, Clone)]
pub(crate) struct DriverWork {
    pub(crate) ready_for_pickup: Vec<Order>,
    pub(crate) carrying: Vec<Order>,
    /// Either list was cut at `DRIVER_WORK_LIMIT`.
    pub(crate) truncated: bool,
}

/// The bound on orders being processed on this node. Order actors enter when they
/// start driving a processing order and leave when it stops processing; intake
/// refuses new orders while the bound is reached, so memory stays bounded under any
/// load.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    max: usize,
    /// Set when the node drains: it takes no new order (and is not ready).
    closed: AtomicBool,
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max,
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) < self.max
    }

    /// For good: the node is draining.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub(crate) struct Placed {
    pub(crate) order: Arc<Order>,
    /// True when an earlier request with the same idempotency key made this order.
    pub(crate) replayed: bool,
}

#[derive(Clone)]
pub struct OrderService {
    store: SharedStore,
    bus: SharedBus,
    admission: Arc<Admission>,
    /// This node's id, in the transition log lines.
    node: Arc<str>,
}

impl OrderService {
    pub fn new(store: SharedStore, bus: SharedBus, admission: Arc<Admission>, node: &str) -> Self {
        Self {
            store,
            bus,
            admission,
            node: node.into(),
        }
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Intake: RECEIVED is durable before this returns, so a 202 is never a lie.
    pub(crate) async fn place(
        &self,
        customer: &UserId,
        request: NewOrder,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Placed, ServiceError> {
        if self.admission.is_closed() {
            return Err(ServiceError::Draining {
                retry_after_secs: 1,
            });
        }
        if !self.admission.has_room() {
            return Err(ServiceError::Busy {
                retry_after_secs: 1,
            });
        }
        let now = Utc::now();
        let (order, event) = Order::receive(OrderId::generate(now), customer.clone(), request, now);
        // Shared from here on: with the store's cache, the bus and the caller.
        let (mut order, mut event) = (Arc::new(order), Arc::new(event));
        let mut collisions = 0;
        let intake = loop {
            match self.store.create_order(&order, &event, idempotency).await {
                // Another order of the same millisecond drew the same random part
                // (40 bits): draw again.
                Err(StoreError::VersionConflict { expected: 0 }) if collisions < ID_DRAWS => {
                    collisions += 1;
                    let drawn = OrderId::generate(now);
                    Arc::make_mut(&mut event).order_id = drawn.clone();
                    Arc::make_mut(&mut order).order_id = drawn;
                }
                other => break other?,
            }
        };
        match intake {
            Intake::KeyReused => Err(ServiceError::KeyReused),
            Intake::Replayed(existing) => Ok(Placed {
                order: Arc::new(*existing),
                replayed: true,
            }),
            Intake::Created => {
                crate::observability::order_transitions(
                    &self.node,
                    &order,
                    std::slice::from_ref(&event),
                );
                announce(&self.bus, vec![event]).await;
                // The order is durable: it is accepted even if its actor cannot be
                // woken now; the resume sweep picks it up when the bus is back.
                if let Err(e) = self.wake(&order.order_id).await {
                    tracing::warn!(order_id = %order.order_id, error = %e, "order accepted; wake-up deferred to the resume sweep");
                }
                Ok(Placed {
                    order,
                    replayed: false,
                })
            }
        }
    }

    pub(crate) async fn find(
        &self,
        viewer: &Viewer,
        id: &OrderId,
    ) -> Result<Arc<Order>, ServiceError> {
        self.load(viewer, Action::Own, id).await
    }

    async fn load(
        &self,
        viewer: &Viewer,
        action: Action,
        id: &OrderId,
    ) -> Result<Arc<Order>, ServiceError> {
        match self.store.order(id).await? {
            Some(order) if viewer.may(action, &order) => Ok(order),
            _ => Err(ServiceError::NotFound),
        }
    }

    /// The order if the viewer may see it; `None` for one that does not exist or is
    /// not theirs alike.
    pub(crate) async fn find_visible(
        &self,
        viewer: &Viewer,
        id: &OrderId,
    ) -> Result<Option<Arc<Order>>, ServiceError> {
        match self.find(viewer, id).await {
            Ok(order) => Ok(Some(order)),
            Err(ServiceError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Up to `limit` logged updates of an order after `after` (a `seq`), for a
    /// reader that was let see the order (a WebSocket session following it).
    pub(crate) async fn updates_after(
        &self,
        id: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<OrderEvent>>, ServiceError> {
        Ok(self.store.events(id, after, limit).await?)
    }

    /// Orders by status across the cluster (for `/metrics`).
    pub async fn count_by_status(&self) -> Result<Vec<(OrderStatus, u64)>, ServiceError> {
        Ok(self.store.count_by_status().await?)
    }

    /// Whether the order store answers (for readiness).
    pub(crate) async fn store_reachable(&self) -> Result<(), ServiceError> {
        Ok(self.store.ping().await?)
    }

    /// The order with its whole event log (for the status view and the audit trail).
    pub(crate) async fn history(
        &self,
        viewer: &Viewer,
        id: &OrderId,
    ) -> Result<(Arc<Order>, EventLog), ServiceError> {
        match self.store.order_with_log(id).await? {
            Some((order, events)) if viewer.may(Action::Own, &order) => Ok((order, events)),
            _ => Err(ServiceError::NotFound),
        }
    }

    pub(crate) async fn list(
        &self,
        viewer: &Viewer,
        mut query: OrderQuery,
    ) -> Result<OrderPage, ServiceError> {
        if let Some(own) = viewer.customer_scope() {
            query.customer = Some(own.clone());
        }
        Ok(self.store.orders(&query).await?)
    }

    pub(crate) async fn cancel(
        &self,
        viewer: &Viewer,
        id: &OrderId,
    ) -> Result<Arc<Order>, ServiceError> {
        self.change(viewer, Action::Own, id, |_| Some(SagaInput::Cancel))
            .await
    }

    /// The assigned driver (or an admin) moves the order on; anyone else gets 404.
    pub(crate) async fn deliver(
        &self,
        viewer: &Viewer,
        id: &OrderId,
        status: OrderStatus,
    ) -> Result<Arc<Order>, ServiceError> {
        if !status.is_delivery_report() {
            return Err(ServiceError::Conflict(
                "status must be OUT_FOR_DELIVERY or DELIVERED".into(),
            ));
        }
        self.change(viewer, Action::Deliver, id, |_| {
            Some(SagaInput::Delivery {
                status,
                by: viewer.user_id.clone(),
            })
        })
        .await
    }

    /// An admin gives the order to `driver`, which must be a driver's account.
    /// Assigning it to the driver it already has changes nothing.
    pub(crate) async fn assign(
        &self,
        viewer: &Viewer,
        id: &OrderId,
        driver: &UserId,
    ) -> Result<Arc<Order>, ServiceError> {
        let is_driver = self
            .store
            .user_by_id(driver)
            .await?
            .is_some_and(|user| user.role == Role::Driver);
        if !is_driver {
            let mut errors = ValidationErrors::default();
            errors.add("driverId", "must be the id of a driver's account");
            return Err(ServiceError::Invalid(errors));
        }
        self.change(viewer, Action::Assign, id, |order| {
            (order.driver_id.as_ref() != Some(driver)).then(|| SagaInput::Assign {
                driver: driver.clone(),
            })
        })
        .await
    }

    /// The orders assigned to the calling driver that are ready for pickup or out
    /// for delivery.
    pub(crate) async fn driver_work(&self, driver: &Viewer) -> Result<DriverWork, ServiceError> {
        let of_driver = |status| OrderQuery {
            customer: None,
            driver: Some(driver.user_id.clone()),
            status: Some(status),
            limit: DRIVER_WORK_LIMIT,
            after: None,
        };
        let (ready, carrying) = (
            of_driver(OrderStatus::ReadyForDelivery),
            of_driver(OrderStatus::OutForDelivery),
        );
        let (ready, carrying) =
            tokio::try_join!(self.store.orders(&ready), self.store.orders(&carrying))?;
        Ok(DriverWork {
            truncated: ready.next.is_some() || carrying.next.is_some(),
            ready_for_pickup: ready.orders,
            carrying: carrying.orders,
        })
    }

    /// Read, decide, compare-and-set; again if someone else wrote in between.
    /// `input` sees the order as read and may find there is nothing to do (`None`).
    async fn change(
        &self,
        viewer: &Viewer,
        action: Action,
        id: &OrderId,
        input: impl Fn(&Order) -> Option<SagaInput>,
    ) -> Result<Arc<Order>, ServiceError> {
        let order = self.load(viewer, action, id).await?;
        let decide = |order: &Order| {
            if !viewer.may(action, order) {
                return Err(ServiceError::NotFound);
            }
            let Some(input) = input(order) else {
                return Ok(None);
            };
            saga::decide(order, input, Utc::now())
                .map(Some)
                .map_err(|e| match e {
                    SagaRejection::Conflict(m) => ServiceError::Conflict(m),
                    SagaRejection::Stale => {
                        ServiceError::Conflict("the order changed meanwhile".into())
                    }
                })
        };
        let committed = commit_with_retry(self.store.as_ref(), &self.node, &order, decide).await?;
        announce(&self.bus, committed.events).await;
        if committed.next.is_some() {
            self.wake(id).await?;
        }
        Ok(committed.order)
    }

    async fn wake(&self, id: &OrderId) -> Result<(), ServiceError> {
        self.bus
            .send_to_order(OrderCommand::Wake {
                order_id: id.clone(),
            })
            .await?;
        Ok(())
    }
}

/// What [`commit_with_retry`] reads and writes: an order as stored, and the
/// compare-and-set write of a decision (refused with `VersionConflict` when the
/// stored order is no longer the one decided on).
#[async_trait::async_trait]
pub(crate) trait OrderWrites: Send + Sync {
    async fn current(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError>;
    async fn write(&self, order: &Arc<Order>, events: &[Arc<OrderEvent>])
    -> Result<(), StoreError>;
}

#[async_trait::async_trait]
impl<S: crate::store::Store + ?Sized> OrderWrites for S {
    async fn current(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError> {
        self.order(id).await
    }

    async fn write(
        &self,
        order: &Arc<Order>,
        events: &[Arc<OrderEvent>],
    ) -> Result<(), StoreError> {
        self.apply(order, events).await
    }
}

/// Another writer kept winning the compare-and-set race.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order {0} kept changing under us")]
pub(crate) struct KeptChanging(pub OrderId);

/// Decides on `order` and writes the decision with compare-and-set; when another
/// writer got there first, reads the order again and decides again, a few times at
/// most. The one way a change reaches an order: the order actors' step outcomes and
/// the HTTP commands (cancel, assign, delivery) alike. `decide` sees every version
/// read, so it re-checks whatever it depends on (who may act, the actor's lease).
/// Events are not announced here: the caller announces them once this returns.
/// The result is the decision written, or, when `decide` found nothing to do on the
/// order as it stands, that order with no events and no next step.
/// `order` is shared, not copied: the first decision is made on the caller's version,
/// and an order is read again only when another writer got there first.
pub(crate) async fn commit_with_retry<E>(
    store: &(impl OrderWrites + ?Sized),
    node: &str,
    order: &Arc<Order>,
    mut decide: impl FnMut(&Order) -> Result<Option<SagaDecision>, E>,
) -> Result<Committed, E>
where
    E: From<StoreError> + From<KeptChanging>,
{
    let mut current = Arc::clone(order);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some(decision) = decide(&current)? else {
            return Ok(Committed {
                order: current,
                events: Vec::new(),
                next: None,
            });
        };
        let committed = Committed::from(decision);
        match store.write(&committed.order, &committed.events).await {
            Ok(()) => {
                crate::observability::order_transitions(node, &committed.order, &committed.events);
                return Ok(committed);
            }
            Err(StoreError::VersionConflict { .. }) => {
                let id = current.order_id.clone();
                current = store.current(&id).await?.ok_or(StoreError::NotFound(id))?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(KeptChanging(current.order_id.clone()).into())
}

/// A [`SagaDecision`] as written: the order and its events shared from then on by
/// whoever holds them (the order's actor, a store that keeps recent orders in memory,
/// the bus and the WebSocket sessions it reaches), never copied.
pub(crate) struct Committed {
    pub(crate) order: Arc<Order>,
    pub(crate) events: Vec<Arc<OrderEvent>>,
    /// The call the order now waits on, if any.
    pub(crate) next: Option<Operation>,
}

impl From<SagaDecision> for Committed {
    fn from(decision: SagaDecision) -> Self {
        Self {
            order: Arc::new(decision.order),
            events: decision.events.into_iter().map(Arc::new).collect(),
            next: decision.next,
        }
    }
}

/// Best effort: a lost announcement is recovered by subscribers from the event log.
/// The events are handed to the bus without a copy.
pub(crate) async fn announce(bus: &SharedBus, events: Vec<Arc<OrderEvent>>) {
    for event in events {
        let shared = Arc::clone(&event);
        if let Err(e) = bus.publish_update(shared).await {
            tracing::warn!(order_id = %event.order_id, error = %e, "order update not announced");
        }
    }
}
