//! Supervision telemetry for SREs: which actors run, under whom, how often they were
//! restarted and how deep their mailboxes are. Supervisors report lifecycle events
//! here; `GET /api/telemetry/supervision` reads the assembled tree and
//! `GET /api/telemetry/events` the restart history (the last `[telemetry] history`
//! events of this node, newest first).

use super::control::{ActorKind, ActorNode};
use super::mailbox::{MailboxReading, wait_quantile_ms};
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most events one page of the history holds.
pub(crate) const MAX_PAGE: usize = 500;
/// How often mailboxes are read (and the metrics recorder's histograms drained).
const TICK: Duration = Duration::from_secs(2);
/// Readings kept: rates and quantiles are over the last `(WINDOW - 1) * TICK`.
const WINDOW: usize = 6;

pub(crate) use super::mailbox::{MailboxGauge, Posted};

/// Live members of a family of actors too large to list (one actor per order).
#[derive(Debug, Clone, Default)]
pub(crate) struct FamilySize(Arc<AtomicU64>);

impl FamilySize {
    pub(crate) fn joined(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn left(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What happened to a supervised actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Lifecycle {
    Started,
    /// It panicked or returned an error; `detail` says which.
    Failed,
    /// Its supervisor will start it again (`detail`: after how long).
    Restarting,
    Restarted,
    /// Its supervisor gave up on it (restart intensity exceeded) and failed itself.
    Escalated,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LifecycleEvent {
    /// Increases by one per event on this node; pages are cut by it.
    pub(crate) seq: u64,
    pub(crate) actor: String,
    pub(crate) event: Lifecycle,
    /// The failure's reason (panic message or error), or the restart delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    pub(crate) node: String,
    pub(crate) at: DateTime<Utc>,
}

/// A page of the restart history: newest first, optionally of one actor (by name,
/// or a family prefix: `adapter` matches `adapter-cms`, `order` every order's actor)
/// and of one kind of event, older than `before`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub(crate) actor: Option<String>,
    pub(crate) kind: Option<Lifecycle>,
    pub(crate) before: Option<u64>,
    pub(crate) limit: Option<usize>,
}

impl EventQuery {
    fn matches(&self, event: &LifecycleEvent) -> bool {
        let actor = self.actor.as_deref().is_none_or(|wanted| {
            event.actor == wanted
                || event
                    .actor
                    .strip_prefix(wanted)
                    .is_some_and(|rest| rest.starts_with('-'))
        });
        actor
            && self.kind.is_none_or(|kind| kind == event.event)
            && self.before.is_none_or(|before| event.seq < before)
    }
}

/// One page of events and where the next (older) page starts, if there is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub(crate) node: String,
    pub(crate) events: Vec<LifecycleEvent>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_before: Option<u64>,
}

/// The last `capacity` lifecycle events, oldest first.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    next_seq: u64,
    events: VecDeque<LifecycleEvent>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 1,
            events: VecDeque::new(),
        }
    }

    pub(crate) fn record(
        &mut self,
        node: &str,
        actor: String,
        event: Lifecycle,
        detail: Option<String>,
        at: DateTime<Utc>,
    ) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(LifecycleEvent {
            seq: self.next_seq,
            actor,
            event,
            detail,
            node: node.to_owned(),
            at,
        });
        self.next_seq += 1;
    }

    pub(crate) fn page(&self, node: &str, query: &EventQuery) -> EventPage {
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let mut matching = self.events.iter().rev().filter(|e| query.matches(e));
        let events: Vec<_> = matching.by_ref().take(limit).cloned().collect();
        let next_before = match (events.last(), matching.next()) {
            (Some(last), Some(_)) => Some(last.seq),
            _ => None,
        };
        EventPage {
            node: node.to_owned(),
            events,
            next_before,
        }
    }
}

/// The actor label of the restart counters: an order's actor counts under its
/// family, so the metric does not grow a series per order.
fn metric_actor(actor: &str) -> String {
    if actor.starts_with("order-") {
        "order".to_owned()
    } else {
        actor.to_owned()
    }
}

