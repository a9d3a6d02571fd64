//! ROS, the route optimiser: REST/JSON over HTTP.
//!
//! `POST /api/routes/optimize {orderId, pickup, delivery}` with an `Idempotency-Key`
//! header plans a route (`{routeId, waypoints, distance, eta}`); `DELETE
//! /api/routes/{routeId}` cancels it. `client` is the runtime's side, `simulator` an
//! optimiser for tests, benchmarks and the embedded default.

pub mod client;
pub mod simulator;

pub use client::RosClient;
pub use simulator::RosSimulator;

use crate::domain::{Location, OrderId};
use serde::{Deserialize, Serialize};

/// The body of `POST /api/routes/optimize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptimizeRequest {
    pub order_id: OrderId,
    pub pickup: Location,
    pub delivery: Location,
}

/// The body of every 4xx and 5xx answer: `{"error": "<reason>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
