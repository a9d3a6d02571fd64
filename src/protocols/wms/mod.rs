//! WMS, the warehouse: a line protocol over pooled, pipelined TCP connections.
//!
//! Layered like tokio's mini-redis: `codec` is the pure frame layer (typed lines,
//! capped length), `client` the runtime's connection pool, `simulator` a warehouse
//! server with graceful shutdown for tests, benchmarks and the embedded default.

pub(crate) mod client;
pub mod codec;
pub mod simulator;

pub use client::WmsClient;
pub use codec::{LineError, MAX_LINE, Reply, Request};
pub use simulator::WmsSimulator;
