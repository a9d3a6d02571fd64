//! Request budgets: per client address for anonymous calls, per account for
//! authenticated ones (seed 000: 100 requests per 15 minutes per address), for
//! registrations (3 per hour per address) and logins (per address, plus a lockout
//! per e-mail address); and the response headers every API answer carries.
//!
//! Budgets are token buckets (governor) kept in memory per node: behind a load
//! balancer spreading clients over N nodes, a client gets up to N times the budget.

use super::ApiState;
use super::error::ApiError;
use super::extract::{Caller, ClientIp, authenticate, request_token};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often keys whose budget has refilled are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Tracked keys that trigger an early sweep.
const SWEEP_ABOVE: usize = 100_000;

/// `per_window` requests per `window` for each key, refilled evenly, with the whole
/// budget available at once. Keys whose budget has refilled are dropped on a sweep,
/// done inline (at most once a minute, or early when many keys are tracked), so
/// memory stays bounded without a background task.
pub(crate) struct Budget<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    last_sweep: Mutex<Instant>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    pub fn new(per_window: u32, window: Duration) -> Self {
        let burst = NonZeroU32::new(per_window).unwrap_or(NonZeroU32::MIN);
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn per_minute(per_minute: u32) -> Self {
        Self::new(per_minute, Duration::from_secs(60))
    }

    /// Takes one from `key`'s budget; `Err(wait)` when it is used up.
    pub(crate) fn check(&self, key: &K) -> Result<(), Duration> {
        self.sweep();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    fn sweep(&self) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() >= SWEEP_EVERY || self.limiter.len() > SWEEP_ABOVE {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            *last = Instant::now();
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

pub(crate) fn rate_limited(wait: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// Failed logins per e-mail address (known or not, so a lockout says nothing about
/// which accounts exist): `failures` within `period` lock the address for `period`,
/// from any client address. A success clears the count.
pub(crate) struct Lockout {
    failures: u32,
    period: Duration,
    counts: DashMap<String, (u32, Instant)>,
}

impl Lockout {
    pub fn new(failures: u32, period: Duration) -> Self {
        Self {
            failures: failures.max(1),
            period,
            counts: DashMap::new(),
        }
    }

    /// `Err(wait)` while the address is locked.
    pub(crate) fn check(&self, email: &str) -> Result<(), Duration> {
        let Some(entry) = self.counts.get(email) else {
            return Ok(());
        };
        let (count, since) = *entry;
        drop(entry);
        let elapsed = since.elapsed();
        if elapsed >= self.period {
            self.counts.remove(email);
            return Ok(());
        }
        if count >= self.failures {
            return Err(self.period - elapsed);
        }
        Ok(())
    }

    /// Counts a failure; returns whether the address is now locked.
    pub(crate) fn failed(&self, email: &str) -> bool {
        if self.counts.len() > SWEEP_ABOVE {
            let period = self.period;
            self.counts.retain(|_, (_, since)| since.elapsed() < period);
        }
        let mut entry = self
            .counts
            .entry(email.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.period {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0 >= self.failures
    }

    pub(crate) fn succeeded(&self, email: &str) {
        self.counts.remove(email);
    }
}

/// Who a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Payer {
    Address(IpAddr),
    Account(String),
}

/// Paths that are budgeted: the API and the WebSocket endpoint. Probes, metrics and
/// the pages are not (a health checker must never be locked out).
fn is_budgeted(path: &str) -> bool {
    path.starts_with("/api/") || path == "/ws"
}

/// Resolves the client address (trusted proxies), then charges the request to the
/// caller's account when it carries a valid token, to its address otherwise. The
/// resolved address and caller are left in the request for the handlers.
pub(crate) async fn charge(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
    let client = ClientIp::resolve(
        peer,
        request.headers(),
        &state.app.settings.http.trusted_proxies,
    );
    let client = ClientIp(ClientIp::rate_key(client));
    request.extensions_mut().insert(client);
    if !is_budgeted(request.uri().path()) {
        return next.run(request).await;
    }
    let token = request_token(request.headers(), request.uri());
    let caller = match token {
        Some(token) => authenticate(&state.sessions, &token).await.ok(),
        None => None,
    };
    let (payer, budget) = match &caller {
        Some(caller) => (
            Payer::Account(caller.user_id.as_str().to_owned()),
            &state.limits.per_account,
        ),
        None => (Payer::Address(client.0), &state.limits.per_address),
    };
    if let Err(wait) = budget.check(&payer) {
        tracing::warn!(
            ?payer,
            path = request.uri().path(),
            "request budget used up"
        );
        return rate_limited(wait).into_response();
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert::<Caller>(caller);
    }
    next.run(request).await
}

/// The budgets of one node.
pub(crate) struct Limits {
    pub(crate) per_address: Budget<Payer>,
    pub(crate) per_account: Budget<Payer>,
    pub(crate) registrations: Budget<IpAddr>,
    pub(crate) logins: Budget<IpAddr>,
    pub(crate) lockout: Lockout,
}

impl Limits {
    pub fn new(settings: &crate::config::Settings) -> Self {
        let window = Duration::from_secs(settings.rate_limit.window_secs);
        let auth = &settings.auth;
        Self {
            per_address: Budget::new(settings.rate_limit.anonymous_per_window, window),
            per_account: Budget::new(settings.rate_limit.user_per_window, window),
            registrations: Budget::new(auth.register_per_hour, Duration::from_secs(3600)),
            logins: Budget::per_minute(auth.login_per_minute),
            lockout: Lockout::new(
                auth.lockout_failures,
                Duration::from_secs(auth.lockout_minutes.saturating_mul(60)),
            ),
        }
    }
}

/// `X-Content-Type-Options: nosniff` on everything, and `Cache-Control: no-store`
/// on API answers (orders, tokens and addresses must not sit in shared caches or
/// the browser's disk cache) unless a handler chose otherwise.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let api = is_budgeted(request.uri().path());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_quota_then_refuses_with_a_wait() {
        let budget = Budget::per_minute(5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert!(budget.check(&ip).is_ok());
        }
        let wait = budget.check(&ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(budget.check(&other).is_ok(), "limits are per key");
        assert_eq!(budget.tracked(), 2);
        let window = Budget::new(100, Duration::from_secs(900));
        for _ in 0..100 {
            assert!(window.check(&ip).is_ok());
        }
        let wait = window.check(&ip).unwrap_err();
        assert!(
            wait <= Duration::from_secs(9),
            "one refills every 9 s: {wait:?}"
        );
    }

    #[test]
    fn an_address_locks_after_its_failures_and_a_success_clears_it() {
        let lockout = Lockout::new(3, Duration::from_secs(60));
        assert!(!lockout.failed("a@x.com"));
        assert!(!lockout.failed("a@x.com"));
        assert!(lockout.check("a@x.com").is_ok());
        assert!(lockout.failed("a@x.com"));
        assert!(lockout.check("a@x.com").is_err());
        assert!(lockout.check("b@x.com").is_ok());
        lockout.succeeded("a@x.com");
        assert!(lockout.check("a@x.com").is_ok());
    }
}
