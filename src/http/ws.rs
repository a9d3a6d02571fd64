//! `GET /ws`: live order tracking over WebSocket (DESIGN section 7).
//!
//! The token comes as `?token=<jwt>` (browsers cannot set headers on a WebSocket)
//! or as `Authorization: Bearer <jwt>`, and is checked before the upgrade: without a
//! valid one the answer is a plain 401. Then JSON text frames:
//!
//! ```text
//! client -> server
//!   {"type":"subscribe","orderId":"ORD-...","since":3}    since is optional
//!   {"type":"subscribe","orderId":"*","since":"<cursor>"} every order the caller may see
//!   {"type":"unsubscribe","orderId":"ORD-..."}
//!   {"type":"renew","token":"<a fresh access token>"}   before the current one expires
//! server -> client
//!   {"type":"subscribed","orderId","status","seq"}        (no status and seq for "*")
//!   {"type":"unsubscribed","orderId"}
//!   {"type":"renewed","expiresAt"}
//!   {"type":"order-update","orderId","status","message","seq","timestamp","cursor","data"}
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
//! the log first.
//!
//! `"*"` follows every order the caller may see (a customer's own, all for an
//! admin) on one subscription. With `since` (the `cursor` of the last update the
//! caller received), the updates of those orders from a little before that cursor
//! ([`REPLAY_OVERLAP`], to cover updates of different orders delivered out of
//! timestamp order) are replayed from the event log in timestamp order, then live
//! updates follow, each order's without duplicates or gaps on this session. An update
//! received just before the disconnect may come again: `(orderId, seq)` identifies it.
//!
//! Another customer's order is answered exactly like an order that does not exist.
//! A bad frame gets an error frame and the session goes on. The server pings every
//! `websocket.ping_interval_ms` and drops a session that stays silent for
//! `websocket.pong_timeout_ms` after a ping; a session that does not keep up with its
//! updates is cut off with close code 1008, and resumes after reconnecting with
//! `since`.
//!
//! A session lives as long as its access token: when the token expires the session
//! is closed (1008, "token expired") unless the client sent a fresh token of the same
//! account with `renew`. A browser page's `Origin` must be the node's own or one of
//! `websocket.allowed_origins` (clients that send none are not browsers and are not
//! checked); an account holds at most `websocket.max_sessions_per_user` sessions on
//! a node; a frame over 4 KiB is answered with close 1009.

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, authenticate, request_token};
use crate::actors::notifier::{Notifier, Registration, SessionId, Topic, Update};
use crate::actors::outbox;
use crate::config::Settings;
use crate::domain::{Order, OrderEvent, OrderId, OrderStatus, UserId};
use crate::service::OrderService;
use crate::service::Viewer;
use axum::extract::State;
use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
    rejection::WebSocketUpgradeRejection,
};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Client frames are small commands; anything larger is refused by the codec.
const MAX_CLIENT_FRAME: usize = 4096;
/// Kept small: an idle session should cost a few kilobytes, and client frames are
/// tiny. Larger frames grow the buffer while they are read.
const READ_BUFFER: usize = 128;
/// A client that accepts nothing for this long is not keeping up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Closing is a courtesy; a peer that does not take the close frame is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events read from the log per store call while replaying.
const REPLAY_PAGE: usize = 256;
/// Longest client-supplied order id echoed back in an error frame.
const MAX_ECHOED_ID: usize = 64;
/// How far before its cursor a `"*"` replay starts.
pub(crate) const REPLAY_OVERLAP: Duration = Duration::from_secs(5);
/// Orders read from the store per call while looking for a `"*"` replay.
const REPLAY_ORDERS_PAGE: usize = 100;
/// Most updates one `"*"` replay sends; a caller that missed more follows its
/// orders one by one, or lists them over HTTP.
const MAX_EVERYTHING_REPLAY: usize = 50_000;

/// Close codes (RFC 6455 section 7.4.1).
const GOING_AWAY: u16 = 1001;
/// The node is restarting or draining: reconnect (to any node) and resume.
const SERVICE_RESTART: u16 = 1012;
const POLICY_VIOLATION: u16 = 1008;
const MESSAGE_TOO_BIG: u16 = 1009;
const INTERNAL_ERROR: u16 = 1011;

/// Kernel send buffer of each connection (Linux doubles it for bookkeeping).
/// Enough for any API answer on a LAN; small enough that a WebSocket client that
/// stops reading fills it within a few hundred updates, so that its outbox fills and
/// the notifier cuts it off, instead of the kernel absorbing megabytes for it.
const SOCKET_SEND_BUFFER: usize = 64 * 1024;

