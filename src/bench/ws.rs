//! `swiftlogistics bench-ws`: WebSocket fan-out under load.
//!
//! Registers client accounts, opens many sessions spread over them (each follows
//! all of its account's orders with `"*"`), reads the node's resident memory with
//! the sessions idle, then places orders at a fixed rate and measures how long each
//! update takes from the node's event timestamp (set when the status change is
//! decided, just before it is persisted) to the frame arriving here. Both clocks are
//! this host's, so run the bench on the node's machine.

use super::report::{Latency, duration, latency_histogram, tally};
use super::scrape::{self, MemorySource};
use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Sessions from one source address: loopback has about 28,000 ephemeral ports per
/// address, and each session takes one.
const SESSIONS_PER_SOURCE: u32 = 20_000;
/// Source addresses a bench may spread its sessions over (127.0.0.1 to 127.0.0.254).
const MAX_SOURCES: u32 = 254;
const MAX_SESSIONS: u32 = 1_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Order placements waiting for an answer at once.
const PLACEMENT_CONCURRENCY: usize = 256;
/// After the last order, updates are awaited until none arrives for this long.
const QUIET_PERIOD: Duration = Duration::from_secs(3);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// A client session reads frames of a few hundred bytes: small buffers keep
/// thousands of them cheap for the bench process.
const CLIENT_READ_BUFFER: usize = 4096;
/// Registering hashes passwords on the node's blocking threads, and the allocator
/// gets that memory back when those threads exit, 10 s after their last job: the
/// memory without sessions is read once they have.
const AFTER_REGISTRATION: Duration = Duration::from_secs(12);
/// Updates of one order on its way to READY_FOR_DELIVERY.
pub(crate) const UPDATES_PER_JOURNEY: u64 = 5;
const ORDER_BODY: &str = r#"{"pickupLocation":{"lat":40.7128,"lng":-74.0060,"address":"123 Main St"},"deliveryAddress":{"lat":40.7589,"lng":-73.9851,"address":"456 Oak Ave"},"packageDetails":{"weight":5.5,"description":"Electronics","fragile":true}}"#;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchWsArgs {
    /// Base URL of the node under load (http://; the sessions use ws:// on it).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// WebSocket sessions held open at once. Each takes a file descriptor here and
    /// on the node: raise `ulimit -n` for both.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SESSIONS)))]
    pub(crate) sessions: u32,
    /// Client accounts; sessions and orders are spread evenly over them, and each
    /// session follows every order of its account.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) users: u32,
    /// Orders placed per second while the sessions follow.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) rate: u32,
    /// Seconds of order flow.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) duration_secs: u64,
    /// Loopback source addresses (127.0.0.1, 127.0.0.2, ...) the sessions are spread
    /// over, each good for about 28,000 connections to one port (Linux routes all of
    /// 127/8 to the loopback interface). By default one per 20,000 sessions, when
    /// the node is on a loopback address.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SOURCES)))]
    pub(crate) source_addresses: Option<u32>,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) connect_concurrency: u32,
    /// Seconds the node is left alone with its idle sessions before its memory is
    /// read.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub(crate) idle_secs: u64,
    /// Pid of the node when it runs on this host, to read its memory from /proc if it
    /// exports no process_resident_memory_bytes gauge.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sessions {
    pub(crate) requested: u32,
    pub(crate) connected: u64,
    /// Sessions that could not be opened, by cause.
    pub(crate) failed: BTreeMap<String, u64>,
    pub(crate) connect_secs: f64,
    /// Sessions the node closed during the run, by close code (0: no close frame).
    pub(crate) closed_by_node: BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdleMemory {
    pub(crate) source: String,
    pub(crate) before_bytes: u64,
    pub(crate) half_bytes: u64,
    pub(crate) all_bytes: u64,
    /// Growth from no sessions to all of them, per session.
    pub(crate) per_session_bytes: i64,
    /// Growth over the second half of the sessions, per session: memory the first
    /// half freed up and the second reused (the registrations' password hashing
    /// leaves some) does not hide here.
    pub(crate) marginal_per_session_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub(crate) orders_placed: u64,
    /// Orders the node did not accept, by HTTP status (0: no answer).
    pub(crate) orders_refused: BTreeMap<u16, u64>,
    pub(crate) updates: u64,
    /// What full journeys would deliver: five updates per placed order to every
    /// session of its account.
    pub(crate) updates_expected: u64,
    /// Updates whose seq was not the one after the last seen for their order.
    pub(crate) out_of_sequence: u64,
    /// Event timestamp (status change decided and persisted) to frame received.
    pub(crate) latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) url: String,
    pub(crate) users: u32,
    pub(crate) rate: u32,
    pub(crate) duration_secs: u64,
    pub(crate) sessions: Sessions,
    pub(crate) idle_memory: Option<IdleMemory>,
    pub(crate) delivery: Delivery,
}

