//! What the bench reads from the node under load: order counts and resident memory.
//!
//! The bench follows journeys through `/metrics` instead of polling every order, so
//! that following 20,000 orders costs the node ten cheap scrapes a second rather than
//! thousands of order reads competing with the load being measured.

use anyhow::{Context as _, bail};
use std::time::Duration;

/// Statuses an order reaches at the end of its processing: ready for a driver (or
/// already past that), or given up.
pub(crate) const SETTLED_STATUSES: [&str; 5] = [
    "READY_FOR_DELIVERY",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
    "FAILED",
    "CANCELLED",
];

const ORDERS_GAUGE: &str = "swift_orders";
const RSS_GAUGE: &str = "process_resident_memory_bytes";
/// One scrape must not take longer than the interval of a few of them.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The value of the sample `name{label="value"}` (or of `name` with no labels when
/// `label` is `None`) in Prometheus text exposition format.
pub(crate) fn sample(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(labelled) => {
                let (labels, value) = labelled.split_once('}')?;
                (labels, value)
            }
            // `name` must be the whole metric name, not a prefix of a longer one.
            None if rest.starts_with([' ', '\t']) => ("", rest),
            None => return None,
        };
        let matches = match label {
            None => labels.is_empty(),
            Some((key, wanted)) => labels.split(',').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == key && v.trim().trim_matches('"') == wanted)
            }),
        };
        if !matches {
            return None;
        }
        // A sample may carry a timestamp after its value.
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Orders whose processing has ended, over every status in [`SETTLED_STATUSES`].
pub(crate) fn settled_orders(text: &str) -> u64 {
    SETTLED_STATUSES
        .iter()
        .filter_map(|status| sample(text, ORDERS_GAUGE, Some(("status", status))))
        .map(|count| count.max(0.0) as u64)
        .sum()
}

/// Resident memory of the node as its own gauge reports it.
pub(crate) fn resident_bytes(text: &str) -> Option<u64> {
    sample(text, RSS_GAUGE, None).map(|bytes| bytes.max(0.0) as u64)
}

/// `VmRSS` of a `/proc/<pid>/status` document, in bytes.
pub(crate) fn vm_rss_bytes(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut fields = rest.split_whitespace();
    let amount: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => amount.checked_mul(1024),
        Some(_) => None,
    }
}

/// Linux reports process times in clock ticks of `USER_HZ`, 100 on every mainstream
/// architecture (a fixed part of the kernel ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of all threads of a process, from its
/// `/proc/<pid>/stat` document.
pub(crate) fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may itself contain spaces or
    // parentheses; the fields after the last `)` start with the state (field 3).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_SECOND)
}

/// CPU seconds used so far by the process `pid` (`None`: this process).
pub(crate) async fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = tokio::fs::read_to_string(path).await.ok()?;
    cpu_seconds(&stat)
}

/// The node's `/metrics` page.
pub(crate) async fn metrics(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = http
        .get(format!("{base}/metrics"))
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .context("cannot scrape /metrics")?;
    if !response.status().is_success() {
        bail!("/metrics answered {}", response.status());
    }
    response.text().await.context("cannot read /metrics")
}

/// Where the node's resident memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemorySource {
    /// The node's `process_resident_memory_bytes` gauge.
    Gauge,
    /// `/proc/<pid>/status` of a node on this host.
    Proc(u32),
}

impl MemorySource {
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Gauge => RSS_GAUGE.to_owned(),
            Self::Proc(pid) => format!("/proc/{pid}/status VmRSS"),
        }
    }

    /// Resident memory now, or `None` when this source cannot be read.
    pub(crate) async fn read(self, http: &reqwest::Client, base: &str) -> Option<u64> {
        match self {
            Self::Gauge => {
                let text = metrics(http, base).await.ok()?;
                resident_bytes(&text)
            }
            Self::Proc(pid) => {
                let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
                    .await
                    .ok()?;
                vm_rss_bytes(&status)
            }
        }
    }
}

/// Reads `source` every `every` until `stop` and returns the highest reading (a
/// `/proc` read costs the node nothing; a gauge is one more scrape per interval).
pub(crate) async fn peak_memory(
    source: MemorySource,
    http: reqwest::Client,
    base: String,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Option<u64> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return peak,
            _ = ticks.tick() => {}
        }
        if let Some(now) = source.read(&http, &base).await {
            peak = peak.max(Some(now));
        }
    }
}

/// `/proc` of `--server-pid` when it can be read (sampling it costs the node
/// nothing), else the node's own gauge when it exports one.
pub(crate) async fn memory_source(
    http: &reqwest::Client,
    base: &str,
    server_pid: Option<u32>,
) -> Option<MemorySource> {
    if let Some(pid) = server_pid {
        let source = MemorySource::Proc(pid);
        if source.read(http, base).await.is_some() {
            return Some(source);
        }
    }
    let text = metrics(http, base).await.ok()?;
    resident_bytes(&text).map(|_| MemorySource::Gauge)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE swift_orders gauge
swift_orders{status=\"RECEIVED\"} 3
swift_orders{status=\"READY_FOR_DELIVERY\"} 1200
swift_orders{status=\"FAILED\"} 7
swift_orders{status=\"CANCELLED\"} 0
swift_orders_in_flight 3
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 52428800 1700000000000
";

    #[test]
    fn reads_labelled_and_plain_samples() {
        assert_eq!(
            sample(PAGE, "swift_orders", Some(("status", "RECEIVED"))),
            Some(3.0)
        );
        assert_eq!(sample(PAGE, "swift_orders_in_flight", None), Some(3.0));
        assert_eq!(resident_bytes(PAGE), Some(52_428_800));
    }

    #[test]
    fn a_metric_name_is_not_matched_by_its_prefix() {
        assert_eq!(sample(PAGE, "swift_orders", None), None);
        assert_eq!(
            sample(PAGE, "swift_order", Some(("status", "FAILED"))),
            None
        );
        assert_eq!(
            resident_bytes("process_resident_memory_bytes_max 9\n"),
            None
        );
    }

    #[test]
    fn settled_orders_add_ready_failed_and_cancelled_but_not_in_progress() {
        assert_eq!(settled_orders(PAGE), 1207);
        assert_eq!(settled_orders("garbage {\n}}} 12\n"), 0);
    }

    #[test]
    fn cpu_time_adds_user_and_system_ticks_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("4242 (short) S 1"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tswiftlogistics\nVmPeak:\t  900 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(vm_rss_bytes(status), Some(40_960 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None);
    }
}
