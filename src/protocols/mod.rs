//! One module per external system, each with its codec, its client and a simulator
//! of the other side:
//!
//! - `cms`: SOAP 1.1 over HTTP (legacy client management)
//! - `wms`: a line protocol over pooled TCP connections (warehouse)
//! - `ros`: REST/JSON (route optimisation)
//!
//! Clients implement `SystemClient`; the adapter actors add the circuit breaker and
//! the concurrency bound on top. Simulators share `SimulatorKnobs` (latency, failure
//! rate, outage, refusals) and an `EffectLedger` that records every effect they
//! apply, which the tests use to prove no effect ever happens twice.

pub mod cms;
pub mod ros;
pub mod simulator;
pub mod wms;

use crate::domain::OperationOutcome;
use crate::domain::{StepReply, StepRequest};
use async_trait::async_trait;

/// A call that did not settle. Business refusals are not errors: they come back as
/// `OperationOutcome::Refused`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connection(String),
    /// The remote system reported its own failure (HTTP 5xx, soap:Server, ERR).
    #[error("remote failure: {0}")]
    Remote(String),
    /// The reply did not follow the protocol.
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// What the saga makes of a call: timeouts, connection trouble and the remote's own
/// failures are worth retrying; a reply outside the protocol is not (the same peer
/// will answer the same way), so the step fails at once as an unknown outcome and the
/// order is compensated, instead of being retried until the circuit opens.
pub fn step_reply(result: Result<OperationOutcome, CallError>) -> StepReply {
    match result {
        Ok(outcome) => StepReply::Settled { outcome },
        Err(CallError::Malformed(reason)) => StepReply::Settled {
            outcome: OperationOutcome::Exhausted {
                reason: format!("protocol failure: {reason}"),
            },
        },
        Err(error) => StepReply::Transient {
            reason: error.to_string(),
        },
    }
}

#[async_trait]
pub trait SystemClient: Send + Sync + 'static {
    /// Runs one operation of this system. Every call is bounded by the client's
    /// timeout and carries `request.idempotency_key()`.
    async fn execute(&self, request: &StepRequest) -> Result<OperationOutcome, CallError>;

    /// Where the client's view of the system's contract comes from, for systems that
    /// describe themselves (the CMS's WSDL).
    fn contract(&self) -> Option<ContractStatus> {
        None
    }
}

/// Whether a system is called as its own description says, shown in
/// `/api/services/health`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractStatus {
    /// `"wsdl"`: address and actions from the description; `"configured"`: it could
    /// not be read, so the configured address and our own actions are used.
    pub source: &'static str,
    /// Where the description is read from.
    pub(crate) wsdl: String,
    /// The address calls go to.
    pub address: String,
    /// Why the description is not in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ContractStatus {
    pub(crate) fn configured(wsdl: &str, address: &str, error: &str) -> Self {
        Self {
            source: "configured",
            wsdl: wsdl.to_owned(),
            address: address.to_owned(),
            error: Some(error.to_owned()),
        }
    }
}
