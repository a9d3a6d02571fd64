//! Identifiers. Order ids follow the seed's `ORD-YYYYMMDD-XXXXXXXX` form so that
//! operators can read the intake day off an id; the random part is long enough that
//! ids from many nodes never collide without coordination.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

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
            "ORD-{}-{}",
            now.format("%Y%m%d"),
            random_suffix(10)
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
