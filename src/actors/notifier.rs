//! The notifier: fans order updates out to WebSocket sessions (DESIGN section 7).
//!
//! Every order update of the cluster reaches this actor once per node: the update
//! bridge reads `Bus::order_updates`, which with RabbitMQ is this node's queue on
//! `events_exchange`, so a session sees an update whichever node made it. The
//! in-process bus publishes updates only while this node has a session open (see
//! `bus::Listeners`, which the sessions' registrations count).
//!
//! Each session registers an outbox, a bounded channel that the notifier fills with
//! `try_send` and never waits on. A full outbox means the session has stopped
//! reading; it is cut off (its `cut` token is cancelled) instead of slowing every
//! other session or growing memory. Ownership is checked twice: by the session when
//! it subscribes, and here on every delivery, so a bug in one place cannot leak
//! another customer's order.
//!
//! The notifier keeps no history. Whatever a session missed (before it subscribed,
//! while the bus lagged, while the client was reconnecting) it reads from the
//! order's event log.

use super::control::ActorKind;
use super::mailbox::Stamped;
use super::outbox::{self, Refused};
use super::telemetry::{self, ActorInfo, FamilySize, MailboxGauge, TelemetryMsg};
use crate::bus::Acker;
use crate::bus::{Delivery, Inbox, Listeners};
use crate::domain::{OrderEvent, OrderId, UserId};
use crate::service::Viewer;
use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) const NAME: &str = "notifier";
/// Messages waiting for the notifier before the update bridge stops taking more from
/// the bus: the bus buffers them (or, in-process, lags and sessions replay the gap
/// from the event log) instead of this mailbox growing without bound.
const MAX_BACKLOG: u64 = 65_536;
/// How often the update bridge looks again while the notifier is behind.
const BACKLOG_RECHECK: Duration = Duration::from_millis(5);

pub(crate) type SessionId = u64;

/// What a session follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topic {
    Order(OrderId),
    /// Every order the session's user may see: all of them for an admin, the user's
    /// own for anyone else.
    Everything,
}

/// One order update on its way to the sessions that receive it, shared by all of
/// them: whatever a session renders of it for the wire (the WebSocket layer's
/// frame, see `http::ws`) is rendered by the first one and kept here for the
/// others, so an update costs one rendering however many sessions follow it.
#[derive(Debug)]
pub(crate) struct Update {
    pub(crate) event: Arc<OrderEvent>,
    /// The rendering, once made (`None` if it failed).
    pub(crate) rendered: OnceLock<Option<Bytes>>,
}

impl Update {
    pub fn new(event: Arc<OrderEvent>) -> Self {
        Self {
            event,
            rendered: OnceLock::new(),
        }
    }
}

pub(crate) enum NotifierMsg {
    Open {
        session: SessionId,
        viewer: Viewer,
        outbox: outbox::Sender<Arc<Update>>,
        cut: CancellationToken,
    },
    Follow {
        session: SessionId,
        topic: Topic,
    },
    Unfollow {
        session: SessionId,
        topic: Topic,
    },
    Close {
        session: SessionId,
    },
    Publish(Arc<OrderEvent>),
}

/// How the rest of the node talks to the notifier. Every message is counted in the
/// mailbox gauge, so the SRE page shows how far behind the notifier is.
#[derive(Clone)]
pub(crate) struct Notifier {
    actor: ActorRef<Stamped<NotifierMsg>>,
    mailbox: MailboxGauge,
    next_session: Arc<AtomicU64>,
    /// Counts the open sessions, from before they follow anything to after they end.
    listeners: Listeners,
}

/// A session's place in the notifier. Dropping it unregisters the session, however
/// the session ends.
pub struct Registration {
    pub(crate) id: SessionId,
    notifier: Notifier,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.notifier.send(NotifierMsg::Close { session: self.id });
        self.notifier.listeners.leave();
    }
}

