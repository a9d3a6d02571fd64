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

use super::{
    BackOffice, ProtocolSettings, Simulation, SimulatorStart, SystemClient, read_settings,
    stand_in_at,
};
use crate::domain::System;
use crate::protocols::simulator::KnobSettings;
use async_trait::async_trait;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where the warehouse is when nothing says otherwise (seed 000 section 11's port).
const DEFAULT_ADDR: &str = "127.0.0.1:4002";

/// The WMS's keys of `[wms]` (see config/default.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WmsSettings {
    #[serde(default)]
    addr: Option<String>,
    connections: usize,
}

impl WmsSettings {
    fn read(settings: &ProtocolSettings) -> Result<Self, String> {
        let read: Self = read_settings(System::Wms, settings)?;
        if read.connections == 0 {
            return Err("wms.connections must be positive".into());
        }
        Ok(read)
    }

    fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or(DEFAULT_ADDR)
    }
}

/// The WMS's entry in `protocols::BACK_OFFICE`.
pub(crate) struct Registration;

#[async_trait]
impl BackOffice for Registration {
    fn system(&self) -> System {
        System::Wms
    }

    fn label(&self) -> &'static str {
        "WMS TCP"
    }

    fn check(&self, settings: &ProtocolSettings) -> Result<(), String> {
        WmsSettings::read(settings).map(drop)
    }

    async fn client(
        &self,
        settings: &ProtocolSettings,
        timeout: Duration,
    ) -> anyhow::Result<Arc<dyn SystemClient>> {
        let settings = WmsSettings::read(settings).map_err(anyhow::Error::msg)?;
        let addr = settings.addr().to_owned();
        Ok(Arc::new(WmsClient::new(
            addr,
            settings.connections,
            timeout,
        )))
    }

    fn target(&self, settings: &ProtocolSettings) -> String {
        WmsSettings::read(settings).map_or_else(|e| e, |s| s.addr().to_owned())
    }

    fn stand_in(&self, settings: &mut ProtocolSettings, address: &str) -> bool {
        stand_in_at(settings, "addr", address)
    }

    fn simulate(&self, start: SimulatorStart) -> Simulation {
        let simulator =
            WmsSimulator::new(KnobSettings::default()).remembering(start.remembered_effects);
        start.serve(simulator, WmsSimulator::serve)
    }

    fn simulator_address(&self, listening: SocketAddr) -> String {
        listening.to_string()
    }
}
