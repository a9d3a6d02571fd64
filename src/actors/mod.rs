//! The supervisor tree of DESIGN section 3.
//!
//! ```text
//! root (supervisor)
//! ├── telemetry    lifecycle events, restarts, mailbox depths
//! ├── adapters     one_for_one, restart intensity limit and backoff
//! │   ├── adapter-cms   ├── adapter-wms   └── adapter-ros
//! ├── orders       one OrderActor per live order, on demand
//! ├── notifier     fans order updates out to WebSocket sessions
//! ├── cluster      membership, shard balancing and hand-over, drain
//! └── bridges      bus consumers feeding the adapters, orders and cluster
//! ```

pub(crate) mod adapter;
pub(crate) mod adapters;
pub(crate) mod bridge;
pub(crate) mod circuit;
pub(crate) mod cluster;
pub(crate) mod control;
pub(crate) mod mailbox;
pub(crate) mod notifier;
pub(crate) mod order;
pub(crate) mod orders;
pub(crate) mod outbox;
pub(crate) mod parked;
pub(crate) mod root;
pub(crate) mod shards;
pub(crate) mod supervision;
pub mod telemetry;
pub(crate) mod timer;

pub use control::{ActorKind, ActorNode, CircuitState, RuntimeControl, ServiceHealth};
pub(crate) use root::Root;

use crate::bus::{Listeners, SharedBus};
use crate::config::Settings;
use crate::domain::System;
use crate::service::Admission;
use crate::store::SharedStore;
use adapter::{AdapterCore, AdapterMsg};
use ractor::ActorRef;
use shards::ShardTable;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use telemetry::TelemetryMsg;

/// What every actor of the tree may use.
pub struct Context {
    /// This node's id in the cluster (`cluster.node_id`).
    pub node_id: String,
    pub(crate) settings: Arc<Settings>,
    pub store: SharedStore,
    pub(crate) bus: SharedBus,
    pub(crate) admission: Arc<Admission>,
    /// The shards this node holds now: the fence of every order actor.
    pub(crate) shards: Arc<ShardTable>,
    pub(crate) telemetry: ActorRef<TelemetryMsg>,
    pub(crate) adapters: AdapterDirectory,
    /// This node's live-tracking sessions, which the notifier counts for the bus.
    pub(crate) listeners: Listeners,
}

/// The adapters' lasting cores and their current actors, which change on restart.
#[derive(Default)]
pub(crate) struct AdapterDirectory {
    cores: HashMap<System, Arc<AdapterCore>>,
    live: RwLock<HashMap<System, ActorRef<AdapterMsg>>>,
}

impl AdapterDirectory {
    pub fn new(cores: impl IntoIterator<Item = AdapterCore>) -> Self {
        Self {
            cores: cores.into_iter().map(|c| (c.system, Arc::new(c))).collect(),
            live: RwLock::default(),
        }
    }

    pub(crate) fn core(&self, system: System) -> Option<Arc<AdapterCore>> {
        self.cores.get(&system).cloned()
    }

    pub(crate) fn live(&self, system: System) -> Option<ActorRef<AdapterMsg>> {
        self.live.read().ok()?.get(&system).cloned()
    }

    fn set_live(&self, system: System, actor: ActorRef<AdapterMsg>) {
        if let Ok(mut live) = self.live.write() {
            live.insert(system, actor);
        }
    }

    fn remove_live(&self, system: System) {
        if let Ok(mut live) = self.live.write() {
            live.remove(&system);
        }
    }
}
