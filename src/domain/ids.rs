//! Identifiers. Order ids follow the seed's `ORD-YYYYMMDD-XXXXXXXX` form so that
//! operators can read the intake day off an id. The suffix starts with the
//! millisecond of the day, so ids sort by intake time: the orders in flight are
//! neighbours in every index keyed by id, and a store writes a few pages per batch
//! of transitions instead of one page per order. The random rest is long enough
//! that ids from many nodes never collide without coordination.

use chrono::{DateTime, Timelike, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of the millisecond of the day: 32^6 > 86,400,000.
const TIME_CHARS: u32 = 6;
/// Random characters after it: 40 bits per millisecond.
const RANDOM_CHARS: usize = 8;

/// The millisecond of the day in fixed-width base 32, which sorts like the number.
fn time_of_day(now: DateTime<Utc>) -> String {
    let millis = now.num_seconds_from_midnight() * 1000 + (now.nanosecond() / 1_000_000).min(999);
    (0..TIME_CHARS)
        .rev()
        .map(|digit| ALPHABET[(millis >> (5 * digit)) as usize % ALPHABET.len()] as char)
        .collect()
}

fn random_suffix(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    pub fn generate(now: DateTime<Utc>) -> Self {
        Self(format!(
            "ORD-{}-{}{}",
            now.format("%Y%m%d"),
            time_of_day(now),
            random_suffix(RANDOM_CHARS)
        ))
    }

    /// Accepts any id that is safe to embed in a TCP line, a SOAP body and a URL path:
    /// ids come back to us from clients and from external systems.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Stable across processes and releases (FNV-1a), so every node maps an order to
    /// the same shard.
    pub fn shard(&self, shards: u32) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for b in self.0.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % shards.max(1)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn generate() -> Self {
        Self(format!("usr_{}", random_suffix(12).to_lowercase()))
    }

    pub fn from_trusted(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_order_ids_parse_and_carry_the_day() {
        let now = DateTime::parse_from_rfc3339("2026-02-04T16:20:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = OrderId::generate(now);
        assert!(id.as_str().starts_with("ORD-20260204-"));
        assert_eq!(OrderId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn ids_sort_by_intake_time() {
        let at = |rfc3339: &str| {
            OrderId::generate(
                DateTime::parse_from_rfc3339(rfc3339)
                    .unwrap()
                    .with_timezone(&Utc),
            )
        };
        let ids = [
            at("2026-02-04T00:00:00.000Z"),
            at("2026-02-04T00:00:00.001Z"),
            at("2026-02-04T09:59:59.999Z"),
            at("2026-02-04T10:00:00.000Z"),
            at("2026-02-04T23:59:59.999Z"),
            at("2026-02-05T00:00:00.000Z"),
        ];
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert_eq!(ids[0].as_str().len(), "ORD-20260204-".len() + 14);
    }

    #[test]
    fn ids_that_would_break_a_protocol_are_refused() {
        for bad in ["", "a|b", "a b", "a\nb", "<x>", "a/b", &"x".repeat(65)] {
            assert_eq!(OrderId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        let id = OrderId::parse("ORD-20260204-ABC123").unwrap();
        assert_eq!(id.shard(8), id.shard(8));
        assert!(id.shard(8) < 8);
        assert_eq!(id.shard(0), 0);
    }
}
