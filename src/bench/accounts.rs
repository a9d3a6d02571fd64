//! The client accounts a load generator places its orders with, registered fresh for
//! each run (`bench` and `bench-ws`).

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Registrations hash passwords with argon2id (tens of MiB each on the node).
const REGISTRATION_CONCURRENCY: usize = 4;
const BENCH_PASSWORD: &str = "bench-password-not-secret";

/// `POST /api/auth/<step>` with a bench account; any answer but a success is an error.
async fn account_step(
    http: &reqwest::Client,
    base: &str,
    step: &str,
    account: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    let response = http
        .post(format!("{base}/api/auth/{step}"))
        .json(account)
        .send()
        .await
        .with_context(|| format!("cannot {step} a bench client"))?;
    let status = response.status();
    if !status.is_success() {
        let detail = response.text().await.unwrap_or_default();
        bail!(
            "{step} of a bench client answered {status}: {detail} (the node needs generous \
             request budgets for a benchmark: see BENCHMARKS.md)"
        );
    }
    Ok(response)
}

/// Registers `users` fresh client accounts named after `label` and returns their
/// tokens; both load generators start this way.
pub(crate) async fn register_accounts(
    http: &reqwest::Client,
    base: &str,
    users: u32,
    label: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Arc<str>>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let signups = futures::stream::iter(0..users)
        .map(|n| {
            let body = json!({
                "name": format!("Bench {label} {n}"),
                "email": format!("{label}-{run}-{n}@example.com"),
                "password": BENCH_PASSWORD,
            });
            // Registration answers 202 either way (it does not reveal accounts);
            // the token comes from logging in.
            async move {
                account_step(http, base, "register", &body).await?;
                #[derive(Deserialize)]
                struct LoggedIn {
                    token: String,
                }
                let logged_in: LoggedIn = account_step(http, base, "login", &body)
                    .await?
                    .json()
                    .await
                    .context("login answer without a token")?;
                Ok(Arc::<str>::from(logged_in.token))
            }
        })
        .buffer_unordered(REGISTRATION_CONCURRENCY)
        .collect::<Vec<_>>();
    tokio::select! {
        _ = shutdown.cancelled() => bail!("bench interrupted while registering clients"),
        tokens = signups => tokens.into_iter().collect(),
    }
}
