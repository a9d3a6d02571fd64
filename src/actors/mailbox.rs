//! Mailbox figures of an actor (or a bridge): depth, messages taken, and the time each
//! message waited between being sent and being handled.
//!
//! ractor does not expose its queues, so senders `post` (depth up, and a `Posted`
//! stamp that travels inside the message) and the actor hands the stamp back with
//! `took` when it handles the message (depth down, wait observed). The hot-path cost
//! is two clock reads and a few relaxed atomics per message; with `[telemetry]
//! mailbox_timing = false` the clock reads go too.

use crate::observability::MAILBOX_WAIT;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Wait buckets: four per power of two of microseconds (about 19 % wide), up to
/// 2^40 µs. Enough to read p50 and p99 off within a bucket's width.
const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = 41 * SUB_BUCKETS as usize;

/// When a message was sent (if timing is on), carried inside it to its handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posted {
    at: Option<Instant>,
    /// Whether the sender counted it into the depth.
    counted: bool,
}

impl Posted {
    /// A message sent without going through the gauge (a wake-up the node sends
    /// itself): its wait is observed, the depth left alone.
    pub(crate) fn uncounted() -> Self {
        Self {
            at: Some(Instant::now()),
            counted: false,
        }
    }
}

/// A message with its `Posted` stamp, for actors whose every message is counted.
pub(crate) struct Stamped<M> {
    pub(crate) posted: Posted,
    pub(crate) message: M,
}

struct Inner {
    family: &'static str,
    actor: String,
    timing: bool,
    depth: AtomicU64,
    handled: AtomicU64,
    waits: Box<[AtomicU64]>,
    wait_histogram: metrics::Histogram,
    handled_counter: metrics::Counter,
}

/// One actor's mailbox figures; clones share them.
#[derive(Clone)]
pub(crate) struct MailboxGauge(Arc<Inner>);

impl std::fmt::Debug for MailboxGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxGauge")
            .field("actor", &self.0.actor)
            .field("depth", &self.depth())
            .finish()
    }
}

/// The cumulative figures of one mailbox at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MailboxReading {
    pub(crate) family: &'static str,
    pub(crate) actor: String,
    pub(crate) depth: u64,
    pub(crate) handled: u64,
    pub(crate) waits: Vec<u64>,
}

impl MailboxGauge {
    /// `family`: adapters, orders, notifier or bridges; `actor`: the member's name.
    pub fn new(family: &'static str, actor: impl Into<String>, timing: bool) -> Self {
        let actor = actor.into();
        let labels = [("family", family.to_owned()), ("actor", actor.clone())];
        Self(Arc::new(Inner {
            family,
            timing,
            depth: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            waits: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            wait_histogram: metrics::histogram!(MAILBOX_WAIT, &labels),
            handled_counter: metrics::counter!("swift_mailbox_messages_total", &labels),
            actor,
        }))
    }

    /// A message is about to be sent; the stamp goes inside it.
    pub(crate) fn post(&self) -> Posted {
        self.0.depth.fetch_add(1, Ordering::Relaxed);
        Posted {
            at: self.0.timing.then(Instant::now),
            counted: true,
        }
    }

    /// Sending the posted message failed: it never reached the mailbox.
    pub(crate) fn unpost(&self) {
        self.down();
    }

    /// The actor took a posted message.
    pub(crate) fn took(&self, posted: Posted) {
        if posted.counted {
            self.down();
        }
        let wait = posted.at.filter(|_| self.0.timing).map(|at| at.elapsed());
        self.received(wait);
    }

    /// A message arrived that waited `wait` somewhere this node did not queue it (a
    /// bridge: on the bus), counted without touching the depth.
    pub(crate) fn received(&self, wait: Option<Duration>) {
        self.0.handled.fetch_add(1, Ordering::Relaxed);
        self.0.handled_counter.increment(1);
        if let Some(wait) = wait {
            self.0.waits[bucket(wait)].fetch_add(1, Ordering::Relaxed);
            self.0.wait_histogram.record(wait.as_secs_f64());
        }
    }

