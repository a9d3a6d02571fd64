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
//!
//! Each module declares one `BackOffice` registration, and `BACK_OFFICE` lists them:
//! the runtime builds clients, starts simulators and shows addresses through it
//! alone, so adding a system is its module and its line there (see README.md,
//! "Adding a back-office system").

pub mod cms;
pub mod ros;
pub mod simulator;
pub mod wms;

use crate::domain::OperationOutcome;
use crate::domain::{StepReply, StepRequest, System};
use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use simulator::ControlledSimulator;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every back-office system's protocol module, one line each. Their order is the
/// order the start-up banners show them in.
pub(crate) static BACK_OFFICE: &[&dyn BackOffice] =
    &[&cms::Registration, &ros::Registration, &wms::Registration];

/// The registration of `system`'s protocol module.
pub(crate) fn back_office(system: System) -> Option<&'static dyn BackOffice> {
    BACK_OFFICE.iter().copied().find(|b| b.system() == system)
}

/// The keys of a system's settings section that belong to its protocol (its
/// address, the CMS's WSDL, the WMS's pool): the section less the call limits
/// every system has.
pub(crate) type ProtocolSettings = serde_json::Map<String, serde_json::Value>;

/// A back-office system's protocol module as the runtime sees it: how to call the
/// system as its settings say, and how to stand in for it.
#[async_trait]
pub(crate) trait BackOffice: Send + Sync + 'static {
    fn system(&self) -> System;

    /// How the start-up banners name the system and its protocol (`CMS SOAP`).
    fn label(&self) -> &'static str;

    /// Refuses protocol settings the module does not know or cannot use.
    fn check(&self, settings: &ProtocolSettings) -> Result<(), String>;

    /// The runtime's client; every call is bounded by `timeout`.
    async fn client(
        &self,
        settings: &ProtocolSettings,
        timeout: Duration,
    ) -> anyhow::Result<Arc<dyn SystemClient>>;

    /// Where the client calls, as the banner shows it.
    fn target(&self, settings: &ProtocolSettings) -> String;

    /// Points `settings` at a simulator called at `address`, unless they name an
    /// address of their own (configuration does what it says). Whether it did.
    fn stand_in(&self, settings: &mut ProtocolSettings, address: &str) -> bool;

    /// A simulator of the system, started as `start` says.
    fn simulate(&self, start: SimulatorStart) -> Simulation;

    /// The address a client calls the simulator listening at `listening` by.
    fn simulator_address(&self, listening: SocketAddr) -> String;

    /// How the `simulate` banner shows the simulator called at `address`.
    fn describe_simulator(&self, address: &str) -> String {
        address.to_owned()
    }
}

/// A started simulator: its controls, and the server until it ends.
pub(crate) struct Simulation {
    pub(crate) controls: Arc<dyn ControlledSimulator>,
    pub(crate) serving: BoxFuture<'static, std::io::Result<()>>,
}

/// How a simulator is started: where it listens, how many effects it remembers
/// (`simulators.remembered_effects`) and when it stops.
pub(crate) struct SimulatorStart {
    pub(crate) listener: TcpListener,
    pub(crate) remembered_effects: usize,
    pub(crate) shutdown: CancellationToken,
}

impl SimulatorStart {
    /// `simulator`, served by `serve` on the listener until shutdown.
    fn serve<S, F>(
        self,
        simulator: S,
        serve: impl FnOnce(Arc<S>, TcpListener, CancellationToken) -> F,
    ) -> Simulation
    where
        S: ControlledSimulator,
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let simulator = Arc::new(simulator);
        Simulation {
            controls: simulator.clone(),
            serving: Box::pin(serve(simulator, self.listener, self.shutdown)),
        }
    }
}

/// `stand_in` of a system whose address is the one key `key`.
pub(crate) fn stand_in_at(settings: &mut ProtocolSettings, key: &str, address: &str) -> bool {
    let configured = settings.get(key).is_some_and(|v| !v.is_null());
    if !configured {
        settings.insert(key.into(), address.into());
    }
    !configured
}

/// A module's typed view of its protocol settings; its type refuses unknown keys.
pub(crate) fn read_settings<T: DeserializeOwned>(
    system: System,
    settings: &ProtocolSettings,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(settings.clone()))
        .map_err(|e| format!("[{}]: {e}", system.as_str()))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The registry cannot drift from the domain: every system of the journey has
    /// exactly one protocol module, and every module is a system of the journey.
    #[test]
    fn every_system_has_exactly_one_registration() {
        for system in System::ALL {
            let registered = BACK_OFFICE.iter().filter(|b| b.system() == system).count();
            assert_eq!(
                registered,
                1,
                "{} has {registered} registrations",
                system.as_str()
            );
        }
        assert_eq!(BACK_OFFICE.len(), System::ALL.len());
        let labels: HashSet<_> = BACK_OFFICE.iter().map(|b| b.label()).collect();
        assert_eq!(labels.len(), BACK_OFFICE.len(), "banner labels are unique");
        let names: HashSet<_> = System::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), System::ALL.len(), "system names are unique");
    }

    /// The built-in defaults give every module settings it accepts.
    #[test]
    fn the_default_settings_suit_every_module() {
        let settings = crate::config::Settings::defaults_with(serde_json::json!({})).unwrap();
        for back_office in BACK_OFFICE {
            let section = &settings.system(back_office.system()).protocol;
            assert_eq!(back_office.check(section), Ok(()));
        }
    }
}
