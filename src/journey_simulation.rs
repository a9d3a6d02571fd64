//! Deterministic simulation of the journey, the way FoundationDB and TigerBeetle test
//! theirs: many orders driven by the real order runner (`domain::runner`), the real
//! saga and the real commit-with-retry, through a simulated world (store, broker,
//! back-office systems, clock) whose every choice comes from one seeded generator.
//!
//! Faults: refusals, transient failures, lost requests and lost replies (the
//! watchdog), late and duplicated deliveries, store outages, cancels and driver
//! updates racing the runners (compare-and-set conflicts), node crashes (actors and
//! timers gone, unacknowledged deliveries redelivered, state rebuilt from what was
//! persisted) and shard moves (new epoch; the old owner's replies arrive late).
//! Invariants are checked as the world changes: each external effect at most once
//! per idempotency key, no transition out of a terminal state, a gap-free event
//! log; once faults stop and drivers deliver what is ready, every order is terminal,
//! every effect of a failed or cancelled order is undone (or its undo failure
//! recorded), and nothing of a delivered order is.
//!
//! A failure names its seed; `SWIFT_SIM_SEED=<seed>` replays it exactly, and
//! `SWIFT_SIM_ORDERS=<n>` runs a longer simulation.

use crate::bus::{StepReply, StepRequest};
use crate::domain::fixtures::{now, received, success};
use crate::domain::runner::{Effect, Event, Runner, RunnerPolicy, Timer};
use crate::domain::saga::{self, OperationOutcome, SagaInput, StepState, System};
use crate::domain::{Order, OrderEvent, OrderId, OrderStatus, UserId};
use crate::service::{KeptChanging, OrderWrites, commit_with_retry};
use crate::store::StoreError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARDS: u64 = 8;
/// Virtual microseconds.
type Micros = u64;

fn ms(n: u64) -> Micros {
    n * 1000
}

/// How long an actor rests before the router's idle check passivates it.
const PASSIVATE_AFTER: Duration = Duration::from_secs(5);

fn policy() -> Arc<RunnerPolicy> {
    Arc::new(RunnerPolicy {
        max_attempts: 5,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        watchdog: Duration::from_secs(2),
        outage_backoff_base: Duration::from_millis(100),
        outage_backoff_max: Duration::from_secs(1),
    })
}

/// An order as stored, with its event log (after the intake event).
type Stored = (Arc<Order>, Vec<Arc<OrderEvent>>);

/// The store: orders with their event logs, compare-and-set on the version, and
/// outage windows.
#[derive(Default)]
struct SimStore {
    orders: Mutex<BTreeMap<OrderId, Stored>>,
    down_until: Mutex<Micros>,
    now: Mutex<Micros>,
    /// Writes refused because another writer got there first.
    conflicts: Mutex<u64>,
    seed: u64,
}

