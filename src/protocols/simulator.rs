//! What the three simulators share: knobs that make every branch of the saga
//! reachable (latency, random failures, outage, refusals) and a ledger of the effects
//! they applied, keyed by idempotency key, so tests can prove nothing happened twice.
//! `control_router` exposes both over HTTP for out-of-process simulators.

use crate::fifo_map::FifoMap;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KnobSettings {
    /// Added to every request before it is answered.
    pub latency_ms: u64,
    /// Probability in [0, 1] that a request fails with a server error.
    pub(crate) failure_rate: f64,
    /// Every request fails with a server error (or the connection is refused).
    pub outage: bool,
    /// Every forward request is refused as a business decision (no stock, no route).
    pub refuse_all: bool,
    /// Customers the CMS does not know.
    pub refuse_customers: HashSet<String>,
}

/// What a simulator should do with the request in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Serve,
    Fail,
    Refuse,
}

#[derive(Debug, Default)]
pub struct SimulatorKnobs {
    settings: RwLock<KnobSettings>,
}

impl SimulatorKnobs {
    pub fn new(settings: KnobSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
        }
    }

    pub(crate) fn get(&self) -> KnobSettings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn set(&self, settings: KnobSettings) {
        if let Ok(mut current) = self.settings.write() {
            *current = settings;
        }
    }

    pub fn update(&self, change: impl FnOnce(&mut KnobSettings)) {
        if let Ok(mut current) = self.settings.write() {
            change(&mut current);
        }
    }

    /// Sleeps the configured latency, then decides the request's fate. `customer` is
    /// the customer id where the protocol carries one (CMS).
    pub(crate) async fn judge(&self, customer: Option<&str>) -> Verdict {
        let settings = self.get();
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
        }
        if settings.outage
            || (settings.failure_rate > 0.0
                && rand::rng().random_bool(settings.failure_rate.clamp(0.0, 1.0)))
        {
            return Verdict::Fail;
        }
        let refused_customer = customer.is_some_and(|c| settings.refuse_customers.contains(c));
        if settings.refuse_all || refused_customer {
            Verdict::Refuse
        } else {
            Verdict::Serve
        }
    }
}

/// How many effects a simulator remembers unless told otherwise
/// (`simulators.remembered_effects`, the same figure): the answers to their
/// idempotency keys and what they left behind (reservations held, routes planned,
/// orders cancelled). Like a real system's idempotency window, a replay of an older
/// key is applied again (and counted as a new effect). Without a bound the three
/// in-process simulators grew by about 1 KB per order, for good; with it they stay
/// near 16 MB in all.
pub(crate) const REMEMBERED_EFFECTS: usize = 16_384;

/// Effects a simulator applied, by idempotency key. A replayed request finds its key
/// here and gets the recorded answer without a second effect.
#[derive(Debug)]
pub(crate) struct EffectLedger {
    state: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    /// The answer given the first time, replayed verbatim, for the latest keys.
    answers: FifoMap<String, String>,
    /// Effects applied, ever.
    effects: usize,
    /// Requests answered from `answers`, ever.
    replays: u64,
}

impl Default for EffectLedger {
    fn default() -> Self {
        Self::new(REMEMBERED_EFFECTS)
    }
}