/// How an actor registers itself.
#[derive(Debug, Clone)]
pub(crate) struct ActorInfo {
    pub(crate) name: String,
    pub(crate) kind: ActorKind,
    pub(crate) parent: Option<String>,
    pub(crate) mailbox: Option<MailboxGauge>,
    pub(crate) family: Option<FamilySize>,
}

pub(crate) enum TelemetryMsg {
    Registered(ActorInfo),
    Lifecycle {
        actor: String,
        event: Lifecycle,
        detail: Option<String>,
    },
    Tree(RpcReplyPort<ActorNode>),
    Events(EventQuery, RpcReplyPort<EventPage>),
    Mailboxes(RpcReplyPort<MailboxesView>),
    /// Time to read the mailboxes again.
    Tick,
}

pub(crate) struct TelemetryArgs {
    /// This node's id, stamped on every event.
    pub(crate) node: String,
    pub(crate) history: usize,
    /// Drained on every tick: without upkeep, histograms keep every sample until a
    /// scrape comes.
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// Mailbox figures of one actor or one family over the last window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MailboxView {
    pub(crate) depth: u64,
    pub(crate) per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_p99_ms: Option<f64>,
    /// Messages handled since the node started.
    pub(crate) handled: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActorMailbox {
    pub(crate) actor: String,
    #[serde(flatten)]
    pub(crate) mailbox: MailboxView,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FamilyMailboxes {
    pub(crate) family: &'static str,
    #[serde(flatten)]
    pub(crate) mailbox: MailboxView,
    pub(crate) actors: Vec<ActorMailbox>,
}

/// `GET /api/telemetry/mailboxes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxesView {
    pub(crate) node: String,
    pub(crate) window_secs: f64,
    /// Whether messages are timed (`[telemetry] mailbox_timing`).
    pub(crate) timing: bool,
    pub(crate) families: Vec<FamilyMailboxes>,
}

/// Figures over a window, from the readings at its start and end (the start is
/// absent for a mailbox that appeared during the window).
fn window_view(
    end: &[&MailboxReading],
    start: &[Option<&MailboxReading>],
    secs: f64,
) -> MailboxView {
    let mut waits = vec![0u64; end.first().map_or(0, |r| r.waits.len())];
    let mut handled = 0;
    let mut total = 0;
    for (now, then) in end.iter().zip(start) {
        total += now.handled;
        handled += now.handled - then.map_or(0, |t| t.handled.min(now.handled));
        for (i, w) in now.waits.iter().enumerate() {
            let before = then.and_then(|t| t.waits.get(i)).copied().unwrap_or(0);
            if let Some(slot) = waits.get_mut(i) {
                *slot += w.saturating_sub(before);
            }
        }
    }
    MailboxView {
        depth: end.iter().map(|r| r.depth).sum(),
        per_second: if secs > 0.0 {
            handled as f64 / secs
        } else {
            0.0
        },
        wait_p50_ms: wait_quantile_ms(&waits, 0.50),
        wait_p99_ms: wait_quantile_ms(&waits, 0.99),
        handled: total,
    }
}

/// Families in the order of DESIGN section 3, then any other.
const FAMILIES: [&str; 4] = ["adapters", "orders", "notifier", "bridges"];

fn mailboxes_view(
    node: &str,
    timing: bool,
    readings: &VecDeque<(Instant, Vec<MailboxReading>)>,
) -> MailboxesView {
    let (Some((first_at, first)), Some((last_at, last))) = (readings.front(), readings.back())
    else {
        return MailboxesView {
            node: node.to_owned(),
            window_secs: 0.0,
            timing,
            families: Vec::new(),
        };
    };
    let secs = last_at.duration_since(*first_at).as_secs_f64();
    let mut families: Vec<&'static str> = last.iter().map(|r| r.family).collect();
    families.sort_by_key(|f| {
        (
            FAMILIES
                .iter()
                .position(|k| k == f)
                .unwrap_or(FAMILIES.len()),
            *f,
        )
    });
    families.dedup();
    let families = families
        .into_iter()
        .map(|family| {
            let end: Vec<&MailboxReading> = last.iter().filter(|r| r.family == family).collect();
            let start: Vec<Option<&MailboxReading>> = end
                .iter()
                .map(|r| first.iter().find(|f| f.actor == r.actor))
                .collect();
            let actors = end
                .iter()
                .zip(&start)
                .map(|(now, then)| ActorMailbox {
                    actor: now.actor.clone(),
                    mailbox: window_view(&[now], &[*then], secs),
                })
                .collect();
            FamilyMailboxes {
                family,
                mailbox: window_view(&end, &start, secs),
                actors,
            }
        })
        .collect();
    MailboxesView {
        node: node.to_owned(),
        window_secs: secs,
        timing,
        families,
    }
}

struct Entry {
    info: ActorInfo,
    status: &'static str,
    restarts: u64,
}

pub(crate) struct TelemetryState {
    node: String,
    actors: BTreeMap<String, Entry>,
    history: History,
    metrics: Option<PrometheusHandle>,
    readings: VecDeque<(Instant, Vec<MailboxReading>)>,
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
            kind: entry.info.kind,
            status: entry.status.to_owned(),
            restarts: entry.restarts,
            mailbox_depth: entry.info.mailbox.as_ref().map_or(0, MailboxGauge::depth),
            count: entry.info.family.as_ref().map(FamilySize::get),
            children,
        })
    }

    fn mailboxes(&self) -> impl Iterator<Item = &MailboxGauge> {
        self.actors.values().filter_map(|e| e.info.mailbox.as_ref())
    }

    fn read_mailboxes(&mut self) {
        let readings: Vec<MailboxReading> = self.mailboxes().map(MailboxGauge::read).collect();
        for r in &readings {
            metrics::gauge!("swift_mailbox_depth", "family" => r.family, "actor" => r.actor.clone())
                .set(r.depth as f64);
        }
        if self.readings.len() == WINDOW {
            self.readings.pop_front();
        }
        self.readings.push_back((Instant::now(), readings));
    }

    fn record(&mut self, actor: String, event: Lifecycle, detail: Option<String>) {
        if let Some(entry) = self.actors.get_mut(&actor) {
            entry.status = match event {
                Lifecycle::Started | Lifecycle::Restarted => "running",
                Lifecycle::Failed | Lifecycle::Escalated => "failed",
                Lifecycle::Restarting => "restarting",
                Lifecycle::Stopped => "stopped",
            };
            if event == Lifecycle::Restarted {
                entry.restarts += 1;
            }
        }
        match event {
            Lifecycle::Restarted => {
                metrics::counter!("swift_actor_restarts_total", "actor" => metric_actor(&actor))
                    .increment(1);
            }
            Lifecycle::Escalated => {
                metrics::counter!("swift_actor_escalations_total", "actor" => metric_actor(&actor))
                    .increment(1);
            }
            Lifecycle::Failed => {
                metrics::counter!("swift_actor_failures_total", "actor" => metric_actor(&actor))
                    .increment(1);
            }
            _ => {}
        }
        self.history
            .record(&self.node, actor, event, detail, Utc::now());
    }
}