/// Runs the bench until it finishes or Ctrl-C, then prints the summary.
pub async fn run(args: BenchWsArgs) -> anyhow::Result<()> {
    super::until_interrupted(args.json, Summary::render, |shutdown| async move {
        bench(&args, shutdown).await
    })
    .await
}

struct Account {
    token: Arc<str>,
}

/// What the sessions observe, shared by all of them.
pub(crate) struct Observed {
    pub(crate) latency: Mutex<Histogram<u64>>,
    pub(crate) updates: AtomicU64,
    pub(crate) out_of_sequence: AtomicU64,
    pub(crate) closed_by_node: Mutex<BTreeMap<u16, u64>>,
}

impl Observed {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Mutex::new(latency_histogram()?),
            updates: AtomicU64::new(0),
            out_of_sequence: AtomicU64::new(0),
            closed_by_node: Mutex::new(BTreeMap::new()),
        })
    }
}

/// The last seq seen per order, to notice updates missing, repeated or out of order.
#[derive(Default)]
struct Sequences(HashMap<String, u64>);

impl Sequences {
    /// Whether `seq` is the one that should follow; sessions start before any of
    /// their orders exist, so every order's first update is seq 1.
    fn in_sequence(&mut self, order_id: &str, seq: u64) -> bool {
        let last = self.0.entry(order_id.to_owned()).or_insert(0);
        let expected = seq == *last + 1;
        *last = (*last).max(seq);
        expected
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    order_id: Option<String>,
    seq: Option<u64>,
    timestamp: Option<DateTime<Utc>>,
}

pub(crate) fn ws_base(url: &str) -> anyhow::Result<String> {
    match url.trim_end_matches('/').strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{rest}")),
        None => bail!("--url must start with http:// (the bench speaks plain WebSocket)"),
    }
}

