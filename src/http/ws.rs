//! `GET /ws`: live order tracking over WebSocket (DESIGN section 7).
//!
//! The token comes as `?token=<jwt>` (browsers cannot set headers on a WebSocket)
//! or as `Authorization: Bearer <jwt>`, and is checked before the upgrade: without a
//! valid one the answer is a plain 401. Then JSON text frames:
//!
//! ```text
//! client -> server
//!   {"type":"subscribe","orderId":"ORD-...","since":3}    since is optional
//!   {"type":"subscribe","orderId":"*"}                    every order the caller may see
//!   {"type":"unsubscribe","orderId":"ORD-..."}
//! server -> client
//!   {"type":"subscribed","orderId","status","seq"}        (no status and seq for "*")
//!   {"type":"unsubscribed","orderId"}
//!   {"type":"order-update","orderId","status","message","seq","timestamp","data"}
//!   {"type":"error","code","message","orderId"?}
//! ```
//!
//! Following one order is gap-free. With `since`, every update after that sequence
//! number is replayed from the event log, then live updates follow; without it, the
//! order's latest update (its current state) comes first. The session follows the
//! order in the notifier *before* it reads the log, and then sends each update only
//! if its `seq` is exactly one more than the last one sent: anything older is a
//! duplicate and is dropped, anything newer means updates were missed (a lagging
//! bus, updates of two writers announced out of order) and the gap is read from
//! the log first. `"*"` is a live feed (an admin's dashboard): no replay.
//!
//! Another customer's order is answered exactly like an order that does not exist.
//! A bad frame gets an error frame and the session goes on. The server pings every
//! `websocket.ping_interval_ms` and drops a session that stays silent for
//! `websocket.pong_timeout_ms` after a ping; a session that does not keep up with its
//! updates is cut off with close code 1008, and resumes after reconnecting with
//! `since`.

use super::ApiState;
use super::error::ApiError;
use super::extract::authenticate;
use crate::actors::notifier::{self, Notifier, Registration, Topic, Update};
use crate::config::WebSocketSettings;
use crate::domain::{Order, OrderId};
use crate::service::Viewer;
use crate::store::SharedStore;
use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
    rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Client frames are small commands; anything larger is refused by the codec.
const MAX_CLIENT_FRAME: usize = 4096;
/// Kept small: an idle session should cost a few kilobytes, and client frames are
/// tiny. Larger frames grow the buffer while they are read.
const READ_BUFFER: usize = 1024;
/// A client that accepts nothing for this long is not keeping up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Closing is a courtesy; a peer that does not take the close frame is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events read from the log per store call while replaying.
const REPLAY_PAGE: usize = 256;
/// Longest client-supplied order id echoed back in an error frame.
const MAX_ECHOED_ID: usize = 64;

/// Close codes (RFC 6455 section 7.4.1).
const GOING_AWAY: u16 = 1001;
/// The node is restarting or draining: reconnect (to any node) and resume.
const SERVICE_RESTART: u16 = 1012;
const POLICY_VIOLATION: u16 = 1008;
const INTERNAL_ERROR: u16 = 1011;

/// Kernel send buffer of each connection (Linux doubles it for bookkeeping).
/// Enough for any API answer on a LAN; small enough that a WebSocket client that
/// stops reading fills it within a few hundred updates, so that its outbox fills and
/// the notifier cuts it off, instead of the kernel absorbing megabytes for it.
const SOCKET_SEND_BUFFER: usize = 64 * 1024;

/// Applied to every accepted HTTP connection (a WebSocket is an upgraded one): no
/// Nagle delay, so an update leaves as soon as it is written, and a bounded send
/// buffer (see [`SOCKET_SEND_BUFFER`]). Failures only cost those two properties.
pub fn tune_connection(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
    }
    if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SOCKET_SEND_BUFFER) {
        tracing::debug!(error = %e, "cannot bound the send buffer of a connection");
    }
}

/// What the WebSocket endpoint needs from the running node.
#[derive(Clone)]
pub struct Tracking {
    pub notifier: Notifier,
    /// Cancelled when the node drains or shuts down; open sessions then close with
    /// 1012 (service restart).
    pub shutdown: CancellationToken,
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates, then upgrades. Both failures are ordinary JSON errors, since no
/// WebSocket exists yet to carry an error frame.
pub async fn handler(
    State(state): State<ApiState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let from_query = query.ok().and_then(|Query(q)| q.token);
    let Some(token) = from_query.as_deref().or_else(|| bearer(&headers)) else {
        return ApiError::Unauthorized(
            "a token is required: ?token=<jwt> or an Authorization: Bearer header".into(),
        )
        .into_response();
    };
    let caller = match authenticate(&state.tokens, token) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::BadRequest(format!("a WebSocket upgrade is required: {rejection}"))
                .into_response();
        }
    };
    let context = SessionContext {
        viewer: caller.viewer(),
        store: state.app.store.clone(),
        tracking: state.app.tracking.clone(),
        limits: Arc::new(state.app.settings.websocket.clone()),
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| run(socket, context))
}

