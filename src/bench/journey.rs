//! `swiftlogistics bench`: load a running node and report throughput, latency and
//! memory.
//!
//! The run has four phases: register client accounts; place the orders (closed loop
//! at a fixed concurrency, or open loop at a fixed rate); follow the journeys through
//! the node's `/metrics` order gauges until every placed order has settled; then read
//! each order's event log once for its journey latency. Per-order latency comes from
//! the node's own event timestamps, so following the journeys never adds load while
//! they run. The bench assumes nobody else places orders on the node meanwhile: it
//! counts settled orders node-wide.

use super::accounts::register_accounts;
use super::follow::{FollowMode, Followers};
use super::report::{
    Cpu, Intake, Journey, Latency, Memory, Summary, latency_histogram, per_second,
};
use super::scrape;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const MAX_ORDERS: u64 = 1_000_000;
const MAX_CONCURRENCY: u32 = 4096;
/// Matches the node's own `http.request_timeout_secs`: a slower answer is a 503 anyway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// How often the node's memory is read for its peak.
const MEMORY_EVERY: Duration = Duration::from_millis(100);
/// Event logs read at once after the run: enough to finish quickly, few enough not
/// to crowd a node that may still be passivating actors.
const HISTORY_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the node under load.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// Orders to place.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_ORDERS))]
    pub(crate) orders: u64,
    /// Requests in flight at once: the closed-loop workers, or with --rate a cap on
    /// outstanding requests (time spent waiting for it counts as intake latency).
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONCURRENCY)))]
    pub(crate) concurrency: u32,
    /// Open loop: orders placed per second on a fixed schedule whatever the answers,
    /// latency measured from the scheduled time so queueing is not hidden. Without
    /// it, each worker places its next order when the previous one is answered.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) rate: Option<u32>,
    /// Client accounts registered up front; orders are spread over them.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) users: u32,
    /// Seconds to wait, once every order is placed, for the journeys to settle.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) timeout_secs: u64,
    /// Pid of the node when it runs on this host: its CPU time is read from /proc, and
    /// its memory too when it exports no process_resident_memory_bytes gauge.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Clients following their orders while the load runs: `poll` reads each
    /// order's status every --poll-every-ms until it settles, `ws` holds one
    /// WebSocket session per client account.
    #[arg(long, value_enum, default_value_t = FollowMode::None)]
    pub(crate) follow: FollowMode,
    /// Milliseconds between two status polls of one order (`--follow poll`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(crate) poll_every_ms: u64,
    /// Seconds to wait after the run before reading the node's memory once more
    /// (0: do not), to see what it returns once the orders are done.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub(crate) settle_secs: u64,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs the bench until it finishes or Ctrl-C, then prints the summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::until_interrupted(args.json, Summary::render, |shutdown| async move {
        bench(&args, shutdown).await
    })
    .await
}

/// A registered client account placing orders.
struct Client {
    token: Arc<str>,
}

/// An order the node accepted, and whose account can read it back.
struct Placed {
    client: usize,
    order_id: String,
}