/// Everything the bench measures, without printing; `shutdown` stops it early with
/// an error.
pub(crate) async fn bench(
    args: &BenchWsArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    if args.users > args.sessions {
        bail!("--users must not exceed --sessions: every account needs a session following it");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let ws_url = format!("{}/ws", ws_base(&base)?);
    let sources = SourceAddresses::plan(&ws_url, args.sessions, args.source_addresses).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(PLACEMENT_CONCURRENCY)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")?;
    scrape::metrics(&http, &base)
        .await
        .with_context(|| format!("cannot reach the node at {base}; is it running?"))?;
    let memory_source = scrape::memory_source(&http, &base, args.server_pid).await;

    let accounts: Vec<Account> =
        super::accounts::register_accounts(&http, &base, args.users, "bench-ws", &shutdown)
            .await?
            .into_iter()
            .map(|token| Account { token })
            .collect();
    if memory_source.is_some() {
        let secs = AFTER_REGISTRATION.as_secs().max(args.idle_secs);
        settle(secs, &shutdown).await?;
    }
    let before = read_memory(memory_source, &http, &base).await;

    let mut fleet = Fleet {
        observed: Arc::new(Observed::new()?),
        stop: shutdown.child_token(),
        followers: JoinSet::new(),
        connected: 0,
        failed: BTreeMap::new(),
    };
    let started = Instant::now();
    let half = args.sessions / 2;
    let concurrency = args.connect_concurrency;
    fleet
        .open(&ws_url, &sources, &accounts, 0..half, concurrency)
        .await?;
    settle(args.idle_secs, &shutdown).await?;
    let at_half = read_memory(memory_source, &http, &base).await;
    fleet
        .open(
            &ws_url,
            &sources,
            &accounts,
            half..args.sessions,
            concurrency,
        )
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    settle(args.idle_secs, &shutdown).await?;
    let at_all = read_memory(memory_source, &http, &base).await;
    let connected = fleet.connected;
    let idle_memory = match (memory_source, before, at_half, at_all) {
        (Some(source), Some(before), Some(half_bytes), Some(all_bytes)) => Some(IdleMemory {
            source: source.describe(),
            before_bytes: before,
            half_bytes,
            all_bytes,
            per_session_bytes: per(all_bytes, before, connected),
            marginal_per_session_bytes: per(all_bytes, half_bytes, u64::from(args.sessions - half)),
        }),
        _ => None,
    };

    let (placed, orders_refused) = place_orders(&http, &base, &accounts, args, &shutdown).await?;
    drain(&fleet.observed, &shutdown).await?;
    fleet.stop.cancel();
    while fleet.followers.join_next().await.is_some() {}
    let observed = fleet.observed;

    let sessions_of = |account: usize| -> u64 {
        let users = args.users as usize;
        let sessions = args.sessions as usize;
        (sessions / users + usize::from(account < sessions % users)) as u64
    };
    let updates_expected = placed
        .iter()
        .map(|(account, count)| count * UPDATES_PER_JOURNEY * sessions_of(*account))
        .sum();
    let latency = match observed.latency.lock() {
        Ok(histogram) => Latency::of(&histogram),
        Err(_) => Latency::default(),
    };
    let closed_by_node = observed
        .closed_by_node
        .lock()
        .map(|closed| closed.clone())
        .unwrap_or_default();
    Ok(Summary {
        url: base,
        users: args.users,
        rate: args.rate,
        duration_secs: args.duration_secs,
        sessions: Sessions {
            requested: args.sessions,
            connected,
            failed: fleet.failed,
            connect_secs,
            closed_by_node,
        },
        idle_memory,
        delivery: Delivery {
            orders_placed: placed.values().sum(),
            orders_refused,
            updates: observed.updates.load(Ordering::Relaxed),
            updates_expected,
            out_of_sequence: observed.out_of_sequence.load(Ordering::Relaxed),
            latency,
        },
    })
}

/// Growth from `from` to `to` bytes spread over `count`.
fn per(to: u64, from: u64, count: u64) -> i64 {
    if count == 0 {
        return 0;
    }
    let grown = i128::from(to) - i128::from(from);
    i64::try_from(grown / i128::from(count)).unwrap_or(i64::MAX)
}

async fn read_memory(
    source: Option<MemorySource>,
    http: &reqwest::Client,
    base: &str,
) -> Option<u64> {
    source?.read(http, base).await
}

/// Leaves the node alone for a while, so that what it allocated (for registrations,
/// for new sessions) has settled before its memory is read.
async fn settle(secs: u64, shutdown: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        _ = shutdown.cancelled() => bail!("bench interrupted"),
        _ = tokio::time::sleep(Duration::from_secs(secs)) => Ok(()),
    }
}

/// The sessions following orders, and how opening them went.
struct Fleet {
    observed: Arc<Observed>,
    stop: CancellationToken,
    followers: JoinSet<()>,
    connected: u64,
    failed: BTreeMap<String, u64>,
}

impl Fleet {
    /// Opens sessions `range` (session n belongs to account n mod users), each
    /// subscribed to "*" before it counts as open, and leaves them following.
    async fn open(
        &mut self,
        ws_url: &str,
        sources: &SourceAddresses,
        accounts: &[Account],
        range: std::ops::Range<u32>,
        concurrency: u32,
    ) -> anyhow::Result<()> {
        let mut openings = futures::stream::iter(range)
            .map(|n| {
                let account = &accounts[n as usize % accounts.len()];
                let url = format!("{ws_url}?token={}", account.token);
                let route = sources.route(n);
                async move { tokio::time::timeout(CONNECT_TIMEOUT, open_session(url, route)).await }
            })
            .buffer_unordered(usize::try_from(concurrency).unwrap_or(1));
        loop {
            let opened = tokio::select! {
                _ = self.stop.cancelled() => bail!("bench interrupted while opening sessions"),
                next = openings.next() => match next {
                    Some(opened) => opened,
                    None => return Ok(()),
                },
            };
            match opened {
                Ok(Ok(ws)) => {
                    self.connected += 1;
                    let follower = follow(ws, self.observed.clone(), self.stop.clone());
                    self.followers.spawn(follower);
                }
                Ok(Err(cause)) => *self.failed.entry(cause).or_default() += 1,
                Err(_) => *self.failed.entry("timeout".to_owned()).or_default() += 1,
            }
        }
    }
}