struct SessionContext {
    viewer: Viewer,
    store: SharedStore,
    tracking: Tracking,
    limits: Arc<WebSocketSettings>,
}

/// Why a session ended, and so how it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client closed, or the connection broke: nothing left to say.
    ClientGone,
    /// No answer to a ping in time.
    Silent,
    /// Did not keep up with its updates.
    FellBehind,
    ShuttingDown,
    /// Missed updates could not be read from the event log.
    ReplayFailed,
}

impl Ending {
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::ClientGone => return None,
            Self::Silent => (GOING_AWAY, "no answer to ping"),
            Self::FellBehind => (
                POLICY_VIOLATION,
                "too slow: fell behind its updates; reconnect and subscribe with since",
            ),
            Self::ShuttingDown => (SERVICE_RESTART, "node shutting down; reconnect with since"),
            Self::ReplayFailed => (
                INTERNAL_ERROR,
                "missed updates cannot be read now; reconnect with since",
            ),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

struct Followed {
    order_id: OrderId,
    /// Sequence number of the last update sent for this order.
    last: u64,
}

struct Session {
    socket: WebSocket,
    registration: Registration,
    viewer: Viewer,
    store: SharedStore,
    notifier: Notifier,
    limits: Arc<WebSocketSettings>,
    /// Cancelled by the notifier when the session falls behind, or with the node.
    cut: CancellationToken,
    shutdown: CancellationToken,
    followed: Vec<Followed>,
    everything: bool,
}

async fn run(socket: WebSocket, context: SessionContext) {
    let SessionContext {
        viewer,
        store,
        tracking,
        limits,
    } = context;
    let cut = tracking.shutdown.child_token();
    let Some((registration, updates)) =
        tracking
            .notifier
            .open(viewer.clone(), limits.session_buffer, cut.clone())
    else {
        close(socket, Ending::ShuttingDown).await;
        return;
    };
    let mut session = Session {
        socket,
        registration,
        viewer,
        store,
        notifier: tracking.notifier,
        limits,
        cut,
        shutdown: tracking.shutdown,
        followed: Vec::new(),
        everything: false,
    };
    let ending = session.serve(updates).await;
    tracing::debug!(
        session = session.registration.id,
        ?ending,
        "WebSocket session ended"
    );
    // Unregister before the (possibly slow) close.
    let Session {
        socket,
        registration,
        ..
    } = session;
    drop(registration);
    close(socket, ending).await;
}

async fn close(mut socket: WebSocket, ending: Ending) {
    if let Some(frame) = ending.close_frame() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
}

fn error_frame(code: &str, message: &str, order_id: Option<&str>) -> Value {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(order_id) = order_id.filter(|id| id.len() <= MAX_ECHOED_ID) {
        frame["orderId"] = json!(order_id);
    }
    frame
}

impl Session {
    async fn serve(&mut self, mut updates: mpsc::Receiver<Arc<Update>>) -> Ending {
        let ping_interval = Duration::from_millis(self.limits.ping_interval_ms);
        let pong_timeout = Duration::from_millis(self.limits.pong_timeout_ms);
        let heartbeat = tokio::time::sleep(ping_interval);
        tokio::pin!(heartbeat);
        let mut awaiting_pong = false;
        loop {
            // Not biased: a steady stream of updates must not keep the session from
            // reading the client's pongs.
            let step = tokio::select! {
                _ = self.cut.cancelled() => Err(self.cut_reason()),
                update = updates.recv() => match update {
                    Some(update) => self.forward(&update).await,
                    // The notifier let go of the session without cutting it: it is gone.
                    None => Err(Ending::ShuttingDown),
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(message)) => {
                        if awaiting_pong {
                            awaiting_pong = false;
                            heartbeat.as_mut().reset(Instant::now() + ping_interval);
                        }
                        self.on_message(message).await
                    }
                    Some(Err(_)) | None => Err(Ending::ClientGone),
                },
                () = &mut heartbeat => {
                    if awaiting_pong {
                        Err(Ending::Silent)
                    } else {
                        awaiting_pong = true;
                        heartbeat.as_mut().reset(Instant::now() + pong_timeout);
                        self.send(Message::Ping(Bytes::new())).await
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    fn cut_reason(&self) -> Ending {
        if self.shutdown.is_cancelled() {
            Ending::ShuttingDown
        } else {
            Ending::FellBehind
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), Ending> {
        tokio::select! {
            biased;
            _ = self.cut.cancelled() => Err(self.cut_reason()),
            sent = tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Ending::ClientGone),
                Err(_) => Err(Ending::FellBehind),
            },
        }
    }

    async fn send_json(&mut self, frame: &Value) -> Result<(), Ending> {
        self.send(Message::Text(frame.to_string().into())).await
    }

    async fn error(
        &mut self,
        code: &str,
        message: &str,
        order_id: Option<&str>,
    ) -> Result<(), Ending> {
        self.send_json(&error_frame(code, message, order_id)).await
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        match message {
            Message::Text(text) => self.on_command(text.as_str()).await,
            Message::Binary(_) => {
                self.error(
                    "BAD_REQUEST",
                    "binary frames are not understood; send JSON text",
                    None,
                )
                .await
            }
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(Ending::ClientGone),
        }
    }

    async fn on_command(&mut self, text: &str) -> Result<(), Ending> {
        let Ok(command) = serde_json::from_str::<Value>(text) else {
            return self
                .error(
                    "BAD_REQUEST",
                    "frames must be JSON such as {\"type\":\"subscribe\",\"orderId\":\"...\"}",
                    None,
                )
                .await;
        };
        let kind = command.get("type").and_then(Value::as_str);
        let Some(order_id) = command.get("orderId").and_then(Value::as_str) else {
            return match kind {
                Some("subscribe" | "unsubscribe") => {
                    self.error(
                        "BAD_REQUEST",
                        "orderId is required (an order id or \"*\")",
                        None,
                    )
                    .await
                }
                _ => self.unknown_type().await,
            };
        };
        match kind {
            Some("subscribe") => {
                let since = match command.get("since") {
                    None | Some(Value::Null) => None,
                    Some(since) => match since.as_u64() {
                        Some(since) => Some(since),
                        None => {
                            return self
                                .error(
                                    "BAD_REQUEST",
                                    "since must be a non-negative integer (a sequence number)",
                                    Some(order_id),
                                )
                                .await;
                        }
                    },
                };
                self.subscribe(order_id, since).await
            }
            Some("unsubscribe") => self.unsubscribe(order_id).await,
            _ => self.unknown_type().await,
        }
    }

    async fn unknown_type(&mut self) -> Result<(), Ending> {
        self.error(
            "BAD_REQUEST",
            "type must be \"subscribe\" or \"unsubscribe\"",
            None,
        )
        .await
    }

    /// The same answer for an order that does not exist and for someone else's.
    async fn not_found(&mut self, raw_id: &str) -> Result<(), Ending> {
        self.error("NOT_FOUND", "order not found", Some(raw_id))
            .await
    }

    async fn subscribe(&mut self, raw_id: &str, since: Option<u64>) -> Result<(), Ending> {
        if raw_id == "*" {
            if since.is_some() {
                return self
                    .error(
                        "BAD_REQUEST",
                        "since applies to one order; \"*\" is a live feed",
                        Some(raw_id),
                    )
                    .await;
            }
            if !self.everything {
                self.everything = true;
                self.notifier
                    .follow(self.registration.id, Topic::Everything);
            }
            return self
                .send_json(&json!({"type": "subscribed", "orderId": "*"}))
                .await;
        }
        let Some(order_id) = OrderId::parse(raw_id) else {
            return self.not_found(raw_id).await;
        };
        let already = self.followed.iter().position(|f| f.order_id == order_id);
        if already.is_none() && self.followed.len() >= self.limits.max_subscriptions {
            let message = format!(
                "a session follows at most {} orders; unsubscribe from one first",
                self.limits.max_subscriptions
            );
            return self
                .error("TOO_MANY_SUBSCRIPTIONS", &message, Some(raw_id))
                .await;
        }
        let order = match self.load(&order_id).await {
            Ok(Some(order)) => order,
            Ok(None) => return self.not_found(raw_id).await,
            Err(()) => {
                return self
                    .error(
                        "SERVICE_UNAVAILABLE",
                        "the order cannot be read now; try again",
                        Some(raw_id),
                    )
                    .await;
            }
        };
        // Follow first, read the log second: an update published after the log was
        // read is then certain to arrive live.
        let start = since.unwrap_or_else(|| order.seq.saturating_sub(1));
        match already {
            Some(index) => self.followed[index].last = start,
            None => {
                self.notifier
                    .follow(self.registration.id, Topic::Order(order_id.clone()));
                self.followed.push(Followed {
                    order_id: order_id.clone(),
                    last: start,
                });
            }
        }
        self.send_json(&json!({
            "type": "subscribed",
            "orderId": order.order_id,
            "status": order.status,
            "seq": order.seq,
        }))
        .await?;
        if let Err(replay) = self.catch_up(&order_id, None).await {
            return match replay {
                Replay::Ended(ending) => Err(ending),
                Replay::StoreFailed => {
                    self.forget(&order_id);
                    self.error(
                        "SERVICE_UNAVAILABLE",
                        "the order's updates cannot be read now; subscribe again",
                        Some(raw_id),
                    )
                    .await
                }
            };
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, raw_id: &str) -> Result<(), Ending> {
        if raw_id == "*" {
            if std::mem::take(&mut self.everything) {
                self.notifier
                    .unfollow(self.registration.id, Topic::Everything);
            }
        } else if let Some(order_id) = OrderId::parse(raw_id) {
            self.forget(&order_id);
        }
        self.send_json(&json!({"type": "unsubscribed", "orderId": raw_id}))
            .await
    }

    fn forget(&mut self, order_id: &OrderId) {
        let before = self.followed.len();
        self.followed.retain(|f| f.order_id != *order_id);
        if self.followed.len() != before {
            self.notifier
                .unfollow(self.registration.id, Topic::Order(order_id.clone()));
        }
    }

    /// The order if it exists and the viewer may see it. (`&mut self`: a shared
    /// reference to the socket would make the future not `Send`.)
    async fn load(&mut self, order_id: &OrderId) -> Result<Option<Order>, ()> {
        match tokio::time::timeout(STORE_TIMEOUT, self.store.order(order_id)).await {
            Ok(Ok(order)) => Ok(order.filter(|o| notifier::may_see(&self.viewer, &o.customer_id))),
            Ok(Err(e)) => {
                tracing::warn!(%order_id, error = %e, "cannot read an order for a subscription");
                Err(())
            }
            Err(_) => {
                tracing::warn!(%order_id, "reading an order for a subscription timed out");
                Err(())
            }
        }
    }

    fn last_sent(&self, order_id: &OrderId) -> Option<u64> {
        self.followed
            .iter()
            .find(|f| f.order_id == *order_id)
            .map(|f| f.last)
    }

    fn mark_sent(&mut self, order_id: &OrderId, seq: u64) {
        if let Some(followed) = self.followed.iter_mut().find(|f| f.order_id == *order_id) {
            followed.last = seq;
        }
    }

    async fn forward(&mut self, update: &Update) -> Result<(), Ending> {
        let Some(last) = self.last_sent(&update.order_id) else {
            // Not followed on its own: it came through "*" (or the order was just
            // unsubscribed, and the notifier did not know yet).
            if self.everything {
                return self.send(Message::Text(update.frame.clone())).await;
            }
            return Ok(());
        };
        if update.seq <= last {
            return Ok(());
        }
        if update.seq > last + 1 {
            return match self.catch_up(&update.order_id, Some(update.seq)).await {
                Ok(()) => Ok(()),
                Err(Replay::Ended(ending)) => Err(ending),
                Err(Replay::StoreFailed) => Err(Ending::ReplayFailed),
            };
        }
        self.send(Message::Text(update.frame.clone())).await?;
        self.mark_sent(&update.order_id, update.seq);
        Ok(())
    }

    /// Sends the order's logged updates after the last one sent, up to at least
    /// `through` if given (everything logged otherwise).
    async fn catch_up(&mut self, order_id: &OrderId, through: Option<u64>) -> Result<(), Replay> {
        loop {
            let Some(last) = self.last_sent(order_id) else {
                return Ok(());
            };
            if through.is_some_and(|through| last >= through) {
                return Ok(());
            }
            let events = match tokio::time::timeout(
                STORE_TIMEOUT,
                self.store.events(order_id, last, REPLAY_PAGE),
            )
            .await
            {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    tracing::warn!(%order_id, error = %e, "cannot read missed order updates");
                    return Err(Replay::StoreFailed);
                }
                Err(_) => {
                    tracing::warn!(%order_id, "reading missed order updates timed out");
                    return Err(Replay::StoreFailed);
                }
            };
            let page_was_full = events.len() == REPLAY_PAGE;
            let mut sent = last;
            for event in events {
                if event.seq != sent + 1 {
                    // The log itself has a hole: never paper over it.
                    tracing::error!(%order_id, expected = sent + 1, found = event.seq, "event log out of sequence");
                    return Err(Replay::StoreFailed);
                }
                let update = Update::of(&event).map_err(|_| Replay::StoreFailed)?;
                self.send(Message::Text(update.frame))
                    .await
                    .map_err(Replay::Ended)?;
                sent = event.seq;
                self.mark_sent(order_id, sent);
            }
            let short_of_target = through.is_some_and(|through| sent < through);
            if !page_was_full {
                // The log has been read to its end. An update announced but not in the
                // log would mean the store lost it; the client must start over.
                return if short_of_target {
                    Err(Replay::StoreFailed)
                } else {
                    Ok(())
                };
            }
        }
    }
}

enum Replay {
    Ended(Ending),
    StoreFailed,
}