pub(crate) struct Telemetry;

impl Actor for Telemetry {
    type Msg = TelemetryMsg;
    type State = TelemetryState;
    type Arguments = TelemetryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TelemetryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(TICK, || TelemetryMsg::Tick);
        // Declared up front so that dashboards and alerts find the series before
        // anything has failed.
        for actor in [
            "adapter-cms",
            "adapter-wms",
            "adapter-ros",
            "adapters",
            "order",
        ] {
            metrics::counter!("swift_actor_restarts_total", "actor" => actor).absolute(0);
            metrics::counter!("swift_actor_escalations_total", "actor" => actor).absolute(0);
            metrics::counter!("swift_actor_failures_total", "actor" => actor).absolute(0);
        }
        Ok(TelemetryState {
            node: args.node,
            actors: BTreeMap::new(),
            history: History::new(args.history),
            metrics: args.metrics,
            readings: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TelemetryMsg::Tick => {
                state.read_mailboxes();
                if let Some(metrics) = &state.metrics {
                    metrics.run_upkeep();
                }
                myself.send_after(TICK, || TelemetryMsg::Tick);
            }
            TelemetryMsg::Mailboxes(reply) => {
                let timing = state.mailboxes().any(|m| m.timing());
                let _ = reply.send(mailboxes_view(&state.node, timing, &state.readings));
            }
            TelemetryMsg::Registered(info) => {
                let name = info.name.clone();
                let previous = state.actors.get(&name);
                let restarts = previous.map_or(0, |e| e.restarts);
                // A restart is reported by the supervisor as `restarted`; only a
                // first start (or one after a stop) is a `started`.
                let fresh = previous.is_none_or(|e| e.status == "stopped");
                state.actors.insert(
                    name.clone(),
                    Entry {
                        info,
                        status: "running",
                        restarts,
                    },
                );
                if fresh {
                    state.record(name, Lifecycle::Started, None);
                }
            }
            TelemetryMsg::Lifecycle {
                actor,
                event,
                detail,
            } => state.record(actor, event, detail),
            TelemetryMsg::Tree(reply) => {
                let root = state.node(super::root::NAME).unwrap_or(ActorNode {
                    name: super::root::NAME.into(),
                    kind: ActorKind::Supervisor,
                    status: "starting".into(),
                    restarts: 0,
                    mailbox_depth: 0,
                    count: None,
                    children: Vec::new(),
                });
                let _ = reply.send(root);
            }
            TelemetryMsg::Events(query, reply) => {
                let _ = reply.send(state.history.page(&state.node, &query));
            }
        }
        Ok(())
    }
}

