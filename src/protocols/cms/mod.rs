//! The CMS, the legacy client management system: SOAP 1.1 over HTTP (DESIGN
//! section 6). `ValidateCustomer` is the saga's first, read-only step;
//! `CancelOrder` is its compensation.
//!
//! - `codec`: envelopes in and out, no IO
//! - `CmsClient`: the runtime's `SystemClient` for the CMS
//! - `CmsSimulator`: the other side, for tests, benchmarks and the embedded default

pub mod codec;
pub mod wsdl;

mod client;
mod simulator;

pub use client::{CmsClient, CmsClientError, CmsTarget};
pub use simulator::CmsSimulator;

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

/// Where the CMS is when nothing says otherwise (seed 000 section 11's port).
const DEFAULT_URL: &str = "http://127.0.0.1:4000/cms";

/// The CMS's keys of `[cms]` (see config/default.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmsSettings {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    wsdl: Option<String>,
    wsdl_reread_secs: u64,
}

impl CmsSettings {
    fn read(settings: &ProtocolSettings) -> Result<Self, String> {
        let read: Self = read_settings(System::Cms, settings)?;
        if read.wsdl_reread_secs == 0 {
            return Err("cms.wsdl_reread_secs must be positive".into());
        }
        Ok(read)
    }

    fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }

    /// The WSDL's URL or path: `<url>?wsdl` unless set.
    fn wsdl(&self) -> String {
        self.wsdl
            .clone()
            .unwrap_or_else(|| format!("{}?wsdl", self.url()))
    }
}

/// The CMS's entry in `protocols::BACK_OFFICE`.
pub(crate) struct Registration;

#[async_trait]
impl BackOffice for Registration {
    fn system(&self) -> System {
        System::Cms
    }

    fn label(&self) -> &'static str {
        "CMS SOAP"
    }

    fn check(&self, settings: &ProtocolSettings) -> Result<(), String> {
        CmsSettings::read(settings).map(drop)
    }

    async fn client(
        &self,
        settings: &ProtocolSettings,
        timeout: Duration,
    ) -> anyhow::Result<Arc<dyn SystemClient>> {
        let settings = CmsSettings::read(settings).map_err(anyhow::Error::msg)?;
        let target = CmsTarget {
            wsdl: settings.wsdl(),
            url: settings.url.clone(),
            fallback_url: settings.url().to_owned(),
            reread_every: Duration::from_secs(settings.wsdl_reread_secs),
        };
        Ok(Arc::new(CmsClient::from_wsdl(target, timeout).await?))
    }

    fn target(&self, settings: &ProtocolSettings) -> String {
        match CmsSettings::read(settings) {
            Ok(CmsSettings { url: Some(url), .. }) => url,
            Ok(settings) => format!("as described by {}", settings.wsdl()),
            Err(error) => error,
        }
    }

    /// A CMS counts as configured by its WSDL too.
    fn stand_in(&self, settings: &mut ProtocolSettings, address: &str) -> bool {
        let by_wsdl = settings.get("wsdl").is_some_and(|v| !v.is_null());
        !by_wsdl && stand_in_at(settings, "url", address)
    }

    fn simulate(&self, start: SimulatorStart) -> Simulation {
        let simulator =
            CmsSimulator::new(KnobSettings::default()).remembering(start.remembered_effects);
        start.serve(simulator, CmsSimulator::serve)
    }

    fn simulator_address(&self, listening: SocketAddr) -> String {
        format!("http://{listening}/cms")
    }

    fn describe_simulator(&self, address: &str) -> String {
        format!("{address} (WSDL at ?wsdl)")
    }
}
