//! The figures a bench run ends with, as text for people and JSON for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latencies are recorded in microseconds up to an hour; slower ones are clamped.
pub(crate) const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// An empty latency histogram with three significant digits.
pub(crate) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)?)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub count: u64,
    pub(crate) p50_micros: u64,
    pub(crate) p90_micros: u64,
    pub(crate) p99_micros: u64,
    pub(crate) max_micros: u64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50_micros: histogram.value_at_quantile(0.50),
            p90_micros: histogram.value_at_quantile(0.90),
            p99_micros: histogram.value_at_quantile(0.99),
            max_micros: histogram.max(),
        }
    }

    fn render(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  max {}",
            duration(self.p50_micros),
            duration(self.p90_micros),
            duration(self.p99_micros),
            duration(self.max_micros)
        )
    }
}

/// Microseconds in the unit a reader takes in at a glance.
pub(crate) fn duration(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros} µs"),
        1_000..10_000_000 => format!("{:.1} ms", micros as f64 / 1_000.0),
        _ => format!("{:.1} s", micros as f64 / 1_000_000.0),
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Placing the orders: the `202 Accepted` of `POST /api/orders`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Intake {
    pub(crate) accepted: u64,
    pub(crate) elapsed_secs: f64,
    pub(crate) throughput_per_sec: f64,
    /// Client side, from the send (or, open loop, the scheduled send) to the whole
    /// answer.
    pub(crate) latency: Latency,
    /// Answers other than 202, by HTTP status (503 means admission refused).
    pub(crate) other_answers: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer, by cause.
    pub(crate) transport_errors: BTreeMap<String, u64>,
}

/// The orders' journeys from RECEIVED to READY_FOR_DELIVERY, by the node's clocks.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Journey {
    pub(crate) ready: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    /// Still on their way when following stopped.
    pub(crate) unfinished: u64,
    /// Orders whose event log could not be read afterwards.
    pub(crate) unreadable: u64,
    /// Following stopped at `--timeout-secs` before every order settled.
    pub(crate) timed_out: bool,
    /// From the first RECEIVED to the last READY_FOR_DELIVERY.
    pub(crate) window_secs: f64,
    pub(crate) throughput_per_sec: f64,
    /// READY_FOR_DELIVERY timestamp minus RECEIVED timestamp of each ready order.
    pub(crate) latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Memory {
    pub(crate) source: String,
    pub(crate) before_bytes: u64,
    /// Read as soon as the journeys had settled, while the order actors are alive.
    pub(crate) after_bytes: u64,
    pub(crate) per_live_order_bytes: Option<i64>,
    /// The highest reading, sampled every 100 ms while orders were placed and followed.
    pub(crate) peak_bytes: u64,
    /// Read again `--settle-secs` after the run (actors passivated, buffers freed).
    pub(crate) settled_bytes: Option<u64>,
}

/// What the `--follow` clients did and saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FollowReport {
    pub(crate) mode: super::follow::FollowMode,
    /// Status polls answered (`poll`) or update frames received (`ws`).
    pub(crate) received: u64,
    /// Updates full journeys would deliver (`ws` only).
    pub(crate) expected: Option<u64>,
    pub(crate) per_order: f64,
    /// Polls without a readable answer (`poll`), updates out of sequence (`ws`).
    pub(crate) failed: u64,
    /// Each poll's round trip (`poll`), or event timestamp to frame received (`ws`).
    pub(crate) latency: Latency,
}

/// CPU spent while the orders were placed and followed (not while registering or
/// reading event logs afterwards): on a machine shared with other work, CPU per order
/// is the figure that does not depend on what else ran.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Cpu {
    pub(crate) wall_secs: f64,
    /// The node's user plus system time, when it runs on this host (`--server-pid`).
    pub(crate) node_secs: Option<f64>,
    pub(crate) node_micros_per_order: Option<f64>,
    /// The bench's own time: load generation is not free on a shared machine either.
    pub(crate) bench_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) url: String,
    pub(crate) orders: u64,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<u32>,
    pub(crate) users: usize,
    pub(crate) intake: Intake,
    pub(crate) journey: Journey,
    pub(crate) follow: Option<FollowReport>,
    pub(crate) memory: Option<Memory>,
    pub(crate) cpu: Cpu,
}