impl Notifier {
    fn new(
        actor: ActorRef<Stamped<NotifierMsg>>,
        mailbox: MailboxGauge,
        listeners: Listeners,
    ) -> Self {
        Self {
            actor,
            mailbox,
            next_session: Arc::new(AtomicU64::new(1)),
            listeners,
        }
    }

    fn send(&self, message: NotifierMsg) -> bool {
        let posted = self.mailbox.post();
        if self.actor.cast(Stamped { posted, message }).is_err() {
            self.mailbox.unpost();
            return false;
        }
        true
    }

    /// Hands an update to the notifier; false once the notifier is gone.
    pub(crate) fn publish(&self, event: Arc<OrderEvent>) -> bool {
        self.send(NotifierMsg::Publish(event))
    }

    /// Registers a session whose updates arrive on the returned receiver, at most
    /// `capacity` of them unread. `cut` is cancelled if the session falls further
    /// behind than that. `None` once the notifier is gone.
    pub fn open(
        &self,
        viewer: Viewer,
        capacity: usize,
        cut: CancellationToken,
    ) -> Option<(Registration, outbox::Receiver<Arc<Update>>)> {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (outbox, updates) = outbox::outbox(capacity);
        self.listeners.join();
        let opened = self.send(NotifierMsg::Open {
            session,
            viewer,
            outbox,
            cut,
        });
        if !opened {
            self.listeners.leave();
        }
        opened.then(|| {
            let registration = Registration {
                id: session,
                notifier: self.clone(),
            };
            (registration, updates)
        })
    }

    /// Starts delivering `topic` to the session. Updates published after this call
    /// returns are delivered, which is what makes replay-then-live gap-free: the
    /// session follows first and reads the event log second.
    pub(crate) fn follow(&self, session: SessionId, topic: Topic) -> bool {
        self.send(NotifierMsg::Follow { session, topic })
    }

    pub(crate) fn unfollow(&self, session: SessionId, topic: Topic) -> bool {
        self.send(NotifierMsg::Unfollow { session, topic })
    }

    /// Messages the notifier has not handled yet.
    pub(crate) fn backlog(&self) -> u64 {
        self.mailbox.depth()
    }
}

struct Entry {
    viewer: Viewer,
    outbox: outbox::Sender<Arc<Update>>,
    cut: CancellationToken,
    orders: Vec<OrderId>,
    everything: bool,
}

pub(crate) struct NotifierState {
    sessions: HashMap<SessionId, Entry>,
    by_order: HashMap<OrderId, Vec<SessionId>>,
    /// Admins following every order.
    everything: HashSet<SessionId>,
    /// Other users following all of their own orders.
    everything_of: HashMap<UserId, Vec<SessionId>>,
    mailbox: MailboxGauge,
    family: FamilySize,
}

pub(crate) struct NotifierArgs {
    pub(crate) telemetry: ActorRef<TelemetryMsg>,
    pub(crate) mailbox: MailboxGauge,
    pub(crate) parent: String,
    pub(crate) listeners: Listeners,
}

pub(crate) struct NotifierActor;

/// Spawns the notifier linked to `supervisor` and returns the handle to it.
pub(crate) async fn spawn_linked(
    args: NotifierArgs,
    supervisor: ractor::ActorCell,
) -> Result<Notifier, ractor::SpawnErr> {
    let (mailbox, listeners) = (args.mailbox.clone(), args.listeners.clone());
    let (actor, _) = Actor::spawn_linked(None, NotifierActor, args, supervisor).await?;
    Ok(Notifier::new(actor, mailbox, listeners))
}

