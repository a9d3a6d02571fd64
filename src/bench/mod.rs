//! The tools, apart from the runtime: load generators and the database benchmark,
//! one module per command of the `swiftlogistics` binary. They reach the node only
//! through its public HTTP and WebSocket API (and `bench-db` the database directly).
//!
//! * `journey`: `swiftlogistics bench`, order journeys under load (throughput,
//!   latency, memory), optionally with clients following their orders (`follow`).
//! * `ws`: `swiftlogistics bench-ws`, WebSocket fan-out under load.
//! * `db`: `swiftlogistics bench-db`, the write ceiling of a MongoDB server.
//!
//! Shared by them: `accounts` (fresh client accounts), `scrape` (the node's
//! `/metrics` and memory) and `report` (what a run prints).

mod accounts;
pub mod db;
pub(crate) mod follow;
pub mod journey;
pub(crate) mod report;
pub(crate) mod scrape;
pub mod ws;

use serde::Serialize;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Runs a load generator until it finishes or Ctrl-C (which cancels the token it is
/// given), then prints its summary, and with `json` the summary as one JSON line.
async fn until_interrupted<S, Run, Running>(
    json: bool,
    render: fn(&S) -> String,
    run: Run,
) -> anyhow::Result<()>
where
    S: Serialize,
    Run: FnOnce(CancellationToken) -> Running,
    Running: Future<Output = anyhow::Result<S>>,
{
    let shutdown = CancellationToken::new();
    let interrupt = shutdown.clone();
    // If the signal cannot be watched, Ctrl-C keeps its default of ending the process.
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let outcome = run(shutdown).await;
    watcher.abort();
    let summary = outcome?;
    print!("{}", render(&summary));
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}