/// Where the sessions connect from: the kernel's choice, or spread over several
/// loopback source addresses to open more sessions than one address has ports.
pub(crate) struct SourceAddresses {
    /// The node's address, and the sources to spread over (none: let the kernel pick).
    spread: Option<(SocketAddr, u32)>,
}

/// The node's address and the source address a session connects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) node: SocketAddr,
    pub(crate) source: IpAddr,
}

impl SourceAddresses {
    /// The default, one source address per [`SESSIONS_PER_SOURCE`] sessions, or
    /// `requested`; more than one needs a node on an IPv4 loopback address.
    async fn plan(ws_url: &str, sessions: u32, requested: Option<u32>) -> anyhow::Result<Self> {
        let node = node_address(ws_url).await?;
        let on_loopback = matches!(node.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let count = match requested {
            Some(count) => count,
            None if on_loopback => sessions.div_ceil(SESSIONS_PER_SOURCE).clamp(1, MAX_SOURCES),
            None => 1,
        };
        if count > 1 && !on_loopback {
            bail!("--source-addresses needs a node on an IPv4 loopback address (127.x.x.x)");
        }
        if sessions > count.saturating_mul(SESSIONS_PER_SOURCE) {
            bail!(
                "{sessions} sessions need at least {} source addresses ({SESSIONS_PER_SOURCE} each)",
                sessions.div_ceil(SESSIONS_PER_SOURCE)
            );
        }
        Ok(Self {
            spread: (count > 1).then_some((node, count)),
        })
    }

    /// Session `n`'s route: sessions take the addresses in turn from 127.0.0.1.
    fn route(&self, n: u32) -> Option<Route> {
        let (node, count) = self.spread?;
        let [a, b, c, d] = Ipv4Addr::LOCALHOST.octets();
        let last = d.saturating_add(u8::try_from(n % count).unwrap_or(0));
        Some(Route {
            node,
            source: IpAddr::V4(Ipv4Addr::new(a, b, c, last)),
        })
    }
}

/// The socket address of the node behind a ws:// URL.
async fn node_address(ws_url: &str) -> anyhow::Result<SocketAddr> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        ws_url.parse().context("the node's URL does not parse")?;
    let host = uri.host().context("the node's URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

/// A TCP connection to the node from the route's source address.
async fn connect_from(route: Route) -> std::io::Result<TcpStream> {
    let socket = match route.node {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(route.source, 0))?;
    let stream = socket.connect(route.node).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a session to `url` (from `route`'s source address if given) and subscribes
/// it to `"*"`.
pub(crate) async fn open_session(url: String, route: Option<Route>) -> Result<Ws, String> {
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let connected = match route {
        None => tokio_tungstenite::connect_async_with_config(url, Some(config), true).await,
        Some(route) => {
            let stream = connect_from(route)
                .await
                .map_err(|e| format!("{:?}", e.kind()))?;
            tokio_tungstenite::client_async_with_config(
                url,
                MaybeTlsStream::Plain(stream),
                Some(config),
            )
            .await
        }
    };
    let (mut ws, _) = connected.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            format!("HTTP {}", response.status())
        }
        tokio_tungstenite::tungstenite::Error::Io(io) => format!("{:?}", io.kind()),
        other => other.to_string(),
    })?;
    let subscribe = json!({"type": "subscribe", "orderId": "*"}).to_string();
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message.map_err(|e| format!("subscribe: {e}"))? {
            return match serde_json::from_str::<Frame>(&text) {
                Ok(frame) if frame.kind == "subscribed" => Ok(ws),
                _ => Err(format!("subscribe answered {text}")),
            };
        }
    }
    Err("closed before subscribing".to_owned())
}

/// Reads the session's updates until `stop`, recording each one's delivery latency.
pub(crate) async fn follow(mut ws: Ws, observed: Arc<Observed>, stop: CancellationToken) {
    let mut sequences = Sequences::default();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                return;
            }
            message = ws.next() => message,
        };
        let closed_with = match message {
            Some(Ok(Message::Text(text))) => {
                record(&text, &observed, &mut sequences);
                continue;
            }
            Some(Ok(Message::Close(frame))) => frame.map_or(0, |f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => 0,
        };
        if let Ok(mut closed) = observed.closed_by_node.lock() {
            *closed.entry(closed_with).or_default() += 1;
        }
        return;
    }
}

