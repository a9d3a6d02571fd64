//! The connection to the broker and its supervisor.
//!
//! We reconnect ourselves rather than with lapin's auto-recovery: that gives up after
//! a fixed number of attempts (leaving a dead connection behind for good) and replays
//! consumers whose stream semantics across a recovery are lapin's, not ours. Here a
//! lost connection is replaced by a new session, forever, with capped backoff; the
//! topology is declared again, and every consumer starts over on the new session.
//!
//! The URL may list several brokers of one RabbitMQ cluster, separated by commas.
//! Every (re)connect tries them in turn, beginning after the one last used, so a
//! node whose broker died moves to a live one in its first reconnect round. While
//! no session is live, publishes fail at once instead of waiting for a reconnect:
//! callers (intake above all) then answer without a 10 s stall, and what they
//! publish is either retried by them or recovered from the store by the resume sweep.

use super::BusError;
use super::topology::{self, Names, Replication};
use crate::domain::backoff::{self, jittered};
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Confirm-mode channels per session: publishes from many tasks spread over them and
/// each awaits only its own confirm.
const PUBLISH_CHANNELS: usize = 4;
/// Heartbeat asked of the broker when the URL names none, so that a dead peer is
/// noticed in seconds, not in the broker's default minute.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// How often the supervisor looks at the connection's state besides its events.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(super) fn unavailable(context: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {error}"))
}

/// Runs `future` under the bus's time limit: a broker that stops answering must not
/// hang a caller (lapin has been seen to leave a publish pending with no error).
pub(super) async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = lapin::Result<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(what, error)),
        Err(_) => Err(BusError::Unavailable(format!(
            "{what}: no answer from the broker within {limit:?}"
        ))),
    }
}

/// The wait before reconnecting after `failures` failed tries (`failures + 1`
/// failures in a row, counting the loss itself), with jitter so that nodes do not
/// reconnect in step.
pub(super) fn backoff(failures: u32) -> Duration {
    jittered(ceiling(failures))
}

fn ceiling(failures: u32) -> Duration {
    backoff::exponential(failures.saturating_add(1), RECONNECT_BASE, RECONNECT_MAX)
}

/// One live connection with its publishing channels.
pub(super) struct Session {
    pub(crate) connection: Connection,
    publishers: Vec<RwLock<Channel>>,
    next_publisher: AtomicUsize,
    /// Serialises the replacement of a publishing channel the broker closed.
    repairing: tokio::sync::Mutex<()>,
}

impl Session {
    fn publisher(&self) -> (usize, Channel) {
        let slot = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        (slot, self.publisher_at(slot))
    }

    /// A channel-level error (not a lost connection) closes only that channel: open
    /// a fresh one in its slot so later publishes succeed.
    async fn repair(&self, slot: usize, limit: Duration) {
        let _guard = self.repairing.lock().await;
        let current = self.publisher_at(slot);
        if current.status().connected() || !self.connection.status().connected() {
            return;
        }
        self.reopen(slot, limit).await;
    }

    /// RabbitMQ (3.10) can go on refusing everything one channel publishes to a
    /// quorum queue long after the queue has a new leader: in our broker-kill test a
    /// channel whose first publish to a queue fell in the leader election nacked every
    /// later publish to it for about a minute (net_ticktime + 5 s, the broker's own
    /// timeout for registering a publisher), while other channels were accepted. So
    /// a refused publish retires its channel (unless another refusal already did):
    /// with this, that test sees at most three refusals per run instead of minutes of
    /// them, and no dead letters.
    async fn retire(&self, slot: usize, refused: &Channel, limit: Duration) {
        let _guard = self.repairing.lock().await;
        if self.publisher_at(slot).id() != refused.id() || !self.connection.status().connected() {
            return;
        }
        if self.reopen(slot, limit).await {
            let refused = refused.clone();
            tokio::spawn(async move {
                let _ = within(
                    limit,
                    "closing a refused channel",
                    refused.close(200, "refused".into()),
                )
                .await;
            });
        }
    }

    /// Opens a fresh publishing channel into `slot`; false if none could be opened.
    async fn reopen(&self, slot: usize, limit: Duration) -> bool {
        match open_publisher(&self.connection, limit).await {
            Ok(channel) => {
                match self.publishers[slot].write() {
                    Ok(mut guard) => *guard = channel,
                    Err(poisoned) => *poisoned.into_inner() = channel,
                }
                true
            }
            Err(error) => {
                tracing::warn!(%error, "could not reopen a publishing channel");
                false
            }
        }
    }

