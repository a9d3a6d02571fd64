//! Which order shards this node holds now, and under which epoch: the fence of
//! DESIGN section 9. An order actor works under the lease of its shard and checks it
//! before every effect (a store write, a step request), so once a shard is lost or
//! handed over nothing of its old actors leaves the node, even mid-flight.

use std::sync::atomic::{AtomicU64, Ordering};

/// One ownership of one shard by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Lease {
    pub(crate) shard: u32,
    pub(crate) epoch: u64,
}

/// Epoch of each shard while held; 0 while not (epochs are never 0).
pub(crate) struct ShardTable {
    epochs: Vec<AtomicU64>,
}

impl ShardTable {
    pub fn new(shards: u32) -> Self {
        Self {
            epochs: (0..shards.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn shards(&self) -> u32 {
        self.epochs.len() as u32
    }

    fn slot(&self, shard: u32) -> Option<&AtomicU64> {
        self.epochs.get(shard as usize)
    }

    pub(crate) fn gain(&self, lease: Lease) {
        if let Some(slot) = self.slot(lease.shard) {
            slot.store(lease.epoch, Ordering::SeqCst);
        }
    }

    /// Ends `lease` if it is still the current one; true if it was.
    pub(crate) fn revoke(&self, lease: Lease) -> bool {
        self.slot(lease.shard).is_some_and(|slot| {
            slot.compare_exchange(lease.epoch, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    }

    pub(crate) fn holds(&self, lease: Lease) -> bool {
        lease.epoch != 0
            && self
                .slot(lease.shard)
                .is_some_and(|slot| slot.load(Ordering::SeqCst) == lease.epoch)
    }

    /// The current lease of `shard`, if held.
    pub(crate) fn lease(&self, shard: u32) -> Option<Lease> {
        let epoch = self.slot(shard)?.load(Ordering::SeqCst);
        (epoch != 0).then_some(Lease { shard, epoch })
    }

    /// Every lease held now, by ascending shard.
    pub(crate) fn held(&self) -> Vec<Lease> {
        (0..self.shards()).filter_map(|s| self.lease(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_revoked_and_a_newer_one_is_not_revoked_by_an_older() {
        let table = ShardTable::new(4);
        let first = Lease { shard: 2, epoch: 7 };
        assert!(!table.holds(first));
        table.gain(first);
        assert!(table.holds(first));
        assert_eq!(table.held(), vec![first]);
        let second = Lease { shard: 2, epoch: 9 };
        table.gain(second);
        assert!(!table.holds(first), "the old epoch is fenced off");
        assert!(!table.revoke(first), "a stale revoke leaves the new lease");
        assert!(table.holds(second));
        assert!(table.revoke(second));
        assert!(table.held().is_empty());
        assert!(!table.holds(Lease { shard: 9, epoch: 1 }));
        assert!(!table.holds(Lease { shard: 2, epoch: 0 }));
    }
}