/// Applied to every accepted HTTP connection (a WebSocket is an upgraded one): no
/// Nagle delay, so an update leaves as soon as it is written, and a bounded send
/// buffer (see [`SOCKET_SEND_BUFFER`]). Failures only cost those two properties.
pub(crate) fn tune_connection(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
    }
    if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(SOCKET_SEND_BUFFER) {
        tracing::debug!(error = %e, "cannot bound the send buffer of a connection");
    }
}

/// What the WebSocket endpoint needs from the running node.
#[derive(Clone)]
pub(crate) struct Tracking {
    pub(crate) notifier: Notifier,
    /// Cancelled when the node drains or shuts down; open sessions then close with
    /// 1012 (service restart).
    pub(crate) shutdown: CancellationToken,
}

/// Whether a browser page from `Origin` may open a session: no Origin (not a
/// browser), the node's own origin (same host and port as the request's `Host`), or
/// one of the configured ones.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// An account's place among its open sessions on this node; given back on drop.
struct SessionSlot {
    user: UserId,
    open: Arc<DashMap<UserId, usize>>,
}

impl SessionSlot {
    fn take(open: &Arc<DashMap<UserId, usize>>, user: &UserId, max: usize) -> Option<Self> {
        let mut count = open.entry(user.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(Self {
            user: user.clone(),
            open: open.clone(),
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.user, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// The `order-update` frame: the seed's `orderId`, `status` and `message` (seed 000
/// section 8.4), the event's own fields (`customerData`, `route`, ...) under `data`,
/// and the `seq` that replay and de-duplication rest on.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    order_id: &'a OrderId,
    status: OrderStatus,
    message: &'a str,
    seq: u64,
    timestamp: DateTime<Utc>,
    /// Where a session following `"*"` resumes after a reconnect (`since`).
    cursor: String,
    data: &'a Value,
}

/// The position of an update in a customer's stream of updates across orders: the
/// milliseconds of its timestamp, as an opaque string.
fn cursor_of(timestamp: DateTime<Utc>) -> String {
    timestamp.timestamp_millis().to_string()
}

/// Renders one logged update as its `order-update` frame.
fn update_frame(event: &OrderEvent) -> Result<Utf8Bytes, serde_json::Error> {
    serde_json::to_string(&UpdateFrame {
        kind: "order-update",
        order_id: &event.order_id,
        status: event.status,
        message: &event.message,
        seq: event.seq,
        timestamp: event.timestamp,
        cursor: cursor_of(event.timestamp),
        data: &event.data,
    })
    .map(Utf8Bytes::from)
}

/// The frame of a live update, rendered by the first session that sends it and
/// shared with every other session that receives it.
fn shared_frame(update: &Update) -> Option<Utf8Bytes> {
    let rendered = update.rendered.get_or_init(|| match update_frame(&update.event) {
        Ok(frame) => Some(Bytes::copy_from_slice(frame.as_bytes())),
        Err(e) => {
            tracing::error!(order_id = %update.event.order_id, error = %e, "cannot render an order update");
            None
        }
    });
    Utf8Bytes::try_from(rendered.clone()?).ok()
}

/// Checks the origin and authenticates, then upgrades. Failures are ordinary JSON
/// errors, since no WebSocket exists yet to carry an error frame.
pub(crate) async fn handler(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    known: Option<axum::Extension<Caller>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let settings = &state.app.settings.websocket;
    if !origin_allowed(&headers, &settings.allowed_origins) {
        tracing::warn!(origin = ?headers.get(ORIGIN), "WebSocket refused: foreign Origin");
        return ApiError::Forbidden("this Origin may not open WebSocket sessions".into())
            .into_response();
    }
    let Some(token) = request_token(&headers, &uri) else {
        return ApiError::Unauthorized(
            "a token is required: ?token=<jwt> or an Authorization: Bearer header".into(),
        )
        .into_response();
    };
    let caller = match known {
        Some(axum::Extension(caller)) => caller,
        None => match authenticate(&state.sessions, &token).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
    };
    let Some(slot) = SessionSlot::take(
        &state.ws_sessions,
        &caller.user_id,
        settings.max_sessions_per_user,
    ) else {
        return ApiError::RateLimited {
            retry_after_secs: 5,
        }
        .into_response();
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
        expires_at: caller.expires_at,
        sessions: state.sessions.clone(),
        slot,
        orders: state.app.orders.clone(),
        tracking: state.app.tracking.clone(),
        settings: state.app.settings.clone(),
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
    expires_at: DateTime<Utc>,
    sessions: Arc<crate::auth::Sessions>,
    slot: SessionSlot,
    orders: OrderService,
    tracking: Tracking,
    /// The node's settings, shared (`websocket` is what a session reads).
    settings: Arc<Settings>,
}

/// Why a session ended, and so how it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The connection broke: nothing left to say.
    ClientGone,
    /// The client sent a close frame: the echo tungstenite queued goes out.
    ClientClosed,
    /// No answer to a ping in time.
    Silent,
    /// Did not keep up with its updates.
    FellBehind,
    ShuttingDown,
    /// Missed updates could not be read from the event log.
    ReplayFailed,
    /// The access token expired and was not renewed.
    TokenExpired,
    /// A frame over the size limit.
    TooBig,
}

impl Ending {
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::ClientGone | Self::ClientClosed => return None,
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
            Self::TokenExpired => (
                POLICY_VIOLATION,
                "token expired; send renew before it does, or reconnect with a fresh token",
            ),
            Self::TooBig => (MESSAGE_TOO_BIG, "frames are limited to 4096 bytes"),
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
    /// The notifier's id of the session.
    id: SessionId,
    /// The session's registration with the notifier and its place among its
    /// account's sessions, given back (taken) before the closing handshake.
    place: Option<(Registration, SessionSlot)>,
    updates: outbox::Receiver<Arc<Update>>,
    viewer: Viewer,
    orders: OrderService,
    notifier: Notifier,
    /// The node's settings, shared (`websocket` is what a session reads).
    settings: Arc<Settings>,
    /// Cancelled by the notifier when the session falls behind, or with the node.
    cut: CancellationToken,
    shutdown: CancellationToken,
    followed: Vec<Followed>,
    everything: bool,
    expires_at: DateTime<Utc>,
    sessions: Arc<crate::auth::Sessions>,
    /// Last seq sent through `"*"` for each order a `"*"` replay touched, so the
    /// live updates that follow the replay come without duplicates or gaps.
    everything_sent: std::collections::HashMap<OrderId, u64>,
}

/// A session from the upgrade to the close.
///
/// Not an `async fn` of the socket and the context: a future keeps every value it
/// was called with for as long as it lives, so the socket and everything the session
/// took from the context would be held twice for the session's whole life. Built
/// here, the session is the only thing the future holds (and works on by reference,
/// for the same reason).
fn run(socket: WebSocket, context: SessionContext) -> impl Future<Output = ()> + Send {
    let mut opened = Session::open(socket, context);
    async move {
        match &mut opened {
            Ok(session) => session.live().await,
            Err(socket) => close(socket, Ending::ShuttingDown).await,
        }
    }
}

async fn close(socket: &mut WebSocket, ending: Ending) {
    if let Some(frame) = ending.close_frame() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    } else if ending == Ending::ClientClosed {
        // tungstenite answers a client's close frame with its echo, but only writes
        // it on the next flush: without this, the client sees an abnormal close (1006).
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures::SinkExt::flush(socket)).await;
    }
}

/// A `"*"` cursor: the string the server handed out, or the same as a number.
fn parse_cursor(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => text.trim().parse().ok(),
        other => other.as_i64(),
    }
    .filter(|ms| *ms >= 0)
}

fn error_frame(code: &str, message: &str, order_id: Option<&str>) -> Value {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(order_id) = order_id.filter(|id| id.len() <= MAX_ECHOED_ID) {
        frame["orderId"] = json!(order_id);
    }
    frame
}

impl Session {
    /// Registers the session with the notifier; gives the socket back if the
    /// notifier is gone (the node is shutting down).
    fn open(socket: WebSocket, context: SessionContext) -> Result<Self, Box<WebSocket>> {
        let SessionContext {
            viewer,
            expires_at,
            sessions,
            slot,
            orders,
            tracking,
            settings,
        } = context;
        let cut = tracking.shutdown.child_token();
        let Some((registration, updates)) = tracking.notifier.open(
            viewer.clone(),
            settings.websocket.session_buffer,
            cut.clone(),
        ) else {
            return Err(Box::new(socket));
        };
        Ok(Self {
            socket,
            id: registration.id,
            place: Some((registration, slot)),
            updates,
            viewer,
            orders,
            notifier: tracking.notifier,
            settings,
            cut,
            shutdown: tracking.shutdown,
            followed: Vec::new(),
            everything: false,
            expires_at,
            sessions,
            everything_sent: std::collections::HashMap::new(),
        })
    }