impl Actor for NotifierActor {
    type Msg = Stamped<NotifierMsg>;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: NotifierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let family = FamilySize::default();
        telemetry::register(
            &args.telemetry,
            ActorInfo {
                name: NAME.into(),
                kind: ActorKind::Notifier,
                parent: Some(args.parent),
                mailbox: Some(args.mailbox.clone()),
                family: Some(family.clone()),
            },
        );
        Ok(NotifierState {
            sessions: HashMap::new(),
            by_order: HashMap::new(),
            everything: HashSet::new(),
            everything_of: HashMap::new(),
            mailbox: args.mailbox,
            family,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Stamped { posted, message } = message;
        state.mailbox.took(posted);
        match message {
            NotifierMsg::Open {
                session,
                viewer,
                outbox,
                cut,
            } => {
                let entry = Entry {
                    viewer,
                    outbox,
                    cut,
                    orders: Vec::new(),
                    everything: false,
                };
                if state.sessions.insert(session, entry).is_none() {
                    state.family.joined();
                }
                metrics::gauge!("swift_ws_sessions").increment(1.0);
            }
            NotifierMsg::Follow { session, topic } => state.follow(session, topic),
            NotifierMsg::Unfollow { session, topic } => state.unfollow(session, &topic),
            NotifierMsg::Close { session } => {
                state.remove(session);
            }
            NotifierMsg::Publish(event) => state.publish(event),
        }
        Ok(())
    }
}

impl NotifierState {
    fn follow(&mut self, session: SessionId, topic: Topic) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        match topic {
            Topic::Order(order_id) => {
                if !entry.orders.contains(&order_id) {
                    entry.orders.push(order_id.clone());
                    self.by_order.entry(order_id).or_default().push(session);
                }
            }
            Topic::Everything => {
                if entry.everything {
                    return;
                }
                entry.everything = true;
                match entry.viewer.customer_scope() {
                    None => {
                        self.everything.insert(session);
                    }
                    Some(own) => self
                        .everything_of
                        .entry(own.clone())
                        .or_default()
                        .push(session),
                }
            }
        }
    }

    fn unfollow(&mut self, session: SessionId, topic: &Topic) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        match topic {
            Topic::Order(order_id) => {
                let before = entry.orders.len();
                entry.orders.retain(|o| o != order_id);
                if entry.orders.len() != before {
                    unindex(&mut self.by_order, order_id, session);
                }
            }
            Topic::Everything => {
                if !std::mem::take(&mut entry.everything) {
                    return;
                }
                match entry.viewer.customer_scope().cloned() {
                    None => {
                        self.everything.remove(&session);
                    }
                    Some(own) => unindex(&mut self.everything_of, &own, session),
                }
            }
        }
    }

    fn remove(&mut self, session: SessionId) -> Option<Entry> {
        let entry = self.sessions.remove(&session)?;
        for order_id in &entry.orders {
            unindex(&mut self.by_order, order_id, session);
        }
        if entry.everything {
            match entry.viewer.customer_scope() {
                None => {
                    self.everything.remove(&session);
                }
                Some(own) => unindex(&mut self.everything_of, own, session),
            }
        }
        self.family.left();
        metrics::gauge!("swift_ws_sessions").decrement(1.0);
        Some(entry)
    }

    /// Sessions that should receive `event`, each once: those following the order,
    /// then those following everything that do not also follow the order.
    fn audience(&self, event: &OrderEvent) -> Vec<SessionId> {
        let mut audience: Vec<SessionId> = self
            .by_order
            .get(&event.order_id)
            .map(|ids| ids.to_vec())
            .unwrap_or_default();
        let followers_of_all = self.everything.iter().chain(
            self.everything_of
                .get(&event.customer_id)
                .into_iter()
                .flatten(),
        );
        for session in followers_of_all {
            let follows_order = self
                .sessions
                .get(session)
                .is_some_and(|e| e.orders.contains(&event.order_id));
            if !follows_order {
                audience.push(*session);
            }
        }
        audience
    }

    fn publish(&mut self, event: Arc<OrderEvent>) {
        let audience = self.audience(&event);
        if audience.is_empty() {
            return;
        }
        let update = Arc::new(Update::new(event));
        let mut delivered = 0u64;
        let mut cut_off = Vec::new();
        for session in audience {
            let Some(entry) = self.sessions.get(&session) else {
                continue;
            };
            // The second fence: subscriptions were checked when they were made.
            if !entry.viewer.may_see(&update.event.customer_id) {
                continue;
            }
            match entry.outbox.try_send(update.clone()) {
                Ok(()) => delivered += 1,
                Err(Refused::Full) => cut_off.push((session, true)),
                Err(Refused::Closed) => cut_off.push((session, false)),
            }
        }
        metrics::counter!("swift_ws_updates_sent_total").increment(delivered);
        for (session, too_slow) in cut_off {
            if let Some(entry) = self.remove(session)
                && too_slow
            {
                tracing::info!(session, "WebSocket session fell behind; cutting it off");
                metrics::counter!("swift_ws_sessions_cut_total").increment(1);
                entry.cut.cancel();
            }
        }
    }
}

