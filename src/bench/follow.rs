//! `bench --follow`: clients that follow their orders while the load runs, the way a
//! tracking page would, so that the cost of reads and of live updates is measured
//! together with the journeys they compete with.
//!
//! * `poll`: every accepted order is polled with `GET /api/orders/{id}/status` every
//!   `--poll-every-ms` until it reports a settled status (at most `--concurrency`
//!   polls in flight at once, so a slow node is not buried under reconnects).
//! * `ws`: one WebSocket session per client account, subscribed to `"*"` before the
//!   first order is placed; every `order-update` frame is timed from the event's
//!   timestamp to its arrival.

use super::report::{FollowReport, Latency, latency_histogram};
use super::scrape::SETTLED_STATUSES;
use super::ws::{self, Observed};
use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the bench's clients follow their orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FollowMode {
    /// Nobody follows: the bench watches `/metrics` only.
    None,
    /// Each order's status is polled until it settles.
    Poll,
    /// One WebSocket session per client account receives every update.
    Ws,
}

/// The followers of a running bench.
pub(crate) enum Followers {
    None,
    Poll(Arc<Pollers>),
    Ws(Sessions),
}

impl Followers {
    /// Sets up `mode`'s followers for `tokens` (one per account); WebSocket sessions
    /// are open and subscribed when this returns.
    pub async fn start(
        mode: FollowMode,
        http: &reqwest::Client,
        base: &str,
        tokens: &[Arc<str>],
        poll_every: Duration,
        concurrency: usize,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(match mode {
            FollowMode::None => Self::None,
            FollowMode::Poll => Self::Poll(Arc::new(Pollers {
                http: http.clone(),
                base: base.to_owned(),
                every: poll_every,
                in_flight: Semaphore::new(concurrency),
                tracker: TaskTracker::new(),
                stop: shutdown.child_token(),
                latency: Mutex::new(latency_histogram()?),
                polls: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            })),
            FollowMode::Ws => Self::Ws(Sessions::open(base, tokens, shutdown).await?),
        })
    }

    /// Called for every order the node accepted.
    pub(crate) fn accepted(&self, token: &Arc<str>, order_id: &str) {
        if let Self::Poll(pollers) = self {
            let (pollers, token, order_id) = (pollers.clone(), token.clone(), order_id.to_owned());
            let tracker = pollers.tracker.clone();
            tracker.spawn(async move { pollers.follow(&token, &order_id).await });
        }
    }

    /// Once every journey has settled (or the bench gave up): waits for the last
    /// polls or updates, then reports what the followers saw.
    pub(crate) async fn finish(
        self,
        accepted: u64,
        give_up: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<FollowReport>> {
        match self {
            Self::None => Ok(None),
            Self::Poll(pollers) => pollers.finish(accepted, give_up).await.map(Some),
            Self::Ws(sessions) => sessions.finish(accepted, shutdown).await.map(Some),
        }
    }
}

pub(crate) struct Pollers {
    http: reqwest::Client,
    base: String,
    every: Duration,
    in_flight: Semaphore,
    tracker: TaskTracker,
    stop: CancellationToken,
    latency: Mutex<Histogram<u64>>,
    polls: AtomicU64,
    failed: AtomicU64,
}

#[derive(Deserialize)]
struct StatusAnswer {
    status: String,
}

impl Pollers {
    async fn follow(&self, token: &str, order_id: &str) {
        let url = format!("{}/api/orders/{order_id}/status", self.base);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            let Ok(_slot) = self.in_flight.acquire().await else {
                return;
            };
            let started = Instant::now();
            let answer = self
                .http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            let status = match answer {
                Ok(response) => response.json::<StatusAnswer>().await.ok(),
                Err(_) => None,
            };
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.polls.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut latency) = self.latency.lock() {
                latency.saturating_record(micros.max(1));
            }
            match status {
                Some(s) if SETTLED_STATUSES.contains(&s.status.as_str()) => return,
                Some(_) => {}
                None => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn finish(&self, accepted: u64, give_up: Duration) -> anyhow::Result<FollowReport> {
        self.tracker.close();
        if tokio::time::timeout(give_up, self.tracker.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tracker.wait().await;
        }
        let latency = match self.latency.lock() {
            Ok(histogram) => Latency::of(&histogram),
            Err(_) => Latency::default(),
        };
        let polls = self.polls.load(Ordering::Relaxed);
        Ok(FollowReport {
            mode: FollowMode::Poll,
            received: polls,
            expected: None,
            per_order: per_order(polls, accepted),
            failed: self.failed.load(Ordering::Relaxed),
            latency,
        })
    }
}

fn per_order(count: u64, accepted: u64) -> f64 {
    if accepted == 0 {
        0.0
    } else {
        count as f64 / accepted as f64
    }
}

pub(crate) struct Sessions {
    observed: Arc<Observed>,
    stop: CancellationToken,
    readers: JoinSet<()>,
}

impl Sessions {
    async fn open(
        base: &str,
        tokens: &[Arc<str>],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let ws_url = format!("{}/ws", ws::ws_base(base)?);
        let observed = Arc::new(Observed::new()?);
        let stop = shutdown.child_token();
        let mut readers = JoinSet::new();
        for token in tokens {
            let session = ws::open_session(format!("{ws_url}?token={token}"), None)
                .await
                .map_err(anyhow::Error::msg)
                .context("cannot open a WebSocket session to follow orders")?;
            readers.spawn(ws::follow(session, observed.clone(), stop.clone()));
        }
        Ok(Self {
            observed,
            stop,
            readers,
        })
    }

    async fn finish(
        mut self,
        accepted: u64,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<FollowReport> {
        ws::drain(&self.observed, shutdown).await?;
        self.stop.cancel();
        while self.readers.join_next().await.is_some() {}
        let observed = &self.observed;
        let closed: BTreeMap<u16, u64> = observed
            .closed_by_node
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        if !closed.is_empty() {
            bail!("the node closed following sessions (close codes {closed:?})");
        }
        let latency = match observed.latency.lock() {
            Ok(histogram) => Latency::of(&histogram),
            Err(_) => Latency::default(),
        };
        let updates = observed.updates.load(Ordering::Relaxed);
        Ok(FollowReport {
            mode: FollowMode::Ws,
            received: updates,
            expected: Some(accepted * ws::UPDATES_PER_JOURNEY),
            per_order: per_order(updates, accepted),
            failed: observed.out_of_sequence.load(Ordering::Relaxed),
            latency,
        })
    }
}
