//! What operators can see of and do to the running tree, independent of HTTP.

use super::telemetry::{EventPage, EventQuery, MailboxesView};
use crate::bus::OrderActorLocation;
use crate::domain::{OrderId, System};
use async_trait::async_trait;
use serde::Serialize;

/// Defined with the cluster view, which carries circuit states between nodes.
pub use crate::domain::cluster::CircuitState;

/// One external system as `GET /api/services/health` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    pub service: System,
    pub(crate) circuit: CircuitState,
    pub(crate) consecutive_failures: u32,
    pub total_failures: u64,
    pub(crate) total_calls: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) last_latency_ms: Option<f64>,
    pub in_flight: usize,
    /// Requests parked while the circuit is open, retried when it closes.
    pub waiting: usize,
    /// For a system that describes itself (the CMS's WSDL): whether the description
    /// is in use or the configured fallback, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) contract: Option<crate::protocols::ContractStatus>,
}

/// What an actor of the tree is, as the supervision view names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    Supervisor,
    Telemetry,
    Adapter,
    Cluster,
    Notifier,
    Bridge,
}

/// One actor of the live tree, for `GET /api/telemetry/supervision`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorNode {
    pub(crate) name: String,
    pub(crate) kind: ActorKind,
    /// "running", "restarting", "stopped" or "failed".
    pub(crate) status: String,
    pub(crate) restarts: u64,
    pub(crate) mailbox_depth: u64,
    /// Large families (one actor per order) are summarised rather than listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) count: Option<u64>,
    pub(crate) children: Vec<ActorNode>,
}

#[async_trait]
pub trait RuntimeControl: Send + Sync + 'static {
    async fn services_health(&self) -> Vec<ServiceHealth>;
    /// Closes the system's circuit and retries the requests waiting on it.
    async fn recover(&self, system: System) -> Option<ServiceHealth>;
    async fn supervision(&self) -> ActorNode;
    /// A page of the restart history; `None` if telemetry did not answer.
    async fn events(&self, query: EventQuery) -> Option<EventPage>;
    /// This node's id.
    fn node_id(&self) -> String;
    /// Which node holds the order's shard and what its live actor there is doing
    /// (none live: `actor` is `None`); `Err` when that node did not answer.
    async fn order_actor(&self, order_id: &OrderId) -> Result<OrderActorLocation, String>;
    /// Mailbox figures per actor family; `None` if telemetry did not answer.
    async fn mailboxes(&self) -> Option<MailboxesView>;
    /// The cluster as this node sees it; `None` if the node did not answer.
    async fn cluster(&self) -> Option<super::cluster::ClusterView>;
}