impl EffectLedger {
    /// A ledger that remembers the answers to the latest `remembered` keys.
    pub(crate) fn new(remembered: usize) -> Self {
        Self {
            state: Mutex::new(Ledger {
                answers: FifoMap::new(remembered),
                effects: 0,
                replays: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, Ledger> {
        // Plain counters and answers: a panic elsewhere cannot leave them half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the recorded answer for `key`, or applies `effect` once and records
    /// its answer. `effect` runs under the ledger lock, so two concurrent requests
    /// with one key cannot both apply it.
    pub(crate) fn once(&self, key: &str, effect: impl FnOnce() -> String) -> String {
        let mut state = self.state();
        if let Some(answer) = state.answers.get(key) {
            let answer = answer.clone();
            state.replays += 1;
            return answer;
        }
        let answer = effect();
        state.effects += 1;
        state.answers.insert(key.to_owned(), answer.clone());
        answer
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.state().answers.contains_key(key)
    }

    pub(crate) fn summary(&self, active: HashMap<String, usize>) -> LedgerSummary {
        let state = self.state();
        LedgerSummary {
            effects: state.effects,
            replays: state.replays,
            active,
        }
    }
}

/// What a simulator's effects left behind, by key, for as many of its latest effects
/// as it remembers: the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct Remembered<K, V>(Mutex<FifoMap<K, V>>);

impl<K: Hash + Eq + Clone, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Self::new(REMEMBERED_EFFECTS)
    }
}

impl<K: Hash + Eq + Clone, V> Remembered<K, V> {
    /// What the latest `remembered` effects left behind.
    pub(crate) fn new(remembered: usize) -> Self {
        Self(Mutex::new(FifoMap::new(remembered)))
    }

    fn entries(&self) -> MutexGuard<'_, FifoMap<K, V>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        self.entries().insert(key, value);
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries().remove(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSummary {
    pub effects: usize,
    pub replays: u64,
    /// Live effects per kind, e.g. reservations held or routes planned.
    pub active: HashMap<String, usize>,
}

/// A simulator as the control API sees it.
pub trait ControlledSimulator: Send + Sync + 'static {
    fn knobs(&self) -> &SimulatorKnobs;
    fn summary(&self) -> LedgerSummary;
}

pub(crate) type Simulators = HashMap<String, Arc<dyn ControlledSimulator>>;

/// `GET|PUT /knobs/{system}`, `GET /effects/{system}`.
pub(crate) fn control_router(simulators: Simulators) -> Router {
    async fn get_knobs(
        State(sims): State<Arc<Simulators>>,
        Path(system): Path<String>,
    ) -> Result<Json<KnobSettings>, StatusCode> {
        let sim = sims.get(&system).ok_or(StatusCode::NOT_FOUND)?;
        Ok(Json(sim.knobs().get()))
    }
    async fn put_knobs(
        State(sims): State<Arc<Simulators>>,
        Path(system): Path<String>,
        Json(settings): Json<KnobSettings>,
    ) -> Result<Json<KnobSettings>, StatusCode> {
        let sim = sims.get(&system).ok_or(StatusCode::NOT_FOUND)?;
        sim.knobs().set(settings);
        Ok(Json(sim.knobs().get()))
    }
    async fn effects(
        State(sims): State<Arc<Simulators>>,
        Path(system): Path<String>,
    ) -> Result<Json<LedgerSummary>, StatusCode> {
        let sim = sims.get(&system).ok_or(StatusCode::NOT_FOUND)?;
        Ok(Json(sim.summary()))
    }
    Router::new()
        .route("/knobs/{system}", get(get_knobs).put(put_knobs))
        .route("/effects/{system}", get(effects))
        .layer(axum::middleware::from_fn(refuse_foreign_hosts))
        .with_state(Arc::new(simulators))
}

/// The control API has no authentication, so a web page must not reach it through
/// DNS rebinding (a name of the attacker's that resolves to 127.0.0.1): it answers
/// only requests whose `Host` is an IP address or a name without a dot (`localhost`,
/// a compose service name), never a public domain name.
async fn refuse_foreign_hosts(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if is_local_host(host) {
        next.run(request).await
    } else {
        (StatusCode::FORBIDDEN, "foreign Host header refused\n").into_response()
    }
}

fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => {
            return bracketed
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    !name.is_empty() && (name.parse::<std::net::Ipv4Addr>().is_ok() || !name.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_api_answers_local_hosts_only() {
        for local in [
            "127.0.0.1:4003",
            "localhost:4003",
            "localhost",
            "[::1]:4003",
            "simulators:4003",
            "10.0.0.5",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for foreign in [
            "attacker.example.com",
            "rebind.evil.net:4003",
            "",
            "127.0.0.1.nip.io:4003",
        ] {
            assert!(!is_local_host(foreign), "{foreign}");
        }
    }

    #[test]
    fn an_effect_keyed_twice_happens_once() {
        let ledger = EffectLedger::default();
        let mut applied = 0;
        let first = ledger.once("ORD-1:wms.reserve", || {
            applied += 1;
            "ACK|WH-001".into()
        });
        let second = ledger.once("ORD-1:wms.reserve", || {
            applied += 1;
            "other".into()
        });
        assert_eq!(
            (first.as_str(), second.as_str(), applied),
            ("ACK|WH-001", "ACK|WH-001", 1)
        );
        let summary = ledger.summary(HashMap::new());
        assert_eq!((summary.effects, summary.replays), (1, 1));
    }

    #[test]
    fn a_key_older_than_the_ledger_remembers_is_applied_again() {
        const REMEMBERED: usize = 3;
        let ledger = EffectLedger::new(REMEMBERED);
        for i in 0..=REMEMBERED {
            ledger.once(&format!("ORD-{i}:wms.reserve"), || "ACK".into());
        }
        let mut applied = 0;
        for key in ["ORD-1:wms.reserve", "ORD-0:wms.reserve"] {
            ledger.once(key, || {
                applied += 1;
                "ACK".into()
            });
        }
        // ORD-1, the oldest still remembered, is a replay; ORD-0 was forgotten.
        let summary = ledger.summary(HashMap::new());
        assert_eq!(
            (applied, summary.effects, summary.replays),
            (1, REMEMBERED + 2, 1)
        );
    }

    #[tokio::test]
    async fn knobs_decide_the_verdict() {
        let knobs = SimulatorKnobs::default();
        assert_eq!(knobs.judge(Some("usr_1")).await, Verdict::Serve);
        knobs.update(|k| {
            k.refuse_customers.insert("usr_1".into());
        });
        assert_eq!(knobs.judge(Some("usr_1")).await, Verdict::Refuse);
        assert_eq!(knobs.judge(Some("usr_2")).await, Verdict::Serve);
        knobs.update(|k| k.outage = true);
        assert_eq!(knobs.judge(Some("usr_2")).await, Verdict::Fail);
    }
}
