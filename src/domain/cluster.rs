//! The cluster of DESIGN section 9, as pure decisions: which node should own which
//! order shard, and who is in the cluster as far as this node has heard.
//!
//! Nothing here decides safety. The broker's single active consumer makes two
//! active owners of a shard impossible at the queue; these decisions only steer
//! which node lets go of which shard so that the work spreads evenly.

use super::System;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A circuit's state as other nodes see it (`CLOSED`, `OPEN`, `HALF_OPEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CircuitReport {
    pub(crate) service: System,
    pub(crate) circuit: CircuitState,
}

/// What a node announces about itself with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub(crate) node_id: String,
    /// Changes with every start of the process, so a restarted node is told apart
    /// from the one that died under the same id.
    pub(crate) incarnation: String,
    /// Draining: it takes no new shards and the others count it out at once.
    pub(crate) leaving: bool,
    /// Shards this node is the active consumer of, ascending.
    pub(crate) shards: Vec<u32>,
    pub(crate) order_actors: u64,
    /// Live order actors per shard: only shards in `shards` should appear.
    pub(crate) order_actors_by_shard: BTreeMap<u32, u64>,
    /// Orders being processed under this node's admission bound.
    pub(crate) in_flight: u64,
    pub(crate) circuits: Vec<CircuitReport>,
    pub(crate) sent_at: DateTime<Utc>,
}