    fn down(&self) {
        let _ = self
            .0
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub(crate) fn depth(&self) -> u64 {
        self.0.depth.load(Ordering::Relaxed)
    }

    pub(crate) fn timing(&self) -> bool {
        self.0.timing
    }

    pub(crate) fn read(&self) -> MailboxReading {
        MailboxReading {
            family: self.0.family,
            actor: self.0.actor.clone(),
            depth: self.depth(),
            handled: self.0.handled.load(Ordering::Relaxed),
            waits: self
                .0
                .waits
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

fn bucket(wait: Duration) -> usize {
    let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX).max(1);
    let power = 63 - micros.leading_zeros();
    let sub = if power >= 2 {
        (micros >> (power - 2)) & u64::from(SUB_BUCKETS - 1)
    } else {
        0
    };
    let index = power as usize * SUB_BUCKETS as usize + sub as usize;
    index.min(BUCKETS - 1)
}

/// The upper edge of a bucket, in milliseconds.
fn bucket_ceiling_ms(index: usize) -> f64 {
    let power = (index / SUB_BUCKETS as usize) as i32;
    let sub = (index % SUB_BUCKETS as usize) as f64;
    let micros = if power >= 2 {
        2f64.powi(power) * (1.0 + (sub + 1.0) / f64::from(SUB_BUCKETS))
    } else {
        2f64.powi(power + 1)
    };
    micros / 1000.0
}

/// The wait below which `quantile` of the counted messages stayed, from the bucket
/// counts of a window; `None` for an empty window.
pub(crate) fn wait_quantile_ms(waits: &[u64], quantile: f64) -> Option<f64> {
    let total: u64 = waits.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in waits.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_ceiling_ms(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_quarters_of_a_power_of_two() {
        let us = Duration::from_micros;
        assert_eq!(bucket(us(0)), 0);
        assert_eq!(bucket(us(4)), 8);
        assert_eq!(bucket(us(5)), 9);
        assert_eq!(bucket(us(7)), 11);
        assert_eq!(bucket(us(8)), 12);
        assert!(bucket_ceiling_ms(bucket(us(1000))) >= 1.0);
        assert!(bucket_ceiling_ms(bucket(us(1000))) < 1.2);
        assert_eq!(bucket(Duration::from_secs(1_000_000_000)), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_window_counts() {
        let mut waits = vec![0u64; BUCKETS];
        waits[bucket(Duration::from_micros(100))] = 98;
        waits[bucket(Duration::from_millis(50))] = 2;
        let p50 = wait_quantile_ms(&waits, 0.5).unwrap();
        let p99 = wait_quantile_ms(&waits, 0.99).unwrap();
        assert!((0.1..0.12).contains(&p50), "{p50}");
        assert!((50.0..60.0).contains(&p99), "{p99}");
        assert_eq!(wait_quantile_ms(&vec![0; BUCKETS], 0.5), None);
    }

    #[test]
    fn depth_follows_posts_and_takes() {
        let gauge = MailboxGauge::new("orders", "orders", true);
        let first = gauge.post();
        let _second = gauge.post();
        gauge.unpost();
        assert_eq!(gauge.depth(), 1);
        gauge.took(first);
        gauge.took(first);
        assert_eq!(gauge.depth(), 0, "never below zero");
        let reading = gauge.read();
        assert_eq!(reading.handled, 2);
        assert_eq!(reading.waits.iter().sum::<u64>(), 2);
    }

    #[test]
    fn without_timing_messages_are_counted_but_not_timed() {
        let gauge = MailboxGauge::new("orders", "orders", false);
        let posted = gauge.post();
        gauge.took(posted);
        let reading = gauge.read();
        assert_eq!((reading.depth, reading.handled), (0, 1));
        assert_eq!(reading.waits.iter().sum::<u64>(), 0);
    }
}