    fn publisher_at(&self, slot: usize) -> Channel {
        match self.publishers[slot].read() {
            Ok(channel) => channel.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn open_publisher(connection: &Connection, limit: Duration) -> Result<Channel, BusError> {
    let channel = within(limit, "opening a channel", connection.create_channel()).await?;
    within(
        limit,
        "enabling publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(channel)
}

/// What a publish asks of the broker.
pub(super) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    /// Refuse the publish when no queue takes it (instead of the broker dropping it).
    pub(crate) mandatory: bool,
}

/// The brokers of a comma-separated URL list, each with our default heartbeat.
pub(super) fn parse_brokers(urls: &str) -> Result<Vec<AMQPUri>, BusError> {
    let brokers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            let mut uri: AMQPUri = url
                .parse()
                .map_err(|e: String| BusError::Unavailable(format!("bus.rabbitmq_url: {e}")))?;
            if uri.query.heartbeat.is_none() {
                uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
            }
            Ok(uri)
        })
        .collect::<Result<Vec<_>, BusError>>()?;
    if brokers.is_empty() {
        return Err(BusError::Unavailable(
            "bus.rabbitmq_url names no broker".into(),
        ));
    }
    Ok(brokers)
}

/// Where a broker is, for logs (never the credentials).
fn address(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

pub(super) struct Link {
    brokers: Vec<AMQPUri>,
    /// The broker the next connect tries first: the one after the last one used.
    next_broker: AtomicUsize,
    connection_name: String,
    names: Arc<Names>,
    replication: Replication,
    pub(crate) limit: Duration,
    sessions: watch::Sender<Option<Arc<Session>>>,
    pub(crate) shutdown: CancellationToken,
}

impl Link {
    /// Connects once (so a wrong URL or a missing broker is reported at start-up), then
    /// keeps the connection alive in the background until `shutdown`.
    pub async fn start(
        url: &str,
        connection_name: String,
        names: Arc<Names>,
        replication: Replication,
        limit: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let link = Arc::new(Self {
            brokers: parse_brokers(url)?,
            next_broker: AtomicUsize::new(0),
            connection_name,
            names,
            replication,
            limit,
            sessions: watch::channel(None).0,
            shutdown,
        });
        let session = link.open_session().await?;
        link.sessions.send_replace(Some(session.clone()));
        tokio::spawn(link.clone().supervise(session));
        Ok(link)
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.sessions
            .borrow()
            .as_ref()
            .is_some_and(|s| s.connection.status().connected())
    }

    /// The live session, waiting for a reconnect if there is none. Callers bound the
    /// wait with their own time limit.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, BusError> {
        let mut sessions = self.sessions.subscribe();
        let wait = sessions.wait_for(|s| s.is_some());
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(BusError::Unavailable("the bus is shut down".into())),
            session = wait => match session {
                Ok(session) => session
                    .clone()
                    .ok_or_else(|| BusError::Unavailable("no broker connection".into())),
                Err(_) => Err(BusError::Unavailable("the bus is shut down".into())),
            },
        }
    }

    /// The live session, or an error at once when there is none (reconnecting).
    pub(crate) fn live_session(&self) -> Result<Arc<Session>, BusError> {
        self.sessions
            .borrow()
            .clone()
            .ok_or_else(|| BusError::Unavailable("no broker connection (reconnecting)".into()))
    }