/// 64-bit mix of a node id and a shard (FNV-1a, then SplitMix64's finaliser): the
/// same on every node and every build, unlike the standard library's hasher.
fn score(node: &str, shard: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain(shard.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The owner every node computes for each shard, from the same set of live nodes:
/// rendezvous hashing with bounded load. Each shard prefers the nodes that score
/// highest with it; a node takes shards in that order until it holds its share, so
/// counts differ by at most one and a change of membership moves few shards.
pub(crate) fn placement(shards: u32, nodes: &BTreeSet<String>) -> BTreeMap<u32, String> {
    let mut owners = BTreeMap::new();
    if nodes.is_empty() {
        return owners;
    }
    let count = nodes.len() as u32;
    let (base, extra) = (shards / count, shards % count);
    let mut pairs: Vec<(u64, &str, u32)> = nodes
        .iter()
        .flat_map(|node| (0..shards).map(move |shard| (score(node, shard), node.as_str(), shard)))
        .collect();
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    let mut held: BTreeMap<&str, u32> = BTreeMap::new();
    let mut above_base = 0;
    for (_, node, shard) in pairs {
        if owners.contains_key(&shard) {
            continue;
        }
        let count = held.entry(node).or_default();
        let room = *count < base || (*count == base && above_base < extra);
        if !room {
            continue;
        }
        if *count == base {
            above_base += 1;
        }
        *count += 1;
        owners.insert(shard, node.to_owned());
    }
    owners
}

struct Peer {
    report: NodeReport,
    heard: Instant,
}

/// The nodes this node has heard from recently. The view may differ between nodes
/// for a moment; it steers balancing only.
pub(crate) struct Membership {
    me: String,
    timeout: Duration,
    peers: BTreeMap<String, Peer>,
}

impl Membership {
    /// A node not heard from for `timeout` counts as gone.
    pub fn new(me: &str, timeout: Duration) -> Self {
        Self {
            me: me.to_owned(),
            timeout,
            peers: BTreeMap::new(),
        }
    }

    /// Records a heartbeat; true when it brings news that changes the fair share
    /// (a node new to the view, or one that started to leave).
    pub(crate) fn heard(&mut self, report: NodeReport, now: Instant) -> bool {
        let news = match self.peers.get(&report.node_id) {
            None => true,
            Some(peer) => peer.report.leaving != report.leaving || self.expired(peer, now),
        };
        let id = report.node_id.clone();
        self.peers.insert(id, Peer { report, heard: now });
        news
    }

    fn expired(&self, peer: &Peer, now: Instant) -> bool {
        now.saturating_duration_since(peer.heard) > self.timeout
    }

    /// Forgets the nodes gone silent; returns their ids.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(id, peer)| **id != self.me && self.expired(peer, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.peers.remove(id);
        }
        gone
    }

    /// The nodes that share the shards: every node heard in time and not leaving,
    /// plus this one unless `leaving`.
    pub(crate) fn sharing(&self, leaving: bool, now: Instant) -> BTreeSet<String> {
        let mut nodes: BTreeSet<String> = self
            .peers
            .iter()
            .filter(|(id, peer)| {
                **id != self.me && !peer.report.leaving && !self.expired(peer, now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !leaving {
            nodes.insert(self.me.clone());
        }
        nodes
    }

    /// Shards that some other live node says it is active on.
    pub(crate) fn claimed_elsewhere(&self, now: Instant) -> BTreeSet<u32> {
        self.peers
            .iter()
            .filter(|(id, peer)| **id != self.me && !self.expired(peer, now))
            .flat_map(|(_, peer)| peer.report.shards.iter().copied())
            .collect()
    }

    /// Whether this node, active on `shard`, keeps it. It hands a shard over to its
    /// fair owner, except to an owner whose last heartbeat still claims the shard:
    /// the broker made this node active, so that claim is stale (the owner died or
    /// lost its connection), and the owner counts as gone for this shard. Without
    /// that, the survivors of a node's death would bounce its shards between them
    /// until it is counted out. An owner back as a standby no longer claims the
    /// shard in its next heartbeat and gets it then.
    pub(crate) fn keeps(&self, shard: u32, shards: u32, leaving: bool, now: Instant) -> bool {
        let mut sharing = self.sharing(leaving, now);
        while let Some(owner) = placement(shards, &sharing).remove(&shard) {
            if owner == self.me {
                return true;
            }
            let stale = self
                .peers
                .get(&owner)
                .is_some_and(|peer| peer.report.shards.contains(&shard));
            if !stale {
                return false;
            }
            sharing.remove(&owner);
        }
        false
    }

    /// The last report of every node in the view with when it was heard.
    pub(crate) fn reports(&self) -> impl Iterator<Item = (&NodeReport, Instant)> {
        self.peers.values().map(|peer| (&peer.report, peer.heard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn counts(owners: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in owners.values() {
            *counts.entry(node.clone()).or_default() += 1;
        }
        counts
    }

    fn report(node: &str, shards: &[u32], leaving: bool) -> NodeReport {
        NodeReport {
            node_id: node.to_owned(),
            incarnation: "i".into(),
            leaving,
            shards: shards.to_vec(),
            order_actors: 0,
            order_actors_by_shard: BTreeMap::new(),
            in_flight: 0,
            circuits: Vec::new(),
            sent_at: Utc::now(),
        }
    }

    #[test]
    fn every_shard_gets_one_owner_and_counts_differ_by_at_most_one() {
        for shards in [1, 7, 8, 32, 64] {
            for size in 1..=7 {
                let names: Vec<String> = (0..size).map(|i| format!("host-{i}:3000")).collect();
                let set: BTreeSet<String> = names.into_iter().collect();
                let owners = placement(shards, &set);
                assert_eq!(owners.len(), shards as usize);
                let counts = counts(&owners);
                let (min, max) = (
                    counts.values().min().copied().unwrap_or(0),
                    counts.values().max().copied().unwrap_or(0),
                );
                let expected_min = if (shards as usize) < size { 0 } else { min };
                assert!(max - expected_min <= 1, "{shards} over {size}: {counts:?}");
            }
        }
    }

    #[test]
    fn every_node_computes_the_same_placement() {
        let a = placement(32, &nodes(&["a", "b", "c"]));
        let b = placement(32, &nodes(&["c", "a", "b"]));
        assert_eq!(a, b);
    }

    #[test]
    fn a_node_joining_or_leaving_moves_few_shards() {
        let three = placement(32, &nodes(&["a", "b", "c"]));
        let four = placement(32, &nodes(&["a", "b", "c", "d"]));
        let moved = (0..32).filter(|s| three[s] != four[s]).count();
        // The newcomer takes its 8; a perfect scheme moves exactly those.
        assert!(moved <= 12, "{moved} shards moved");
        let two = placement(32, &nodes(&["a", "b"]));
        let kept = (0..32)
            .filter(|s| three[s] != "c" && three[s] == two[s])
            .count();
        let not_on_c = (0..32).filter(|s| three[s] != "c").count();
        assert!(kept + 4 >= not_on_c, "only {kept} of {not_on_c} stayed put");
    }

    #[test]
    fn no_node_no_owner() {
        assert!(placement(8, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn membership_counts_silent_and_leaving_nodes_out() {
        let start = Instant::now();
        let mut view = Membership::new("me", Duration::from_secs(3));
        assert_eq!(view.sharing(false, start), nodes(&["me"]));
        assert!(view.heard(report("b", &[1, 2], false), start));
        assert!(!view.heard(report("b", &[1, 2], false), start));
        assert!(view.heard(report("c", &[3], false), start));
        assert_eq!(view.sharing(false, start), nodes(&["b", "c", "me"]));
        assert_eq!(view.claimed_elsewhere(start), [1, 2, 3].into());
        // c starts draining: out of the share at once, its claims still count.
        assert!(view.heard(report("c", &[3], true), start));
        assert_eq!(view.sharing(false, start), nodes(&["b", "me"]));
        assert_eq!(view.sharing(true, start), nodes(&["b"]));
        // b keeps talking, c goes silent.
        let later = start + Duration::from_secs(4);
        view.heard(report("b", &[1, 2, 3], false), later);
        assert_eq!(view.expire(later), vec!["c".to_owned()]);
        assert_eq!(view.sharing(false, later), nodes(&["b", "me"]));
        assert_eq!(view.claimed_elsewhere(later), [1, 2, 3].into());
    }

    #[test]
    fn a_shard_goes_to_its_fair_owner_unless_that_owner_lost_it() {
        let start = Instant::now();
        let mut view = Membership::new("me", Duration::from_secs(3));
        view.heard(report("b", &[], false), start);
        view.heard(report("c", &[], false), start);
        let owners = placement(12, &nodes(&["b", "c", "me"]));
        let of = |node: &str| (0..12).find(|s| owners[s] == node).unwrap();
        assert!(view.keeps(of("me"), 12, false, start));
        assert!(
            !view.keeps(of("b"), 12, false, start),
            "b stands by: hand it over"
        );
        // c's last heartbeat claims a shard this node was just made active on: c has
        // lost it (died or was cut off). Handing it back would bounce it; it goes to
        // its fair owner among the others instead.
        let lost = of("c");
        view.heard(report("c", &[lost], false), start);
        let without_c = placement(12, &nodes(&["b", "me"]));
        assert_eq!(view.keeps(lost, 12, false, start), without_c[&lost] == "me");
        // c is back, standing by: now it gets its share.
        view.heard(report("c", &[], false), start);
        assert!(!view.keeps(lost, 12, false, start));
        // Leaving with nobody else to take it: handed over all the same.
        let alone = Membership::new("me", Duration::from_secs(3));
        assert!(!alone.keeps(of("me"), 12, true, start));
    }
}