enum Answer {
    Accepted(String),
    Other(u16),
    Unanswered(&'static str),
}

/// Everything the bench measures, without printing; `shutdown` stops it early with
/// an error.
pub(crate) async fn bench(
    args: &BenchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let base = args.url.trim_end_matches('/').to_owned();
    let concurrency = usize::try_from(args.concurrency).unwrap_or(1).max(1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency + HISTORY_CONCURRENCY)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")?;

    let page = scrape::metrics(&http, &base)
        .await
        .with_context(|| format!("cannot reach the node at {base}; is it running?"))?;
    let baseline = scrape::settled_orders(&page);
    let memory_source = scrape::memory_source(&http, &base, args.server_pid).await;

    let tokens = register_accounts(&http, &base, args.users, "bench", &shutdown).await?;
    let followers = Followers::start(
        args.follow,
        &http,
        &base,
        &tokens,
        Duration::from_millis(args.poll_every_ms),
        concurrency,
        &shutdown,
    )
    .await?;
    let clients: Vec<Client> = tokens.into_iter().map(|token| Client { token }).collect();
    let rss_before = match memory_source {
        Some(source) => source.read(&http, &base).await,
        None => None,
    };
    let sampling = shutdown.child_token();
    let peak = memory_source.map(|source| {
        tokio::spawn(scrape::peak_memory(
            source,
            http.clone(),
            base.clone(),
            MEMORY_EVERY,
            sampling.clone(),
        ))
    });

    let started = Instant::now();
    let (node_cpu_before, bench_cpu_before) = cpu_now(args.server_pid).await;
    let intake = place_orders(&http, &base, &clients, &followers, args, &shutdown).await?;
    let accepted = intake.placed.len() as u64;
    let give_up = Duration::from_secs(args.timeout_secs);
    let timed_out = follow(&http, &base, baseline, accepted, give_up, &shutdown).await?;
    let follow = followers.finish(accepted, give_up, &shutdown).await?;
    let (node_cpu_after, bench_cpu_after) = cpu_now(args.server_pid).await;
    let wall_secs = started.elapsed().as_secs_f64();
    let rss_after = match memory_source {
        Some(source) => source.read(&http, &base).await,
        None => None,
    };
    sampling.cancel();
    let peak_bytes = match peak {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    let mut journey = read_journeys(&http, &base, &clients, &intake.placed, &shutdown).await?;
    journey.timed_out = timed_out;
    let settled_bytes = match memory_source {
        Some(source) if args.settle_secs > 0 => {
            tokio::select! {
                _ = shutdown.cancelled() => bail!("bench interrupted while settling"),
                _ = tokio::time::sleep(Duration::from_secs(args.settle_secs)) => {}
            }
            source.read(&http, &base).await
        }
        _ => None,
    };

    let memory = match (memory_source, rss_before, rss_after) {
        (Some(source), Some(before), Some(after)) => Some(Memory {
            source: source.describe(),
            before_bytes: before,
            after_bytes: after,
            per_live_order_bytes: (accepted > 0).then(|| {
                let grown = i128::from(after) - i128::from(before);
                i64::try_from(grown / i128::from(accepted)).unwrap_or(i64::MAX)
            }),
            peak_bytes: peak_bytes.unwrap_or(after).max(after),
            settled_bytes,
        }),
        _ => None,
    };
    let elapsed_secs = intake.elapsed.as_secs_f64();
    Ok(Summary {
        url: base,
        orders: args.orders,
        concurrency,
        rate: args.rate,
        users: clients.len(),
        intake: Intake {
            accepted,
            elapsed_secs,
            throughput_per_sec: per_second(accepted, elapsed_secs),
            latency: Latency::of(&intake.latency),
            other_answers: intake.other_answers,
            transport_errors: intake.transport_errors,
        },
        journey,
        follow,
        memory,
        cpu: cpu_summary(
            wall_secs,
            accepted,
            (node_cpu_before, node_cpu_after),
            (bench_cpu_before, bench_cpu_after),
        ),
    })
}

async fn cpu_now(server_pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    let node = match server_pid {
        Some(pid) => scrape::process_cpu_seconds(Some(pid)).await,
        None => None,
    };
    (node, scrape::process_cpu_seconds(None).await)
}

type Span = (Option<f64>, Option<f64>);

fn cpu_summary(wall_secs: f64, accepted: u64, node: Span, bench: Span) -> Cpu {
    let used = |(before, after): Span| Some(after? - before?);
    let node_secs = used(node);
    Cpu {
        wall_secs,
        node_secs,
        node_micros_per_order: node_secs
            .filter(|_| accepted > 0)
            .map(|secs| secs * 1_000_000.0 / accepted as f64),
        bench_secs: used(bench),
    }
}

fn bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

struct IntakeRun {
    placed: Vec<Placed>,
    latency: Histogram<u64>,
    other_answers: BTreeMap<u16, u64>,
    transport_errors: BTreeMap<String, u64>,
    /// From the first send to the last answer.
    elapsed: Duration,
}

impl IntakeRun {
    fn record(&mut self, client: usize, answer: Answer, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
        match answer {
            Answer::Accepted(order_id) => self.placed.push(Placed { client, order_id }),
            Answer::Other(status) => *self.other_answers.entry(status).or_default() += 1,
            Answer::Unanswered(cause) => {
                *self.transport_errors.entry(cause.to_owned()).or_default() += 1;
            }
        }
    }
}

/// The standard parcel of the seed's examples.
fn order_body() -> Bytes {
    Bytes::from_static(
        br#"{"pickupLocation":{"lat":40.7128,"lng":-74.0060,"address":"123 Main St"},"deliveryAddress":{"lat":40.7589,"lng":-73.9851,"address":"456 Oak Ave"},"packageDetails":{"weight":5.5,"description":"Electronics","fragile":true}}"#,
    )
}

fn no_answer(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "broken answer"
    } else {
        "request"
    }
}

async fn place(http: reqwest::Client, url: Arc<str>, token: Arc<str>) -> Answer {
    let sent = http
        .post(&*url)
        .bearer_auth(&*token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(order_body())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Answer::Unanswered(no_answer(&e)),
    };
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        // Read the body so the connection goes back to the pool.
        let _ = response.bytes().await;
        return Answer::Other(status.as_u16());
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Accepted {
        order_id: String,
    }
    match response.json::<Accepted>().await {
        Ok(accepted) => Answer::Accepted(accepted.order_id),
        Err(e) if e.is_decode() => Answer::Unanswered("202 without an orderId"),
        Err(e) => Answer::Unanswered(no_answer(&e)),
    }
}

async fn place_orders(
    http: &reqwest::Client,
    base: &str,
    clients: &[Client],
    followers: &Followers,
    args: &BenchArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<IntakeRun> {
    let url: Arc<str> = format!("{base}/api/orders").into();
    let in_flight = Arc::new(Semaphore::new(
        usize::try_from(args.concurrency).unwrap_or(1),
    ));
    let mut run = IntakeRun {
        placed: Vec::with_capacity(usize::try_from(args.orders).unwrap_or(0)),
        latency: latency_histogram()?,
        other_answers: BTreeMap::new(),
        transport_errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let progress = bar(args.orders, "intake");
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let record =
        |run: &mut IntakeRun, joined: Result<(usize, Answer, Duration), tokio::task::JoinError>| {
            progress.inc(1);
            match joined {
                Ok((client, answer, latency)) => {
                    if let (Answer::Accepted(order_id), Some(c)) = (&answer, clients.get(client)) {
                        followers.accepted(&c.token, order_id);
                    }
                    run.record(client, answer, latency);
                }
                Err(_) => run.record(0, Answer::Unanswered("bench task failed"), Duration::ZERO),
            }
        };
    for n in 0..args.orders {
        let scheduled = args
            .rate
            .map(|rate| started + Duration::from_secs_f64(n as f64 / f64::from(rate)));
        if let Some(at) = scheduled {
            tokio::select! {
                _ = shutdown.cancelled() => bail!("bench interrupted while placing orders"),
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while placing orders"),
            permit = in_flight.clone().acquire_owned() => permit?,
        };
        let origin = scheduled.unwrap_or_else(Instant::now);
        let client = usize::try_from(n).unwrap_or(0) % clients.len().max(1);
        let Some(token) = clients.get(client).map(|c| c.token.clone()) else {
            bail!("no bench client registered");
        };
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let answer = place(http, url, token).await;
            drop(permit);
            (client, answer, origin.elapsed())
        });
        while let Some(joined) = tasks.try_join_next() {
            record(&mut run, joined);
        }
    }
    loop {
        let joined = tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while placing orders"),
            joined = tasks.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        record(&mut run, joined);
    }
    run.elapsed = started.elapsed();
    progress.finish();
    Ok(run)
}

/// Waits until `accepted` more orders than `baseline` have settled node-wide, or
/// `timeout`; true when it gave up.
async fn follow(
    http: &reqwest::Client,
    base: &str,
    baseline: u64,
    accepted: u64,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let progress = bar(accepted, "journeys");
    let deadline = Instant::now() + timeout;
    let mut ticks = tokio::time::interval(FOLLOW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while following journeys"),
            _ = ticks.tick() => {}
        }
        match scrape::metrics(http, base).await {
            Ok(page) => {
                let settled = scrape::settled_orders(&page).saturating_sub(baseline);
                progress.set_position(settled.min(accepted));
                if settled >= accepted {
                    progress.finish();
                    return Ok(false);
                }
            }
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            progress.abandon();
            if let Some(e) = last_error {
                tracing::warn!(error = %e, "scraping /metrics failed while following journeys");
            }
            return Ok(true);
        }
    }
}

#[derive(Deserialize)]
struct OrderHistory {
    history: Vec<HistoryEvent>,
}

#[derive(Deserialize)]
struct HistoryEvent {
    status: String,
    timestamp: DateTime<Utc>,
}

enum Outcome {
    Ready {
        received: DateTime<Utc>,
        ready: DateTime<Utc>,
    },
    Failed,
    Cancelled,
    Unfinished,
    Unreadable,
}

fn outcome(history: &[HistoryEvent]) -> Outcome {
    let at = |status: &str| {
        history
            .iter()
            .find(|e| e.status == status)
            .map(|e| e.timestamp)
    };
    let seen = |status: &str| history.iter().any(|e| e.status == status);
    match (at("RECEIVED"), at("READY_FOR_DELIVERY")) {
        (Some(received), Some(ready)) => Outcome::Ready { received, ready },
        (None, _) => Outcome::Unreadable,
        _ if seen("FAILED") => Outcome::Failed,
        _ if seen("CANCELLED") => Outcome::Cancelled,
        _ => Outcome::Unfinished,
    }
}

async fn history(http: &reqwest::Client, base: &str, token: &str, order_id: &str) -> Outcome {
    let answer = http
        .get(format!("{base}/api/orders/{order_id}"))
        .bearer_auth(token)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let Ok(response) = answer else {
        return Outcome::Unreadable;
    };
    match response.json::<OrderHistory>().await {
        Ok(order) => outcome(&order.history),
        Err(_) => Outcome::Unreadable,
    }
}

async fn read_journeys(
    http: &reqwest::Client,
    base: &str,
    clients: &[Client],
    placed: &[Placed],
    shutdown: &CancellationToken,
) -> anyhow::Result<Journey> {
    let progress = bar(placed.len() as u64, "histories");
    let mut outcomes = futures::stream::iter(placed)
        .map(|order| async move {
            match clients.get(order.client) {
                Some(client) => history(http, base, &client.token, &order.order_id).await,
                None => Outcome::Unreadable,
            }
        })
        .buffer_unordered(HISTORY_CONCURRENCY);
    let mut latency = latency_histogram()?;
    let mut journey = Journey {
        ready: 0,
        failed: 0,
        cancelled: 0,
        unfinished: 0,
        unreadable: 0,
        timed_out: false,
        window_secs: 0.0,
        throughput_per_sec: 0.0,
        latency: Latency::default(),
    };
    let mut window: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => bail!("bench interrupted while reading event logs"),
            next = outcomes.next() => next,
        };
        let Some(outcome) = next else { break };
        progress.inc(1);
        match outcome {
            Outcome::Ready { received, ready } => {
                journey.ready += 1;
                let micros = (ready - received).num_microseconds().unwrap_or(i64::MAX);
                latency.saturating_record(u64::try_from(micros).unwrap_or(0).max(1));
                window = Some(match window {
                    None => (received, ready),
                    Some((first, last)) => (first.min(received), last.max(ready)),
                });
            }
            Outcome::Failed => journey.failed += 1,
            Outcome::Cancelled => journey.cancelled += 1,
            Outcome::Unfinished => journey.unfinished += 1,
            Outcome::Unreadable => journey.unreadable += 1,
        }
    }
    progress.finish_and_clear();
    if let Some((first, last)) = window {
        let micros = (last - first).num_microseconds().unwrap_or(0).max(0);
        journey.window_secs = micros as f64 / 1_000_000.0;
        journey.throughput_per_sec = per_second(journey.ready, journey.window_secs);
    }
    journey.latency = Latency::of(&latency);
    Ok(journey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app;
    use crate::config::Settings;
    use serde_json::json;

    /// The bench reads the order gauges of `/metrics`, and those are process-wide:
    /// a scrape of one test's node sets them from that node's count, so two nodes
    /// scraped at once in this test process would read each other's orders.
    static ONE_NODE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn args(url: String, orders: u64) -> BenchArgs {
        BenchArgs {
            url,
            orders,
            concurrency: 8,
            rate: None,
            users: 2,
            timeout_secs: 60,
            server_pid: Some(std::process::id()),
            follow: FollowMode::None,
            poll_every_ms: 20,
            settle_secs: 0,
            json: false,
        }
    }

    async fn node(dir: &std::path::Path, overrides: serde_json::Value) -> app::Runtime {
        let mut settings = json!({
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": dir},
            "simulators": {"cms_bind": "127.0.0.1:0", "ros_bind": "127.0.0.1:0",
                            "wms_bind": "127.0.0.1:0", "control_bind": "127.0.0.1:0"},
            "auth": {"admin_password": "bench-admin-password", "driver_password": "bench-driver-password",
                     "login_per_minute": 1_000_000, "register_per_hour": 1_000_000},
            // A benchmark is one client placing many orders: the per-address budgets
            // that protect a public node would measure themselves instead.
            "rate_limit": {"anonymous_per_window": 1_000_000_000, "user_per_window": 1_000_000_000},
        });
        if let (Some(base), serde_json::Value::Object(extra)) =
            (settings.as_object_mut(), overrides)
        {
            base.extend(extra);
        }
        let settings = Settings::defaults_with(settings).unwrap();
        app::start(settings).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_placed_order_is_followed_to_ready_with_latencies_and_memory() {
        let _alone = ONE_NODE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let runtime = node(dir.path(), json!({})).await;
        let summary = bench(&args(runtime.base_url(), 40), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(summary.intake.accepted, 40);
        assert_eq!(summary.intake.latency.count, 40);
        assert!(summary.intake.other_answers.is_empty());
        assert!(summary.intake.transport_errors.is_empty());
        assert_eq!(summary.journey.ready, 40, "{summary:?}");
        assert!(!summary.journey.timed_out);
        assert_eq!(summary.journey.latency.count, 40);
        assert!(summary.journey.latency.p50_micros > 0);
        assert!(summary.journey.throughput_per_sec > 0.0);
        // This test process is the node, so /proc/self answers for it.
        let memory = summary.memory.as_ref().expect("memory is read from /proc");
        assert!(memory.before_bytes > 0 && memory.after_bytes > 0);
        assert!(
            summary.cpu.node_secs.is_some_and(|s| s > 0.0),
            "{summary:?}"
        );
        assert!(summary.cpu.node_micros_per_order.is_some());
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_poll_each_order_until_it_settles_or_receive_every_update() {
        let _alone = ONE_NODE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let runtime = node(dir.path(), json!({})).await;
        let mut polled = args(runtime.base_url(), 20);
        polled.follow = FollowMode::Poll;
        polled.poll_every_ms = 5;
        let summary = bench(&polled, CancellationToken::new()).await.unwrap();
        assert_eq!(summary.journey.ready, 20, "{summary:?}");
        let follow = summary.follow.as_ref().expect("a poll report");
        assert!(follow.received >= 20, "{follow:?}");
        assert_eq!(follow.failed, 0, "{follow:?}");
        assert_eq!(follow.latency.count, follow.received);
        assert!(summary.render().contains("status polls"));
        let memory = summary.memory.as_ref().unwrap();
        assert!(memory.peak_bytes >= memory.before_bytes.min(memory.after_bytes));

        let mut watched = args(runtime.base_url(), 20);
        watched.follow = FollowMode::Ws;
        let summary = bench(&watched, CancellationToken::new()).await.unwrap();
        let follow = summary.follow.as_ref().expect("a ws report");
        // RECEIVED, CMS_VALIDATED, INVENTORY_RESERVED, ROUTE_OPTIMIZED, READY.
        assert_eq!(follow.expected, Some(100), "{follow:?}");
        assert_eq!(follow.received, 100, "{follow:?}");
        assert_eq!(follow.failed, 0, "{follow:?}");
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_counted_by_status_not_hidden() {
        let _alone = ONE_NODE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().unwrap();
        // The CMS never answers within the bench, so admitted orders stay in flight
        // and the node refuses the rest with 503.
        let runtime = node(
            dir.path(),
            json!({"orders": {"max_in_flight": 5}, "cms": {"timeout_ms": 60000}}),
        )
        .await;
        let sims = runtime.simulators.as_ref().unwrap();
        let control = format!("http://{}", sims.control_addr);
        let http = reqwest::Client::new();
        let knobs = http
            .put(format!("{control}/knobs/cms"))
            .json(&json!({"latencyMs": 5000}))
            .send()
            .await
            .unwrap();
        assert!(knobs.status().is_success(), "{}", knobs.status());
        let mut args = args(runtime.base_url(), 20);
        args.concurrency = 1;
        args.timeout_secs = 1;
        let summary = bench(&args, CancellationToken::new()).await.unwrap();
        let accepted = summary.intake.accepted;
        let refused = summary.intake.other_answers.get(&503).copied().unwrap_or(0);
        // Admission is a soft bound: an order counts once its actor has started.
        assert!((5..20).contains(&accepted), "{summary:?}");
        assert_eq!(accepted + refused, 20, "{summary:?}");
        assert!(summary.journey.timed_out);
        assert_eq!(summary.journey.unfinished, accepted);
        assert_eq!(summary.journey.ready, 0);
        assert!(summary.render().contains(&format!("503 x {refused}")));
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_node_is_an_error_not_an_empty_report() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = bench(&args(url, 1), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot reach the node"),
            "{error:#}"
        );
    }

    #[test]
    fn the_journey_runs_from_received_to_ready() {
        let event = |status: &str, millis: i64| HistoryEvent {
            status: status.into(),
            timestamp: DateTime::from_timestamp_millis(millis).unwrap(),
        };
        let ready = [
            event("RECEIVED", 1_000),
            event("CMS_VALIDATED", 1_004),
            event("READY_FOR_DELIVERY", 1_012),
        ];
        match outcome(&ready) {
            Outcome::Ready { received, ready } => {
                assert_eq!((ready - received).num_milliseconds(), 12);
            }
            _ => panic!("a ready order"),
        }
        let failed = [
            event("RECEIVED", 1),
            event("COMPENSATING", 2),
            event("FAILED", 3),
        ];
        assert!(matches!(outcome(&failed), Outcome::Failed));
        assert!(matches!(
            outcome(&[event("RECEIVED", 1)]),
            Outcome::Unfinished
        ));
        assert!(matches!(outcome(&[]), Outcome::Unreadable));
    }
}
