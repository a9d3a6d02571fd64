//! Starts the three simulators (and their control API) on their configured
//! addresses: in-process for the embedded default, or alone with `swiftlogistics
//! simulate`.

use crate::config::{Settings, SimulatorSettings};
use crate::domain::System;
use crate::protocols::cms::CmsSimulator;
use crate::protocols::ros::RosSimulator;
use crate::protocols::simulator::{ControlledSimulator, KnobSettings, Simulators, control_router};
use crate::protocols::wms::WmsSimulator;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct RunningSimulators {
    pub cms: Arc<CmsSimulator>,
    pub wms: Arc<WmsSimulator>,
    pub ros: Arc<RosSimulator>,
    pub(crate) cms_addr: SocketAddr,
    pub(crate) ros_addr: SocketAddr,
    pub wms_addr: SocketAddr,
    pub control_addr: SocketAddr,
    /// The systems the simulators stand in for (those without an address of their own).
    pub standing_in: Vec<System>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSimulators {
    pub fn cms_url(&self) -> String {
        format!("http://{}/cms", self.cms_addr)
    }

    pub fn ros_url(&self) -> String {
        format!("http://{}", self.ros_addr)
    }

    /// The settings the clients use: every system whose address is not configured
    /// points at its simulator; an address set explicitly stays (configuration does
    /// what it says). A CMS counts as configured by its WSDL too. The node's own
    /// settings stay as configured, so a restart with them starts afresh.
    pub(crate) fn stand_in(&mut self, configured: &Settings) -> Settings {
        let mut settings = configured.clone();
        self.standing_in.clear();
        if settings.cms.url.is_none() && settings.cms.wsdl.is_none() {
            settings.cms.url = Some(self.cms_url());
            self.standing_in.push(System::Cms);
        }
        if settings.wms.addr.is_none() {
            settings.wms.addr = Some(self.wms_addr.to_string());
            self.standing_in.push(System::Wms);
        }
        if settings.ros.url.is_none() {
            settings.ros.url = Some(self.ros_url());
            self.standing_in.push(System::Ros);
        }
        settings
    }

    /// Waits for every server to finish after the shutdown token was cancelled.
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the {what} on {addr}"))
}

fn log_exit(what: &'static str, result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::error!(simulator = what, error = %e, "simulator stopped with an error");
    }
}

pub async fn start(
    settings: &SimulatorSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningSimulators> {
    let cms = Arc::new(CmsSimulator::new(KnobSettings::default()));
    let ros = Arc::new(RosSimulator::new(KnobSettings::default()));
    let wms = Arc::new(WmsSimulator::new(KnobSettings::default()));
    let cms_listener = bind(&settings.cms_bind, "CMS simulator").await?;
    let ros_listener = bind(&settings.ros_bind, "ROS simulator").await?;
    let wms_listener = bind(&settings.wms_bind, "WMS simulator").await?;
    let control_listener = bind(&settings.control_bind, "simulator control API").await?;
    let cms_addr = cms_listener.local_addr()?;
    let ros_addr = ros_listener.local_addr()?;
    let wms_addr = wms_listener.local_addr()?;
    let control_addr = control_listener.local_addr()?;

    let mut controlled = Simulators::new();
    controlled.insert("cms".into(), cms.clone() as Arc<dyn ControlledSimulator>);
    controlled.insert("ros".into(), ros.clone() as Arc<dyn ControlledSimulator>);
    controlled.insert("wms".into(), wms.clone() as Arc<dyn ControlledSimulator>);
    let control = control_router(controlled);

    let mut tasks = Vec::new();
    let (sim, token) = (cms.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        log_exit("cms", sim.serve(cms_listener, token).await)
    }));
    let (sim, token) = (ros.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        log_exit("ros", sim.serve(ros_listener, token).await)
    }));
    let (sim, token) = (wms.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        log_exit("wms", sim.serve(wms_listener, token).await)
    }));
    tasks.push(tokio::spawn(async move {
        let server = axum::serve(control_listener, control)
            .with_graceful_shutdown(shutdown.cancelled_owned());
        log_exit("control", server.await);
    }));
    Ok(RunningSimulators {
        cms,
        wms,
        ros,
        cms_addr,
        ros_addr,
        wms_addr,
        control_addr,
        standing_in: Vec::new(),
        tasks,
    })
}