/// `count` events spread over `secs`, per second; zero when no time passed.
pub(crate) fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// `key x n, ...`: how often each kind of answer or failure came.
pub(crate) fn tally<K: std::fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    counts
        .iter()
        .map(|(key, n)| format!("{key} x {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary {
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let mode = match self.rate {
            Some(rate) => format!(
                "open loop at {rate} orders/s (at most {} in flight)",
                self.concurrency
            ),
            None => format!("closed loop at concurrency {}", self.concurrency),
        };
        let _ = writeln!(
            text,
            "bench against {}: {} orders over {} clients, {mode}",
            self.url, self.orders, self.users
        );
        let intake = &self.intake;
        let _ = writeln!(
            text,
            "intake   {} accepted (202) in {:.2} s = {:.0} orders/s",
            intake.accepted, intake.elapsed_secs, intake.throughput_per_sec
        );
        let _ = writeln!(text, "         latency {}", intake.latency.render());
        if !intake.other_answers.is_empty() {
            let _ = writeln!(
                text,
                "         other answers: {}",
                tally(&intake.other_answers)
            );
        }
        if !intake.transport_errors.is_empty() {
            let _ = writeln!(
                text,
                "         no answer: {}",
                tally(&intake.transport_errors)
            );
        }
        let journey = &self.journey;
        let _ = writeln!(
            text,
            "journey  {} ready, {} failed, {} cancelled, {} unfinished, {} unreadable{}",
            journey.ready,
            journey.failed,
            journey.cancelled,
            journey.unfinished,
            journey.unreadable,
            if journey.timed_out {
                " (gave up waiting)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            text,
            "         {:.0} orders/s over {:.2} s from first RECEIVED to last READY_FOR_DELIVERY",
            journey.throughput_per_sec, journey.window_secs
        );
        let _ = writeln!(
            text,
            "         latency {} (RECEIVED to READY_FOR_DELIVERY, node clock)",
            journey.latency.render()
        );
        if let Some(follow) = &self.follow {
            let (what, failed) = match follow.mode {
                super::follow::FollowMode::Ws => ("updates received", "out of sequence"),
                _ => ("status polls", "unreadable"),
            };
            let expected = follow
                .expected
                .map_or_else(String::new, |n| format!(" of {n} for full journeys"));
            let _ = writeln!(
                text,
                "follow   {} {what}{expected} ({:.1} per order), {} {failed}",
                follow.received, follow.per_order, follow.failed
            );
            let _ = writeln!(text, "         latency {}", follow.latency.render());
        }
        match &self.memory {
            Some(memory) => {
                let per_order = memory
                    .per_live_order_bytes
                    .map_or_else(|| "n/a".to_owned(), |b| format!("{b} bytes"));
                let _ = writeln!(
                    text,
                    "memory   RSS {} before, peak {}, {} right after the journeys ({}): {per_order} per live order",
                    mebibytes(memory.before_bytes),
                    mebibytes(memory.peak_bytes),
                    mebibytes(memory.after_bytes),
                    memory.source
                );
                if let Some(settled) = memory.settled_bytes {
                    let _ = writeln!(text, "         RSS {} after settling", mebibytes(settled));
                }
            }
            None => {
                let _ = writeln!(
                    text,
                    "memory   unknown: the node exports no process_resident_memory_bytes; pass --server-pid"
                );
            }
        }
        let cpu = &self.cpu;
        let node = match (cpu.node_secs, cpu.node_micros_per_order) {
            (Some(secs), Some(per_order)) => {
                format!(
                    "node {secs:.1} s ({} per order)",
                    duration(per_order as u64)
                )
            }
            (Some(secs), None) => format!("node {secs:.1} s"),
            _ => "node unknown (pass --server-pid)".to_owned(),
        };
        let bench = cpu
            .bench_secs
            .map_or_else(|| "bench unknown".to_owned(), |s| format!("bench {s:.1} s"));
        let _ = writeln!(
            text,
            "cpu      {node}, {bench}, over {:.1} s of placing and following",
            cpu.wall_secs
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_latencies() {
        let mut histogram = latency_histogram().unwrap();
        for micros in 1..=1000 {
            histogram.record(micros * 100).unwrap();
        }
        let latency = Latency::of(&histogram);
        assert_eq!(latency.count, 1000);
        // Three significant digits: within 0.1 %.
        assert!(
            (49_950..=50_050).contains(&latency.p50_micros),
            "{latency:?}"
        );
        assert!(
            (89_910..=90_090).contains(&latency.p90_micros),
            "{latency:?}"
        );
        assert!(
            (98_900..=99_100).contains(&latency.p99_micros),
            "{latency:?}"
        );
        assert!(
            (99_900..=100_100).contains(&latency.max_micros),
            "{latency:?}"
        );
    }

    #[test]
    fn an_empty_histogram_reports_no_samples() {
        let latency = Latency::of(&latency_histogram().unwrap());
        assert_eq!(latency, Latency::default());
        assert_eq!(latency.render(), "no samples");
    }

    #[test]
    fn durations_are_rendered_in_a_readable_unit() {
        assert_eq!(duration(850), "850 µs");
        assert_eq!(duration(12_345), "12.3 ms");
        assert_eq!(duration(42_000_000), "42.0 s");
    }

    #[test]
    fn the_text_shows_refusals_and_missing_memory() {
        let summary = Summary {
            url: "http://127.0.0.1:3000".into(),
            orders: 10,
            concurrency: 4,
            rate: Some(100),
            users: 2,
            intake: Intake {
                accepted: 8,
                elapsed_secs: 0.1,
                throughput_per_sec: 80.0,
                latency: Latency::default(),
                other_answers: BTreeMap::from([(503, 2)]),
                transport_errors: BTreeMap::new(),
            },
            journey: Journey {
                ready: 8,
                failed: 0,
                cancelled: 0,
                unfinished: 0,
                unreadable: 0,
                timed_out: false,
                window_secs: 0.2,
                throughput_per_sec: 40.0,
                latency: Latency::default(),
            },
            follow: None,
            memory: None,
            cpu: Cpu {
                wall_secs: 0.3,
                node_secs: Some(0.5),
                node_micros_per_order: Some(62_500.0),
                bench_secs: None,
            },
        };
        let text = summary.render();
        assert!(text.contains("other answers: 503 x 2"), "{text}");
        assert!(text.contains("open loop at 100 orders/s"), "{text}");
        assert!(text.contains("pass --server-pid"), "{text}");
        assert!(text.contains("node 0.5 s (62.5 ms per order)"), "{text}");
    }
}