fn unindex<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, Vec<SessionId>>,
    key: &K,
    session: SessionId,
) {
    if let Some(sessions) = index.get_mut(key) {
        sessions.retain(|s| *s != session);
        if sessions.is_empty() {
            index.remove(key);
        }
    }
}

/// Feeds every order update the bus carries to the notifier. Updates are
/// acknowledged as soon as the notifier has them: a lost notification costs nothing
/// lasting, since sessions read what they missed from the event log.
pub(crate) fn spawn_update_bridge(
    notifier: Notifier,
    bridge: MailboxGauge,
    mut inbox: Inbox<Arc<OrderEvent>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = inbox.next() => match next {
                    Some(delivery) => delivery,
                    None => {
                        tracing::warn!("the order update stream ended; live tracking stops");
                        return;
                    }
                },
            };
            while notifier.backlog() >= MAX_BACKLOG {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(BACKLOG_RECHECK) => {}
                }
            }
            let Delivery {
                message,
                ack,
                envelope,
            } = delivery;
            bridge.received(envelope.waited());
            if !notifier.publish(message) {
                tracing::warn!("notifier gone; the update bridge stops");
                return;
            }
            Acker::from(ack).ack().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;
    use crate::domain::fixtures::validated_event as event;

    fn viewer(user: &str, role: Role) -> Viewer {
        Viewer {
            user_id: UserId::from_trusted(user),
            role,
        }
    }

    async fn notifier() -> Notifier {
        let telemetry_args = telemetry::TelemetryArgs {
            node: "n1".into(),
            history: 10,
            metrics: None,
        };
        let (telemetry, _) = Actor::spawn(None, telemetry::Telemetry, telemetry_args)
            .await
            .unwrap();
        let args = NotifierArgs {
            telemetry,
            mailbox: MailboxGauge::new("notifier", NAME, true),
            parent: "root".into(),
            listeners: Listeners::default(),
        };
        let (mailbox, listeners) = (args.mailbox.clone(), args.listeners.clone());
        let (actor, _) = Actor::spawn(None, NotifierActor, args).await.unwrap();
        Notifier::new(actor, mailbox, listeners)
    }

    async fn next(updates: &mut outbox::Receiver<Arc<Update>>) -> Arc<Update> {
        tokio::time::timeout(Duration::from_secs(5), updates.recv())
            .await
            .expect("an update in time")
            .expect("the outbox is open")
    }

    /// Publishes a marker and returns what `updates` received up to it: everything
    /// the notifier handled before the marker.
    async fn until_marker(
        n: &Notifier,
        updates: &mut outbox::Receiver<Arc<Update>>,
        marker_customer: &str,
    ) -> Vec<(String, u64)> {
        assert!(n.publish(Arc::new(event("ORD-MARK", marker_customer, 1))));
        let mut seen = Vec::new();
        loop {
            let update = next(updates).await;
            if update.event.order_id.as_str() == "ORD-MARK" {
                return seen;
            }
            seen.push((update.event.order_id.as_str().to_owned(), update.event.seq));
        }
    }

    #[tokio::test]
    async fn followers_get_their_orders_once_and_never_anyone_elses() {
        let n = notifier().await;
        let admin = CancellationToken::new();
        let (admin_reg, mut admin_updates) = n
            .open(viewer("usr_admin", Role::Admin), 16, admin.clone())
            .unwrap();
        let (alice_reg, mut alice_updates) = n
            .open(
                viewer("usr_alice", Role::Client),
                16,
                CancellationToken::new(),
            )
            .unwrap();
        n.follow(admin_reg.id, Topic::Everything);
        n.follow(admin_reg.id, Topic::Order(OrderId::parse("ORD-B").unwrap()));
        n.follow(alice_reg.id, Topic::Everything);
        // A subscription to someone else's order that slipped past the session's
        // check still delivers nothing.
        n.follow(alice_reg.id, Topic::Order(OrderId::parse("ORD-B").unwrap()));

        n.publish(Arc::new(event("ORD-A", "usr_alice", 1)));
        n.publish(Arc::new(event("ORD-B", "usr_bob", 1)));
        n.publish(Arc::new(event("ORD-A", "usr_alice", 2)));
        let owned = |order: &str, seq| (order.to_owned(), seq);
        assert_eq!(
            until_marker(&n, &mut admin_updates, "usr_bob").await,
            [owned("ORD-A", 1), owned("ORD-B", 1), owned("ORD-A", 2)]
        );
        assert_eq!(
            until_marker(&n, &mut alice_updates, "usr_alice").await,
            [owned("ORD-A", 1), owned("ORD-A", 2)]
        );
        assert!(!admin.is_cancelled());
    }

    #[tokio::test]
    async fn a_session_whose_outbox_is_full_is_cut_off_and_others_keep_receiving() {
        let n = notifier().await;
        let slow_cut = CancellationToken::new();
        let (slow, _never_read) = n
            .open(viewer("usr_admin", Role::Admin), 2, slow_cut.clone())
            .unwrap();
        let (fast, mut fast_updates) = n
            .open(
                viewer("usr_admin2", Role::Admin),
                64,
                CancellationToken::new(),
            )
            .unwrap();
        n.follow(slow.id, Topic::Everything);
        n.follow(fast.id, Topic::Everything);
        for seq in 1..=10 {
            n.publish(Arc::new(event("ORD-A", "usr_alice", seq)));
        }
        for seq in 1..=10 {
            assert_eq!(next(&mut fast_updates).await.event.seq, seq);
        }
        assert!(slow_cut.is_cancelled());
    }

    #[tokio::test]
    async fn the_bus_hears_of_listeners_from_the_first_session_until_the_last_ends() {
        let n = notifier().await;
        assert!(n.listeners.none());
        let (first, _) = n
            .open(
                viewer("usr_admin", Role::Admin),
                16,
                CancellationToken::new(),
            )
            .unwrap();
        let (second, _) = n
            .open(
                viewer("usr_alice", Role::Client),
                16,
                CancellationToken::new(),
            )
            .unwrap();
        assert!(!n.listeners.none());
        drop(first);
        assert!(!n.listeners.none());
        drop(second);
        assert!(n.listeners.none());
    }

    #[tokio::test]
    async fn unfollowing_and_closing_stop_deliveries() {
        let n = notifier().await;
        let (admin, mut admin_updates) = n
            .open(
                viewer("usr_admin", Role::Admin),
                16,
                CancellationToken::new(),
            )
            .unwrap();
        let (alice, mut alice_updates) = n
            .open(
                viewer("usr_alice", Role::Client),
                16,
                CancellationToken::new(),
            )
            .unwrap();
        n.follow(admin.id, Topic::Everything);
        let order = Topic::Order(OrderId::parse("ORD-A").unwrap());
        n.follow(alice.id, order.clone());
        n.publish(Arc::new(event("ORD-A", "usr_alice", 1)));
        assert_eq!(next(&mut alice_updates).await.event.seq, 1);
        n.unfollow(alice.id, order);
        n.publish(Arc::new(event("ORD-A", "usr_alice", 2)));
        drop(alice);
        until_marker(&n, &mut admin_updates, "usr_admin").await;
        // Alice's outbox got nothing more, and closing dropped the notifier's sender.
        assert!(alice_updates.recv().await.is_none());
    }
}
