//! What the three simulators share: knobs that make every branch of the saga
//! reachable (latency, random failures, outage, refusals) and a ledger of the effects
//! they applied, keyed by idempotency key, so tests can prove nothing happened twice.
//! `control_router` exposes both over HTTP for out-of-process simulators.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
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

/// Effects a simulator applied, by idempotency key. A replayed request finds its key
/// here and gets the recorded answer without a second effect.
#[derive(Debug, Default)]
pub(crate) struct EffectLedger {
    entries: RwLock<HashMap<String, LedgerEntry>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LedgerEntry {
    /// The answer given the first time, replayed verbatim.
    pub(crate) answer: String,
    /// How many times the request was seen; effects happened once regardless.
    pub(crate) requests: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSummary {
    pub effects: usize,
    pub replays: u64,
    /// Live effects per kind, e.g. reservations held or routes planned.
    pub active: HashMap<String, usize>,
}

impl EffectLedger {
    /// Returns the recorded answer for `key`, or applies `effect` once and records
    /// its answer. `effect` runs under the ledger lock, so two concurrent requests
    /// with one key cannot both apply it.
    pub(crate) fn once(&self, key: &str, effect: impl FnOnce() -> String) -> String {
        let Ok(mut entries) = self.entries.write() else {
            return effect();
        };
        if let Some(entry) = entries.get_mut(key) {
            entry.requests += 1;
            return entry.answer.clone();
        }
        let answer = effect();
        entries.insert(
            key.to_owned(),
            LedgerEntry {
                answer: answer.clone(),
                requests: 1,
            },
        );
        answer
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.entries.read().is_ok_and(|e| e.contains_key(key))
    }

    pub(crate) fn summary(&self, active: HashMap<String, usize>) -> LedgerSummary {
        let entries = self.entries.read();
        let (effects, replays) = entries
            .map(|e| (e.len(), e.values().map(|x| x.requests - 1).sum()))
            .unwrap_or_default();
        LedgerSummary {
            effects,
            replays,
            active,
        }
    }
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