    async fn live(&mut self) {
        let ending = self.serve().await;
        tracing::debug!(session = self.id, ?ending, "WebSocket session ended");
        // Unregister before the (possibly slow) close.
        self.place = None;
        close(&mut self.socket, ending).await;
    }

    async fn serve(&mut self) -> Ending {
        let ping_interval = Duration::from_millis(self.settings.websocket.ping_interval_ms);
        let pong_timeout = Duration::from_millis(self.settings.websocket.pong_timeout_ms);
        let heartbeat = tokio::time::sleep(ping_interval);
        tokio::pin!(heartbeat);
        let expiry = tokio::time::sleep(self.until_expiry());
        tokio::pin!(expiry);
        let mut renewed_until = self.expires_at;
        let mut awaiting_pong = false;
        loop {
            // Not biased: a steady stream of updates must not keep the session from
            // reading the client's pongs.
            let step = tokio::select! {
                _ = self.cut.cancelled() => Err(self.cut_reason()),
                update = self.updates.recv() => match update {
                    // Every await below is boxed: the task of a session is as large
                    // as its largest await state, held for as long as the session
                    // lives, and most sessions are idle most of the time. A box per
                    // frame is far cheaper than the bytes every idle session would
                    // hold for it.
                    Some(update) => Box::pin(self.forward(&update)).await,
                    // The notifier let go of the session without cutting it: it is gone.
                    None => Err(Ending::ShuttingDown),
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(message)) => {
                        if awaiting_pong {
                            awaiting_pong = false;
                            heartbeat.as_mut().reset(Instant::now() + ping_interval);
                        }
                        Box::pin(self.on_message(message)).await
                    }
                    Some(Err(e)) if is_capacity_error(&e) => Err(Ending::TooBig),
                    Some(Err(_)) | None => Err(Ending::ClientGone),
                },
                () = &mut expiry => Err(Ending::TokenExpired),
                () = &mut heartbeat => {
                    if awaiting_pong {
                        Err(Ending::Silent)
                    } else {
                        awaiting_pong = true;
                        heartbeat.as_mut().reset(Instant::now() + pong_timeout);
                        Box::pin(self.send(Message::Ping(Bytes::new()))).await
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
            if self.expires_at != renewed_until {
                renewed_until = self.expires_at;
                expiry.as_mut().reset(Instant::now() + self.until_expiry());
            }
        }
    }

    fn until_expiry(&self) -> Duration {
        (self.expires_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    /// `renew`: a fresh access token of the same account moves the session's end.
    async fn renew(&mut self, token: Option<&str>) -> Result<(), Ending> {
        let Some(token) = token else {
            return self.error("BAD_REQUEST", "renew needs a token", None).await;
        };
        match authenticate(&self.sessions, token).await {
            Ok(caller) if caller.user_id == self.viewer.user_id => {
                self.expires_at = self.expires_at.max(caller.expires_at);
                let frame = json!({"type": "renewed", "expiresAt": self.expires_at});
                self.send_json(&frame).await
            }
            Ok(_) => {
                self.error("FORBIDDEN", "the token belongs to another account", None)
                    .await
            }
            Err(_) => {
                self.error("UNAUTHORIZED", "invalid or expired token", None)
                    .await
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

    /// Sends a live update (see `shared_frame`).
    async fn send_update(&mut self, update: &Update) -> Result<(), Ending> {
        let frame = shared_frame(update).ok_or(Ending::ReplayFailed)?;
        self.send(Message::Text(frame)).await
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
            Message::Close(_) => Err(Ending::ClientClosed),
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
        if kind == Some("renew") {
            return self
                .renew(command.get("token").and_then(Value::as_str))
                .await;
        }
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
            Some("subscribe") if order_id == "*" => {
                let since = match command.get("since") {
                    None | Some(Value::Null) => None,
                    Some(since) => match parse_cursor(since) {
                        Some(since) => Some(since),
                        None => {
                            return self
                                .error(
                                    "BAD_REQUEST",
                                    "since for \"*\" must be the cursor of an update",
                                    Some(order_id),
                                )
                                .await;
                        }
                    },
                };
                self.subscribe_everything(since).await
            }
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
            "type must be \"subscribe\", \"unsubscribe\" or \"renew\"",
            None,
        )
        .await
    }

    /// The same answer for an order that does not exist and for someone else's.
    async fn not_found(&mut self, raw_id: &str) -> Result<(), Ending> {
        self.error("NOT_FOUND", "order not found", Some(raw_id))
            .await
    }

    /// Follows every order the viewer may see; with `since` (a cursor, in ms), first
    /// replays what was logged from [`REPLAY_OVERLAP`] before it.
    async fn subscribe_everything(&mut self, since: Option<i64>) -> Result<(), Ending> {
        // Follow first, read the log second, as for one order.
        if !self.everything {
            self.everything = true;
            self.notifier.follow(self.id, Topic::Everything);
        }
        self.send_json(&json!({"type": "subscribed", "orderId": "*"}))
            .await?;
        let Some(since) = since else {
            return Ok(());
        };
        let overlap = i64::try_from(REPLAY_OVERLAP.as_millis()).unwrap_or(i64::MAX);
        let from = chrono::DateTime::from_timestamp_millis(since.saturating_sub(overlap))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let events = match self.logged_since(from).await {
            Ok(events) => events,
            Err(message) => {
                return self.error("SERVICE_UNAVAILABLE", &message, Some("*")).await;
            }
        };
        for event in events {
            if self
                .everything_sent
                .get(&event.order_id)
                .is_some_and(|sent| *sent >= event.seq)
            {
                continue;
            }
            let frame = update_frame(&event).map_err(|_| Ending::ReplayFailed)?;
            self.send(Message::Text(frame)).await?;
            self.everything_sent
                .insert(event.order_id.clone(), event.seq);
        }
        Ok(())
    }

    /// The logged updates since `from` of every order the viewer may see, in
    /// timestamp order. An order unchanged since `from` has none, so only the
    /// others' logs are read.
    async fn logged_since(
        &mut self,
        from: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Arc<crate::domain::OrderEvent>>, String> {
        let unavailable = || "the missed updates cannot be read now; subscribe again".to_owned();
        // What the notifier lets through "*": the orders the viewer may see.
        let mut query = crate::store::OrderQuery {
            customer: None,
            driver: None,
            status: None,
            limit: REPLAY_ORDERS_PAGE,
            after: None,
        };
        let mut events = Vec::new();
        loop {
            let page =
                tokio::time::timeout(STORE_TIMEOUT, self.orders.list(&self.viewer, query.clone()))
                    .await
                    .map_err(|_| unavailable())?
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot list orders for a replay");
                        unavailable()
                    })?;
            for order in page.orders.iter().filter(|o| o.updated_at >= from) {
                let mut after = 0;
                loop {
                    let logged = tokio::time::timeout(
                        STORE_TIMEOUT,
                        self.orders
                            .updates_after(&order.order_id, after, REPLAY_PAGE),
                    )
                    .await
                    .map_err(|_| unavailable())?
                    .map_err(|_| unavailable())?;
                    let full = logged.len() == REPLAY_PAGE;
                    after = logged.last().map_or(after, |e| e.seq);
                    events.extend(logged.into_iter().filter(|e| e.timestamp >= from));
                    if events.len() > MAX_EVERYTHING_REPLAY {
                        return Err(format!(
                            "more than {MAX_EVERYTHING_REPLAY} updates were missed; follow orders one by one with since"
                        ));
                    }
                    if !full {
                        break;
                    }
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        events.sort_by(|a, b| {
            (a.timestamp, &a.order_id, a.seq).cmp(&(b.timestamp, &b.order_id, b.seq))
        });
        Ok(events)
    }

    async fn subscribe(&mut self, raw_id: &str, since: Option<u64>) -> Result<(), Ending> {
        let Some(order_id) = OrderId::parse(raw_id) else {
            return self.not_found(raw_id).await;
        };
        let already = self.followed.iter().position(|f| f.order_id == order_id);
        if already.is_none() && self.followed.len() >= self.settings.websocket.max_subscriptions {
            let message = format!(
                "a session follows at most {} orders; unsubscribe from one first",
                self.settings.websocket.max_subscriptions
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
                    .follow(self.id, Topic::Order(order_id.clone()));
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
                self.notifier.unfollow(self.id, Topic::Everything);
            }
            self.everything_sent.clear();
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
                .unfollow(self.id, Topic::Order(order_id.clone()));
        }
    }

    /// The order if it exists and the viewer may see it. (`&mut self`: a shared
    /// reference to the socket would make the future not `Send`.)
    async fn load(&mut self, order_id: &OrderId) -> Result<Option<Arc<Order>>, ()> {
        match tokio::time::timeout(
            STORE_TIMEOUT,
            self.orders.find_visible(&self.viewer, order_id),
        )
        .await
        {
            Ok(Ok(order)) => Ok(order),
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
        let Some(last) = self.last_sent(&update.event.order_id) else {
            // Not followed on its own: it came through "*" (or the order was just
            // unsubscribed, and the notifier did not know yet).
            if self.everything {
                return self.forward_everything(update).await;
            }
            return Ok(());
        };
        if update.event.seq <= last {
            return Ok(());
        }
        if update.event.seq > last + 1 {
            return match Box::pin(self.catch_up(&update.event.order_id, Some(update.event.seq)))
                .await
            {
                Ok(()) => Ok(()),
                Err(Replay::Ended(ending)) => Err(ending),
                Err(Replay::StoreFailed) => Err(Ending::ReplayFailed),
            };
        }
        self.send_update(update).await?;
        self.mark_sent(&update.event.order_id, update.event.seq);
        Ok(())
    }

    /// An update that came through `"*"`: for an order a replay touched, duplicates
    /// are dropped and a gap is read from the log first.
    async fn forward_everything(&mut self, update: &Update) -> Result<(), Ending> {
        let Some(&sent) = self.everything_sent.get(&update.event.order_id) else {
            return self.send_update(update).await;
        };
        if update.event.seq <= sent {
            return Ok(());
        }
        if sent + 1 < update.event.seq {
            Box::pin(self.fill_everything_gap(update, sent)).await?;
        }
        self.send_update(update).await?;
        self.everything_sent
            .insert(update.event.order_id.clone(), update.event.seq);
        Ok(())
    }

    /// Sends the logged updates of `update`'s order between `sent` and `update`
    /// (a gap in what came through `"*"`).
    async fn fill_everything_gap(&mut self, update: &Update, sent: u64) -> Result<(), Ending> {
        let mut sent = sent;
        while sent + 1 < update.event.seq {
            let missed = tokio::time::timeout(
                STORE_TIMEOUT,
                self.orders.updates_after(
                    &update.event.order_id,
                    sent,
                    (update.event.seq - sent - 1).min(REPLAY_PAGE as u64) as usize,
                ),
            )
            .await
            .map_err(|_| Ending::ReplayFailed)?
            .map_err(|_| Ending::ReplayFailed)?;
            let Some(last) = missed.last().map(|e| e.seq) else {
                return Err(Ending::ReplayFailed);
            };
            for event in missed.iter().filter(|e| e.seq < update.event.seq) {
                let frame = update_frame(event).map_err(|_| Ending::ReplayFailed)?;
                self.send(Message::Text(frame)).await?;
            }
            sent = last.min(update.event.seq - 1);
        }
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
                self.orders.updates_after(order_id, last, REPLAY_PAGE),
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
                let frame = update_frame(&event).map_err(|_| Replay::StoreFailed)?;
                self.send(Message::Text(frame))
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

/// A frame over the size limit (tungstenite's capacity error, inside axum's).
fn is_capacity_error(error: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut cause = error.source();
    while let Some(e) = cause {
        if matches!(
            e.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
            Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
        ) {
            return true;
        }
        cause = e.source();
    }
    false
}

enum Replay {
    Ended(Ending),
    StoreFailed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::validated_event as event;

    #[test]
    fn update_frames_carry_the_seed_fields_and_the_sequence_number() {
        let rendered = update_frame(&event("ORD-1", "usr_a", 2)).unwrap();
        let frame: Value = serde_json::from_str(rendered.as_str()).unwrap();
        assert_eq!(frame["type"], "order-update");
        assert_eq!(frame["orderId"], "ORD-1");
        assert_eq!(frame["status"], "CMS_VALIDATED");
        assert_eq!(frame["message"], "Customer validated successfully");
        assert_eq!(frame["seq"], 2);
        assert_eq!(frame["data"]["customerData"]["tier"], "gold");
        assert!(frame["timestamp"].as_str().is_some());
    }

    #[test]
    fn a_live_update_is_rendered_once_for_every_session() {
        let update = Update::new(Arc::new(event("ORD-1", "usr_a", 3)));
        let first = shared_frame(&update).unwrap();
        assert!(update.rendered.get().is_some());
        assert_eq!(shared_frame(&update).unwrap(), first);
        assert_eq!(first, update_frame(&update.event).unwrap());
    }
}