impl SimStore {
    fn up(&self) -> Result<(), StoreError> {
        if *lock(&self.now) < *lock(&self.down_until) {
            return Err(StoreError::Unavailable("simulated outage".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl OrderWrites for SimStore {
    async fn current(&self, id: &OrderId) -> Result<Option<Arc<Order>>, StoreError> {
        self.up()?;
        Ok(lock(&self.orders).get(id).map(|(o, _)| Arc::clone(o)))
    }

    async fn write(
        &self,
        order: &Arc<Order>,
        events: &[Arc<OrderEvent>],
    ) -> Result<(), StoreError> {
        let store = self;
        store.up()?;
        let mut orders = lock(&store.orders);
        let seed = store.seed;
        let Some((stored, log)) = orders.get_mut(&order.order_id) else {
            return Err(StoreError::NotFound(order.order_id.clone()));
        };
        if stored.version + 1 != order.version {
            *lock(&store.conflicts) += 1;
            return Err(StoreError::VersionConflict {
                expected: stored.version,
            });
        }
        assert!(
            !stored.status.is_terminal(),
            "seed {seed}: {} written after it ended {}: now {}",
            order.order_id,
            stored.status,
            order.status
        );
        for (i, event) in events.iter().enumerate() {
            assert_eq!(
                event.seq,
                stored.seq + 1 + i as u64,
                "seed {seed}: a gap in the event log of {}",
                order.order_id
            );
        }
        assert_eq!(order.seq, stored.seq + events.len() as u64, "seed {seed}");
        *stored = Arc::clone(order);
        log.extend_from_slice(events);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap()
}

#[derive(Debug, thiserror::Error)]
enum SimError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KeptChanging(#[from] KeptChanging),
    #[error("rejected")]
    Rejected,
}

/// What the back-office systems did, per idempotency key.
#[derive(Default)]
struct Systems {
    /// Forward calls that took effect (reservations, routes), by key.
    effects: BTreeMap<String, OperationOutcome>,
    /// Keys answered with a refusal (the same answer every time).
    refused: BTreeSet<String>,
    /// Orders whose reservation / route was undone.
    undone: BTreeSet<(OrderId, &'static str)>,
}

enum Item {
    /// A broker delivery to an order's actor (at least once).
    Delivery {
        order_id: OrderId,
        event: Box<Event>,
    },
    /// A request on its way to, and handled by, a system.
    AtSystem(Box<StepRequest>),
    Timer {
        order_id: OrderId,
        timer: Timer,
        token: u64,
    },
    OutageOver {
        order_id: OrderId,
        token: u64,
    },
    /// The router hears that an actor rests and passivates it as though more rest
    /// than it keeps, if no message reached it since.
    Rested {
        order_id: OrderId,
        token: u64,
        received: u64,
    },
    Crash,
    MoveShard(u64),
    Cancel(OrderId),
    DriverUpdate(OrderId),
    StoreOutage,
}

struct Actor {
    runner: Runner,
    /// Deliveries not acknowledged yet.
    held: Vec<Event>,
    /// The pending timer's token (one slot, as in the actor).
    timer: Option<u64>,
    /// Messages routed to it, for the passivation handshake.
    routed: u64,
    incarnation: u64,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    /// The router's choices, apart so that they leave the faults' sequence as it is.
    router_rng: StdRng,
    now: Micros,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    items: BTreeMap<u64, Item>,
    next_id: u64,
    store: SimStore,
    systems: Systems,
    actors: BTreeMap<OrderId, Actor>,
    epochs: [u64; SHARDS as usize],
    /// Bumped on every crash: timers of an earlier incarnation never fire.
    incarnation: u64,
    faults: bool,
    steps: u64,
    /// How often each fault and race happened, so a run shows what it covered.
    seen: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            router_rng: StdRng::seed_from_u64(!seed),
            now: 0,
            queue: BinaryHeap::new(),
            items: BTreeMap::new(),
            next_id: 0,
            store: SimStore {
                seed,
                ..SimStore::default()
            },
            systems: Systems::default(),
            actors: BTreeMap::new(),
            epochs: [1; SHARDS as usize],
            incarnation: 0,
            faults: true,
            steps: 0,
            seen: BTreeMap::new(),
        }
    }

    fn at(&mut self, after: Micros, item: Item) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push(Reverse((self.now + after, id)));
        self.items.insert(id, item);
        id
    }

    /// The router's passivation check: the actor (of incarnation `token`) has seen
    /// every message routed to it.
    fn passivate(&mut self, order_id: &OrderId, token: u64, received: u64) {
        let Some(actor) = self.actors.get(order_id) else {
            return;
        };
        if token != actor.incarnation || actor.routed != received {
            return;
        }
        assert!(
            actor.held.is_empty(),
            "seed {}: passivated holding deliveries",
            self.seed
        );
        self.actors.remove(order_id);
    }

    fn saw(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faults && self.rng.random_bool(p)
    }

    fn latency(&mut self) -> Micros {
        let base = self.rng.random_range(ms(1)..ms(40));
        // Now and then a message is late: beyond the watchdog.
        if self.chance(0.01) {
            self.saw("late message");
            base + self.rng.random_range(ms(2_000)..ms(6_000))
        } else {
            base
        }
    }

    /// A broker delivery to an order's actor, after the network's latency.
    fn send_later(&mut self, order_id: OrderId, event: Event) {
        let after = self.latency();
        let event = Box::new(event);
        self.at(after, Item::Delivery { order_id, event });
    }

    fn shard(id: &OrderId) -> usize {
        let hash = id
            .as_str()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        (hash % SHARDS) as usize
    }

    /// Intake: the order is stored and its actor woken.
    fn place(&mut self, n: usize) {
        let order = received(&format!("ORD-SIM-{n:07}"));
        let id = order.order_id.clone();
        let log = vec![];
        lock(&self.store.orders).insert(id.clone(), (Arc::new(order), log));
        self.send_later(id.clone(), Event::Woken);
        if self.rng.random_bool(0.1) {
            let after = self.rng.random_range(0..ms(500));
            self.at(after, Item::Cancel(id));
        }
    }

    fn run(&mut self, orders: usize, live: usize) {
        let mut placed = 0;
        while placed < orders.min(live) {
            self.place(placed);
            placed += 1;
        }
        let faults_end = ms(1_000) + orders as u64 * ms(3);
        let mut next_fault = ms(200);
        while let Some(Reverse((due, id))) = self.queue.pop() {
            self.now = due.max(self.now);
            *lock(&self.store.now) = self.now;
            if self.faults && self.now >= faults_end {
                self.faults = false;
            }
            if self.faults && self.now >= next_fault {
                next_fault = self.now + self.rng.random_range(ms(50)..ms(400));
                let fault = match self.rng.random_range(0..10) {
                    0 => Item::Crash,
                    1..=3 => Item::MoveShard(self.rng.random_range(0..SHARDS)),
                    _ => Item::StoreOutage,
                };
                self.at(0, fault);
            }
            let Some(item) = self.items.remove(&id) else {
                continue;
            };
            self.steps += 1;
            self.handle(item);
            // Keep about `live` orders in flight.
            while placed < orders && self.actors.len() < live {
                self.place(placed);
                placed += 1;
            }
        }
        assert_eq!(placed, orders, "seed {}", self.seed);
    }

    fn handle(&mut self, item: Item) {
        match item {
            Item::Delivery { order_id, event } => {
                let event = *event;
                if !matches!(event, Event::Woken) && self.chance(0.02) {
                    // Redelivered after a channel hiccup.
                    self.saw("duplicated delivery");
                    self.send_later(order_id.clone(), event.clone());
                }
                self.deliver(&order_id, event);
            }
            Item::AtSystem(request) => self.at_system(*request),
            Item::Timer {
                order_id,
                timer,
                token,
            } => {
                let current = self
                    .actors
                    .get(&order_id)
                    .is_some_and(|a| a.timer == Some(token));
                if current {
                    if let Timer::Watchdog { .. } = timer {
                        self.saw("watchdog fired");
                    }
                    self.run_actor(&order_id, Event::TimerFired(timer));
                }
            }
            Item::Rested {
                order_id,
                token,
                received,
            } => self.passivate(&order_id, token, received),
            Item::OutageOver { order_id, token } => {
                let current = self
                    .actors
                    .get(&order_id)
                    .is_some_and(|a| a.incarnation == token);
                if current {
                    self.run_actor(&order_id, Event::OutageOver);
                }
            }
            Item::Crash => {
                // The node dies: actors and timers are gone; the broker redelivers what
                // was not acknowledged; the restarted node resumes every unfinished
                // order under new epochs.
                self.saw("node crash");
                self.incarnation += 1;
                for epoch in &mut self.epochs {
                    *epoch += 1;
                }
                let actors = std::mem::take(&mut self.actors);
                for (order_id, actor) in actors {
                    for event in actor.held {
                        self.send_later(order_id.clone(), event);
                    }
                }
                self.resume(None);
            }
            Item::MoveShard(shard) => {
                // Another node takes the shard: this node's actors of it are fenced
                // (they stop, acknowledging what they held), the new owner resumes.
                self.saw("shard move");
                self.epochs[shard as usize] += 1;
                self.actors
                    .retain(|id, _| Self::shard(id) != shard as usize);
                self.resume(Some(shard as usize));
            }
            Item::Cancel(order_id) => self.command(&order_id, SagaInput::Cancel),
            Item::DriverUpdate(order_id) => {
                let status = lock(&self.store.orders)[&order_id].0.status;
                let next = match status {
                    OrderStatus::ReadyForDelivery => OrderStatus::OutForDelivery,
                    OrderStatus::OutForDelivery => OrderStatus::Delivered,
                    _ => return,
                };
                let by = UserId::from_trusted("usr_driver");
                self.command(&order_id, SagaInput::Delivery { status: next, by });
                if next == OrderStatus::OutForDelivery {
                    let after = self.rng.random_range(ms(10)..ms(1_000));
                    self.at(after, Item::DriverUpdate(order_id));
                }
            }
            Item::StoreOutage => {
                self.saw("store outage");
                let until = self.now + self.rng.random_range(ms(20)..ms(600));
                *lock(&self.store.down_until) = until;
            }
        }
    }

    fn resume(&mut self, shard: Option<usize>) {
        let unfinished: Vec<OrderId> = lock(&self.store.orders)
            .values()
            .filter(|(o, _)| !o.status.is_terminal())
            .map(|(o, _)| o.order_id.clone())
            .filter(|id| shard.is_none_or(|s| Self::shard(id) == s))
            .collect();
        for order_id in unfinished {
            self.send_later(order_id, Event::Woken);
        }
    }

    /// An HTTP command (cancel, driver update) racing the runners.
    fn command(&mut self, order_id: &OrderId, input: SagaInput) {
        let store = &self.store;
        let Ok(Some(order)) = futures::executor::block_on(store.current(order_id)) else {
            return;
        };
        let decide = |order: &Order| {
            saga::decide(order, input.clone(), now())
                .map(Some)
                .map_err(|_| SimError::Rejected)
        };
        let committed =
            futures::executor::block_on(commit_with_retry(store, "sim", &order, decide));
        if let Ok(committed) = committed
            && committed.next.is_some()
        {
            self.send_later(order_id.clone(), Event::Woken);
        }
    }

    fn deliver(&mut self, order_id: &OrderId, event: Event) {
        let shard = Self::shard(order_id);
        let epoch = self.epochs[shard];
        let incarnation = self.incarnation;
        let actor = self
            .actors
            .entry(order_id.clone())
            .or_insert_with(|| Actor {
                runner: Runner::new(order_id.clone(), epoch, policy()),
                held: Vec::new(),
                timer: None,
                routed: 0,
                incarnation,
            });
        actor.routed += 1;
        actor.held.push(event.clone());
        if let Event::Replied { epoch: sent, .. } = event
            && sent != epoch
        {
            self.saw("reply to an earlier ownership");
        }
        self.run_actor(order_id, event);
    }

    /// Executes the runner's effects, as `actors/order.rs` does.
    fn run_actor(&mut self, order_id: &OrderId, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let Some(actor) = self.actors.get_mut(order_id) else {
                return;
            };
            let effects = actor.runner.handle(event);
            for effect in effects {
                next = self.execute(order_id, effect);
            }
        }
    }

    fn execute(&mut self, order_id: &OrderId, effect: Effect) -> Option<Event> {
        let store = &self.store;
        match effect {
            Effect::Load => Some(match futures::executor::block_on(store.current(order_id)) {
                Ok(order) => Event::Loaded(order),
                Err(_) => Event::Unavailable,
            }),
            Effect::Persist { operation, outcome } => {
                let order = self.actors[order_id].runner.order()?;
                let decide = |order: &Order| {
                    let input = SagaInput::Outcome(operation, outcome.clone());
                    Ok::<_, SimError>(saga::decide(order, input, now()).ok())
                };
                let committed =
                    futures::executor::block_on(commit_with_retry(store, "sim", order, decide));
                Some(match committed {
                    Ok(c) => Event::Persisted {
                        order: c.order,
                        events: c.events,
                    },
                    Err(SimError::Store(StoreError::Unavailable(_))) => Event::Unavailable,
                    Err(error) => Event::Failed(error.to_string()),
                })
            }
            Effect::Send(request) => {
                if self.chance(0.01) {
                    self.saw("bus unavailable");
                    return Some(Event::Unavailable);
                }
                let after = self.latency();
                if self.chance(0.02) {
                    self.saw("lost request");
                } else {
                    self.at(after, Item::AtSystem(request));
                }
                Some(Event::Sent)
            }
            Effect::StartTimer { timer, after } => {
                let token = self.next_id;
                self.actors.get_mut(order_id)?.timer = Some(token);
                let after = after.as_micros() as Micros;
                self.at(
                    after,
                    Item::Timer {
                        order_id: order_id.clone(),
                        timer,
                        token,
                    },
                );
                None
            }
            Effect::CancelTimer => {
                self.actors.get_mut(order_id)?.timer = None;
                None
            }
            Effect::RetryAfterOutage { after } => {
                let token = self.actors[order_id].incarnation;
                self.at(
                    after.as_micros() as Micros,
                    Item::OutageOver {
                        order_id: order_id.clone(),
                        token,
                    },
                );
                None
            }
            Effect::Acknowledge => {
                self.actors.get_mut(order_id)?.held.clear();
                None
            }
            // Some resting actors are passivated early (as when more rest than the
            // router keeps), a moment later; others at the router's idle check.
            Effect::Rest { received } => {
                let after = if self.router_rng.random_bool(0.3) {
                    self.router_rng.random_range(0..ms(50))
                } else {
                    PASSIVATE_AFTER.as_micros() as Micros
                };
                let token = self.actors[order_id].incarnation;
                let order_id = order_id.clone();
                self.at(
                    after,
                    Item::Rested {
                        order_id,
                        token,
                        received,
                    },
                );
                None
            }
            Effect::Stop { .. } => {
                self.actors.remove(order_id);
                None
            }
            Effect::Fail(_) => {
                self.saw("runner failed");
                // The supervisor restarts it: held deliveries go back to the broker.
                if let Some(actor) = self.actors.remove(order_id) {
                    for event in actor.held {
                        self.send_later(order_id.clone(), event);
                    }
                }
                None
            }
            Effect::Announce(_)
            | Effect::StepOver { .. }
            | Effect::Admit
            | Effect::LeaveAdmission
            | Effect::ProcessingOver => None,
        }
    }

    /// A system handles a request: idempotent by key, as the real ones are.
    fn at_system(&mut self, request: StepRequest) {
        let key = request.idempotency_key();
        let operation = request.operation;
        let reply = if self.chance(0.05) {
            self.saw("transient failure");
            StepReply::Transient {
                reason: "simulated outage".into(),
            }
        } else if operation.is_compensation() {
            let undone = (request.order_id.clone(), operation.system().as_str());
            self.systems.undone.insert(undone);
            StepReply::Settled {
                outcome: OperationOutcome::Undone,
            }
        } else if self
            .systems
            .undone
            .contains(&(request.order_id.clone(), operation.system().as_str()))
        {
            // A forward call arriving after its undo (it was late): the system
            // remembers the undo and refuses it, or the effect would leak.
            StepReply::Settled {
                outcome: OperationOutcome::Refused {
                    reason: "already cancelled".into(),
                },
            }
        } else if self.systems.refused.contains(&key) {
            StepReply::Settled {
                outcome: OperationOutcome::Refused {
                    reason: "refused".into(),
                },
            }
        } else if let Some(outcome) = self.systems.effects.get(&key) {
            StepReply::Settled {
                outcome: outcome.clone(),
            }
        } else if self.rng.random_bool(0.03) {
            self.systems.refused.insert(key);
            StepReply::Settled {
                outcome: OperationOutcome::Refused {
                    reason: "refused".into(),
                },
            }
        } else {
            let outcome = success(operation);
            // Customer validation only reads: no effect to count.
            if operation.system().spec().forward_has_effect {
                let previous = self.systems.effects.insert(key.clone(), outcome.clone());
                assert!(
                    previous.is_none(),
                    "seed {}: {key} took effect twice",
                    self.seed
                );
            }
            StepReply::Settled { outcome }
        };
        // A lost reply: the call may have taken effect, the runner never hears.
        if self.chance(0.02) {
            self.saw("lost reply");
            return;
        }
        let replied = Event::Replied {
            operation,
            attempt: request.attempt,
            epoch: request.epoch,
            reply,
        };
        self.send_later(request.order_id, replied);
    }

    /// Drivers deliver what is ready, until nothing is left to do.
    fn deliver_ready(&mut self) {
        loop {
            let ready: Vec<OrderId> = lock(&self.store.orders)
                .values()
                .filter(|(o, _)| {
                    matches!(
                        o.status,
                        OrderStatus::ReadyForDelivery | OrderStatus::OutForDelivery
                    )
                })
                .map(|(o, _)| o.order_id.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            for id in ready {
                self.at(0, Item::DriverUpdate(id));
            }
            self.run(0, 0);
        }
    }

    fn check_the_end(&self) {
        let seed = self.seed;
        let orders = lock(&self.store.orders);
        for (id, (order, log)) in orders.iter() {
            assert!(
                order.status.is_terminal(),
                "seed {seed}: {id} ended {} ({:?})",
                order.status,
                order.integration_status
            );
            let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
            let expected: Vec<u64> = (2..=order.seq).collect();
            assert_eq!(seqs, expected, "seed {seed}: event log of {id}");
            let effects = System::ALL
                .into_iter()
                .filter(|s| s.spec().forward_has_effect);
            for system in effects {
                let operation = system.spec().forward.0;
                let key = operation.idempotency_key(id);
                let effect = self.systems.effects.contains_key(&key);
                let undone = self.systems.undone.contains(&(id.clone(), system.as_str()));
                let state = order.integration_status.get(system);
                match order.status {
                    OrderStatus::Delivered => assert!(
                        effect && !undone,
                        "seed {seed}: delivered {id} lost its {system:?} effect"
                    ),
                    _ => assert!(
                        !effect || undone || state == StepState::Failed,
                        "seed {seed}: {id} ended {} with its {system:?} effect neither undone nor reported ({state:?})",
                        order.status
                    ),
                }
            }
        }
        assert!(self.actors.is_empty(), "seed {seed}: actors left behind");
    }
}

type Run = (u64, BTreeMap<String, usize>, BTreeMap<&'static str, u64>);

fn simulate(seed: u64, orders: usize) -> Run {
    let mut sim = Sim::new(seed);
    sim.run(orders, 200);
    sim.deliver_ready();
    sim.check_the_end();
    let mut ends = BTreeMap::new();
    for (order, _) in lock(&sim.store.orders).values() {
        *ends.entry(order.status.to_string()).or_default() += 1;
    }
    let conflicts = *lock(&sim.store.conflicts);
    sim.seen.insert("compare-and-set conflict", conflicts);
    (sim.steps, ends, sim.seen)
}

#[test]
fn the_journey_survives_random_faults_and_interleavings() {
    let orders = std::env::var("SWIFT_SIM_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_500);
    let seeds: Vec<u64> = match std::env::var("SWIFT_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SWIFT_SIM_SEED is a number")],
        Err(_) => (1..=4).collect(),
    };
    for seed in seeds {
        let (steps, ends, seen) = simulate(seed, orders);
        eprintln!("seed {seed}: {orders} orders, {steps} steps, ended {ends:?}; {seen:?}");
        assert!(ends.len() >= 3, "seed {seed}: too few endings: {ends:?}");
        assert!(seen.len() >= 12, "seed {seed}: faults too rare: {seen:?}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    assert_eq!(simulate(42, 200), simulate(42, 200));
}