/// Fire-and-forget reporting: telemetry must never slow or fail the reporter.
pub(crate) fn lifecycle(
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

pub(crate) fn register(telemetry: &ActorRef<TelemetryMsg>, info: ActorInfo) {
    let _ = telemetry.cast(TelemetryMsg::Registered(info));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(events: &[(&str, Lifecycle)], capacity: usize) -> History {
        let mut history = History::new(capacity);
        for (actor, event) in events {
            history.record("n1", (*actor).to_owned(), *event, None, Utc::now());
        }
        history
    }

    fn seqs(page: &EventPage) -> Vec<u64> {
        page.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_only_the_newest_events() {
        let h = history(&[("a", Lifecycle::Started); 5], 3);
        assert_eq!(seqs(&h.page("n1", &EventQuery::default())), [5, 4, 3]);
    }

    #[test]
    fn pages_newest_first_until_the_oldest() {
        let h = history(&[("a", Lifecycle::Started); 5], 10);
        let query = EventQuery {
            limit: Some(2),
            ..EventQuery::default()
        };
        let first = h.page("n1", &query);
        assert_eq!((seqs(&first), first.next_before), (vec![5, 4], Some(4)));
        let second = h.page(
            "n1",
            &EventQuery {
                before: first.next_before,
                ..query.clone()
            },
        );
        assert_eq!((seqs(&second), second.next_before), (vec![3, 2], Some(2)));
        let last = h.page(
            "n1",
            &EventQuery {
                before: second.next_before,
                ..query
            },
        );
        assert_eq!((seqs(&last), last.next_before), (vec![1], None));
    }

    #[test]
    fn filters_by_actor_family_and_kind() {
        let h = history(
            &[
                ("adapter-cms", Lifecycle::Failed),
                ("adapters", Lifecycle::Started),
                ("adapter-wms", Lifecycle::Restarted),
                ("order-ORD-1", Lifecycle::Failed),
            ],
            10,
        );
        let by = |actor: &str, kind| {
            seqs(&h.page(
                "n1",
                &EventQuery {
                    actor: Some(actor.into()),
                    kind,
                    ..EventQuery::default()
                },
            ))
        };
        assert_eq!(by("adapter", None), [3, 1]);
        assert_eq!(by("adapters", None), [2]);
        assert_eq!(by("adapter-cms", None), [1]);
        assert_eq!(by("order", Some(Lifecycle::Failed)), [4]);
        assert_eq!(by("adapter", Some(Lifecycle::Restarted)), [3]);
    }

    #[test]
    fn order_actors_count_under_their_family() {
        assert_eq!(metric_actor("order-ORD-1"), "order");
        assert_eq!(metric_actor("adapter-cms"), "adapter-cms");
    }
}