fn record(text: &str, observed: &Observed, sequences: &mut Sequences) {
    let received = Utc::now();
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return;
    };
    let (Some(order_id), Some(seq), Some(timestamp)) = (frame.order_id, frame.seq, frame.timestamp)
    else {
        return;
    };
    if frame.kind != "order-update" {
        return;
    }
    observed.updates.fetch_add(1, Ordering::Relaxed);
    if !sequences.in_sequence(&order_id, seq) {
        observed.out_of_sequence.fetch_add(1, Ordering::Relaxed);
    }
    let micros = (received - timestamp)
        .num_microseconds()
        .unwrap_or(i64::MAX);
    if let Ok(mut histogram) = observed.latency.lock() {
        histogram.saturating_record(u64::try_from(micros).unwrap_or(0).max(1));
    }
}

/// Places `rate` orders a second for `duration_secs`, round robin over the accounts.
/// Returns the accepted orders per account and the refusals by status.
async fn place_orders(
    http: &reqwest::Client,
    base: &str,
    accounts: &[Account],
    args: &BenchWsArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<(BTreeMap<usize, u64>, BTreeMap<u16, u64>)> {
    let url: Arc<str> = format!("{base}/api/orders").into();
    let total = u64::from(args.rate) * args.duration_secs;
    let slots = Arc::new(Semaphore::new(PLACEMENT_CONCURRENCY));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut placements = JoinSet::new();
    for n in 0..total {
        tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while placing orders"),
            _ = ticks.tick() => {}
        }
        let slot = tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while placing orders"),
            slot = slots.clone().acquire_owned() => slot?,
        };
        let account = usize::try_from(n).unwrap_or(0) % accounts.len();
        let token = accounts[account].token.clone();
        let (http, url) = (http.clone(), url.clone());
        placements.spawn(async move {
            let _slot = slot;
            let status = match http
                .post(&*url)
                .bearer_auth(&*token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(ORDER_BODY)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            (account, status)
        });
    }
    let mut placed = BTreeMap::new();
    let mut refused = BTreeMap::new();
    while let Some(done) = placements.join_next().await {
        let (account, status) = done?;
        if status == 202 {
            *placed.entry(account).or_default() += 1;
        } else {
            *refused.entry(status).or_default() += 1;
        }
    }
    Ok((placed, refused))
}

