//! Supervision telemetry for SREs: which actors run, under whom, how often they were
//! restarted and how deep their mailboxes are. Supervisors report lifecycle events
//! here; `GET /api/telemetry/supervision` reads the assembled tree.

use super::control::ActorNode;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lifecycle events kept for the SRE page.
const RECENT_EVENTS: usize = 200;

/// Messages waiting in an actor's mailbox. ractor does not expose queue lengths, so
/// senders count up and the actor counts down as it takes each message.
#[derive(Debug, Clone, Default)]
pub struct MailboxGauge(Arc<AtomicU64>);

impl MailboxGauge {
    pub fn queued(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn taken(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn depth(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Live members of a family of actors too large to list (one actor per order).
#[derive(Debug, Clone, Default)]
pub struct FamilySize(Arc<AtomicU64>);

impl FamilySize {
    pub fn joined(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn left(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Started,
    Failed,
    Restarting,
    Restarted,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent {
    pub actor: String,
    pub event: Lifecycle,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// How an actor registers itself.
#[derive(Debug, Clone)]
pub struct ActorInfo {
    pub name: String,
    pub kind: &'static str,
    pub parent: Option<String>,
    pub mailbox: Option<MailboxGauge>,
    pub family: Option<FamilySize>,
}

pub enum TelemetryMsg {
    Registered(ActorInfo),
    Lifecycle {
        actor: String,
        event: Lifecycle,
        detail: Option<String>,
    },
    Tree(RpcReplyPort<ActorNode>),
    Recent(RpcReplyPort<Vec<LifecycleEvent>>),
}

struct Entry {
    info: ActorInfo,
    status: &'static str,
    restarts: u64,
}

#[derive(Default)]
pub struct TelemetryState {
    actors: BTreeMap<String, Entry>,
    recent: VecDeque<LifecycleEvent>,
}

impl TelemetryState {
    fn node(&self, name: &str) -> Option<ActorNode> {
        let entry = self.actors.get(name)?;
        let children = self
            .actors
            .values()
            .filter(|e| e.info.parent.as_deref() == Some(name))
            .filter_map(|e| self.node(&e.info.name))
            .collect();
        Some(ActorNode {
            name: name.to_owned(),
            kind: entry.info.kind.to_owned(),
            status: entry.status.to_owned(),
            restarts: entry.restarts,
            mailbox_depth: entry.info.mailbox.as_ref().map_or(0, MailboxGauge::depth),
            count: entry.info.family.as_ref().map(FamilySize::get),
            children,
        })
    }
}

pub struct Telemetry;

impl Actor for Telemetry {
    type Msg = TelemetryMsg;
    type State = TelemetryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TelemetryState::default())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TelemetryMsg::Registered(info) => {
                let restarts = state.actors.get(&info.name).map_or(0, |e| e.restarts);
                state.actors.insert(
                    info.name.clone(),
                    Entry {
                        info,
                        status: "running",
                        restarts,
                    },
                );
            }
            TelemetryMsg::Lifecycle {
                actor,
                event,
                detail,
            } => {
                if let Some(entry) = state.actors.get_mut(&actor) {
                    entry.status = match event {
                        Lifecycle::Started | Lifecycle::Restarted => "running",
                        Lifecycle::Failed => "failed",
                        Lifecycle::Restarting => "restarting",
                        Lifecycle::Stopped => "stopped",
                    };
                    if event == Lifecycle::Restarted {
                        entry.restarts += 1;
                        metrics::counter!("swift_actor_restarts_total", "actor" => actor.clone())
                            .increment(1);
                    }
                }
                if state.recent.len() == RECENT_EVENTS {
                    state.recent.pop_front();
                }
                state.recent.push_back(LifecycleEvent {
                    actor,
                    event,
                    detail,
                    at: Utc::now(),
                });
            }
            TelemetryMsg::Tree(reply) => {
                let root = state.node(super::root::NAME).unwrap_or(ActorNode {
                    name: super::root::NAME.into(),
                    kind: "supervisor".into(),
                    status: "starting".into(),
                    restarts: 0,
                    mailbox_depth: 0,
                    count: None,
                    children: Vec::new(),
                });
                let _ = reply.send(root);
            }
            TelemetryMsg::Recent(reply) => {
                let _ = reply.send(state.recent.iter().cloned().collect());
            }
        }
        Ok(())
    }
}

/// Fire-and-forget reporting: telemetry must never slow or fail the reporter.
pub fn lifecycle(
    telemetry: &ActorRef<TelemetryMsg>,
    actor: &str,
    event: Lifecycle,
    detail: Option<String>,
) {
    let _ = telemetry.cast(TelemetryMsg::Lifecycle {
        actor: actor.to_owned(),
        event,
        detail,
    });
}

pub fn register(telemetry: &ActorRef<TelemetryMsg>, info: ActorInfo) {
    let _ = telemetry.cast(TelemetryMsg::Registered(info));
}