    /// Publishes and waits for the broker's confirm: `Ok` means the message is on
    /// disk in every queue it was routed to. Fails at once while no broker is
    /// connected.
    pub(crate) async fn publish(&self, message: Outgoing<'_>) -> Result<(), BusError> {
        let session = self.live_session()?;
        let attempt = async {
            let (slot, channel) = session.publisher();
            let options = BasicPublishOptions {
                mandatory: message.mandatory,
                immediate: false,
            };
            let sent = channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    options,
                    message.body,
                    message.properties,
                )
                .await;
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(error) => {
                    session.repair(slot, self.limit).await;
                    return Err(unavailable("publishing", error));
                }
            };
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => Err(BusError::Rejected(format!(
                    "no queue takes routing key {:?} on exchange {:?}: {}",
                    message.routing_key, message.exchange, returned.reply_text
                ))),
                Ok(Confirmation::Nack(_)) => {
                    session.retire(slot, &channel, self.limit).await;
                    Err(BusError::Rejected(format!(
                        "the broker refused the message for {:?}",
                        message.routing_key
                    )))
                }
                Ok(Confirmation::NotRequested) => Err(BusError::Unavailable(
                    "the publishing channel is not in confirm mode".into(),
                )),
                Err(error) => {
                    session.repair(slot, self.limit).await;
                    Err(unavailable("awaiting the publish confirm", error))
                }
            }
        };
        match tokio::time::timeout(self.limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Unavailable(format!(
                "publish to {:?} not confirmed within {:?}",
                message.routing_key, self.limit
            ))),
        }
    }

    /// Tries every broker once, beginning with `next_broker`; the first that takes
    /// the connection and the topology wins.
    async fn open_session(&self) -> Result<Arc<Session>, BusError> {
        let first = self.next_broker.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.brokers.len() {
            let index = (first + offset) % self.brokers.len();
            let broker = &self.brokers[index];
            match self.open_session_on(broker).await {
                Ok(session) => {
                    self.next_broker
                        .store((index + 1) % self.brokers.len(), Ordering::Relaxed);
                    tracing::info!(broker = %address(broker), "connected to RabbitMQ");
                    return Ok(session);
                }
                Err(error) => {
                    if self.brokers.len() > 1 {
                        tracing::warn!(broker = %address(broker), %error, "broker unavailable; trying the next");
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| BusError::Unavailable("no broker configured".into())))
    }

    async fn open_session_on(&self, broker: &AMQPUri) -> Result<Arc<Session>, BusError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let connection = within(
            self.limit,
            "connecting to RabbitMQ",
            Connection::connect_uri(broker.clone(), properties),
        )
        .await?;
        match self.prepare(&connection).await {
            Ok(publishers) => Ok(Arc::new(Session {
                connection,
                publishers,
                next_publisher: AtomicUsize::new(0),
                repairing: tokio::sync::Mutex::new(()),
            })),
            Err(error) => {
                // Do not leave a half-set-up connection open on the broker.
                let _ = within(self.limit, "closing", connection.close(200, "OK".into())).await;
                Err(error)
            }
        }
    }

    /// Declares the topology and opens the publishing channels.
    async fn prepare(&self, connection: &Connection) -> Result<Vec<RwLock<Channel>>, BusError> {
        topology::declare(connection, &self.names, self.replication, self.limit).await?;
        let mut publishers = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            publishers.push(RwLock::new(open_publisher(connection, self.limit).await?));
        }
        Ok(publishers)
    }

    async fn supervise(self: Arc<Self>, mut session: Arc<Session>) {
        loop {
            self.until_broken(&session).await;
            self.sessions.send_replace(None);
            // Closing a dead connection fails at once; a live one (shutdown) gets a
            // moment to say goodbye so the broker requeues our unacked deliveries.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                session.connection.close(200, "OK".into()),
            )
            .await;
            if self.shutdown.is_cancelled() {
                return;
            }
            tracing::warn!("lost the connection to RabbitMQ; reconnecting");
            session = match self.reconnect().await {
                Some(session) => session,
                None => return,
            };
            self.sessions.send_replace(Some(session.clone()));
        }
    }

    /// Returns when the session's connection fails or the bus shuts down.
    async fn until_broken(&self, session: &Session) {
        let mut events = session.connection.events_listener();
        let mut ticks = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                event = events.next() => {
                    if let Some(Event::Error(error)) = event {
                        tracing::warn!(%error, "RabbitMQ connection error");
                        return;
                    }
                }
                _ = ticks.tick() => {
                    if !session.connection.status().connected() {
                        return;
                    }
                }
            }
        }
    }

    async fn reconnect(&self) -> Option<Arc<Session>> {
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff(failures)) => {}
            }
            match self.open_session().await {
                Ok(session) => return Some(session),
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "reconnecting to RabbitMQ failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for failures in 0..40 {
            let delay = backoff(failures);
            let ceiling = ceiling(failures);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{failures}: {delay:?}"
            );
        }
        assert_eq!(ceiling(0), RECONNECT_BASE);
        assert_eq!(ceiling(1), RECONNECT_BASE * 2);
        assert_eq!(ceiling(30), RECONNECT_MAX);
        assert!(backoff(30) >= RECONNECT_MAX / 2);
    }
}