/// Waits until updates stop arriving (the journeys have ended), within a limit.
pub(crate) async fn drain(observed: &Observed, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut seen = observed.updates.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while waiting for updates"),
            _ = tokio::time::sleep(QUIET_PERIOD) => {}
        }
        let now = observed.updates.load(Ordering::Relaxed);
        if now == seen {
            return Ok(());
        }
        seen = now;
    }
    Ok(())
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Summary {
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let s = &self.sessions;
        let _ = writeln!(
            text,
            "bench-ws against {}: {} sessions over {} clients, {} orders/s for {} s",
            self.url, s.requested, self.users, self.rate, self.duration_secs
        );
        let _ = writeln!(
            text,
            "sessions {} open (subscribed) in {:.1} s",
            s.connected, s.connect_secs
        );
        if !s.failed.is_empty() {
            let _ = writeln!(text, "         not opened: {}", tally(&s.failed));
        }
        if !s.closed_by_node.is_empty() {
            let _ = writeln!(
                text,
                "         closed by the node (close code): {}",
                tally(&s.closed_by_node)
            );
        }
        match &self.idle_memory {
            Some(m) => {
                let _ = writeln!(
                    text,
                    "memory   RSS {} without sessions, {} with half, {} with all ({})",
                    mebibytes(m.before_bytes),
                    mebibytes(m.half_bytes),
                    mebibytes(m.all_bytes),
                    m.source
                );
                let _ = writeln!(
                    text,
                    "         {} bytes per idle session ({} bytes over the second half)",
                    m.per_session_bytes, m.marginal_per_session_bytes
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "memory   unknown: the node exports no process_resident_memory_bytes; pass --server-pid"
                );
            }
        }
        let d = &self.delivery;
        let _ = writeln!(
            text,
            "orders   {} placed{}",
            d.orders_placed,
            if d.orders_refused.is_empty() {
                String::new()
            } else {
                format!(", refused: {}", tally(&d.orders_refused))
            }
        );
        let _ = writeln!(
            text,
            "updates  {} received of {} for full journeys, {} out of sequence",
            d.updates, d.updates_expected, d.out_of_sequence
        );
        let latency = if d.latency.count == 0 {
            "no samples".to_owned()
        } else {
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                duration(d.latency.p50_micros),
                duration(d.latency.p90_micros),
                duration(d.latency.p99_micros),
                duration(d.latency.max_micros)
            )
        };
        let _ = writeln!(
            text,
            "         delivery {latency} (status change persisted to frame received)"
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_flag_gaps_repeats_and_a_late_start() {
        let mut sequences = Sequences::default();
        assert!(sequences.in_sequence("ORD-A", 1));
        assert!(sequences.in_sequence("ORD-A", 2));
        assert!(!sequences.in_sequence("ORD-A", 2), "repeat");
        assert!(!sequences.in_sequence("ORD-A", 4), "gap");
        assert!(sequences.in_sequence("ORD-A", 5));
        assert!(
            !sequences.in_sequence("ORD-B", 2),
            "missed the first update"
        );
    }

    #[test]
    fn only_plain_http_urls_map_to_websocket_urls() {
        assert_eq!(
            ws_base("http://127.0.0.1:3000/").unwrap(),
            "ws://127.0.0.1:3000"
        );
        assert!(ws_base("https://example.com").is_err());
        assert!(ws_base("127.0.0.1:3000").is_err());
    }

    #[tokio::test]
    async fn sessions_are_spread_over_loopback_sources_only_when_they_need_it() {
        let url = "ws://127.0.0.1:3100/ws";
        let one = SourceAddresses::plan(url, 20_000, None).await.unwrap();
        assert_eq!(one.route(7), None, "one address: the kernel picks it");
        let spread = SourceAddresses::plan(url, 25_000, None).await.unwrap();
        let node: SocketAddr = "127.0.0.1:3100".parse().unwrap();
        let source = |n: u32| spread.route(n).map(|r| (r.node, r.source.to_string()));
        assert_eq!(source(0), Some((node, "127.0.0.1".to_owned())));
        assert_eq!(source(1), Some((node, "127.0.0.2".to_owned())));
        assert_eq!(source(2), Some((node, "127.0.0.1".to_owned())));
        let asked = SourceAddresses::plan(url, 10, Some(3)).await.unwrap();
        assert_eq!(asked.route(5).unwrap().source.to_string(), "127.0.0.3");
        assert!(SourceAddresses::plan(url, 45_000, Some(2)).await.is_err());
        assert!(
            SourceAddresses::plan("ws://[::1]:3100/ws", 10, Some(2))
                .await
                .is_err()
        );
    }

    #[test]
    fn growth_per_session_may_be_negative_and_survives_zero_sessions() {
        assert_eq!(per(3_000, 1_000, 100), 20);
        assert_eq!(per(1_000, 3_000, 100), -20);
        assert_eq!(per(3_000, 1_000, 0), 0);
    }

    #[test]
    fn an_update_frame_is_recorded_with_its_latency_and_sequence() {
        let observed = Observed::new().unwrap();
        let mut sequences = Sequences::default();
        let made = Utc::now() - chrono::Duration::milliseconds(20);
        let frame = |seq: u64| {
            json!({"type": "order-update", "orderId": "ORD-A", "status": "RECEIVED",
                   "message": "m", "seq": seq, "timestamp": made, "data": null})
            .to_string()
        };
        record(&frame(1), &observed, &mut sequences);
        record(&frame(3), &observed, &mut sequences);
        record(
            r#"{"type":"subscribed","orderId":"*"}"#,
            &observed,
            &mut sequences,
        );
        record("not json", &observed, &mut sequences);
        assert_eq!(observed.updates.load(Ordering::Relaxed), 2);
        assert_eq!(observed.out_of_sequence.load(Ordering::Relaxed), 1);
        let latency = Latency::of(&observed.latency.lock().unwrap());
        assert!(latency.p50_micros >= 20_000, "{latency:?}");
    }
}
