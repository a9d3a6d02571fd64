//! Starts a simulator of every back-office system (and their control API) on their
//! configured addresses: in-process for the embedded default, or alone with
//! `swiftlogistics simulate`. Each system's module says how
//! (`protocols::BackOffice::simulate`).

use crate::config::{Settings, SimulatorSettings};
use crate::domain::System;
use crate::protocols::simulator::{ControlledSimulator, Simulators, control_router};
use crate::protocols::{BACK_OFFICE, BackOffice, SimulatorStart};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct RunningSimulators {
    /// One per registered system, in the order of `protocols::BACK_OFFICE`.
    simulators: Vec<Simulated>,
    pub control_addr: SocketAddr,
    /// The systems the simulators stand in for (those without an address of their own).
    pub standing_in: Vec<System>,
    tasks: Vec<JoinHandle<()>>,
}

struct Simulated {
    back_office: &'static dyn BackOffice,
    controls: Arc<dyn ControlledSimulator>,
    /// The address clients call it by.
    address: String,
}

impl RunningSimulators {
    fn find(&self, system: System) -> Option<&Simulated> {
        self.simulators
            .iter()
            .find(|s| s.back_office.system() == system)
    }

    /// The simulator of `system`.
    pub fn get(&self, system: System) -> Option<&dyn ControlledSimulator> {
        self.find(system).map(|s| s.controls.as_ref())
    }

    /// The address a client calls the simulator of `system` by
    /// (`http://127.0.0.1:4000/cms`, `127.0.0.1:4002`, ...).
    pub fn address(&self, system: System) -> Option<String> {
        self.find(system).map(|s| s.address.clone())
    }

    /// Each simulator as the `simulate` banner shows it: `CMS SOAP <address> ...`.
    pub fn described(&self) -> Vec<String> {
        self.simulators
            .iter()
            .map(|s| {
                let shown = s.back_office.describe_simulator(&s.address);
                format!("{} {shown}", s.back_office.label())
            })
            .collect()
    }

    /// The settings the clients use: every system whose address is not configured
    /// points at its simulator; an address set explicitly stays (configuration does
    /// what it says). The node's own settings stay as configured, so a restart with
    /// them starts afresh.
    pub(crate) fn stand_in(&mut self, configured: &Settings) -> Settings {
        let mut settings = configured.clone();
        self.standing_in.clear();
        for system in System::ALL {
            let Some(simulated) = self.find(system) else {
                continue;
            };
            let section = &mut settings.systems.get_mut(system).protocol;
            if simulated.back_office.stand_in(section, &simulated.address) {
                self.standing_in.push(system);
            }
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

/// Every system has a simulator (one per registration, and the registry has every
/// system: `protocols` tests it), so tests may index by system.
impl std::ops::Index<System> for RunningSimulators {
    type Output = dyn ControlledSimulator;

    fn index(&self, system: System) -> &Self::Output {
        match self.get(system) {
            Some(simulator) => simulator,
            None => panic!("no simulator of {} is registered", system.as_str()),
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
    // Every address is taken before any server starts, so a failure leaves none.
    let mut listeners = Vec::new();
    for back_office in BACK_OFFICE {
        let system = back_office.system();
        let what = format!("{} simulator", system.as_str().to_uppercase());
        listeners.push((*back_office, bind(settings.bind(system), &what).await?));
    }
    let control_listener = bind(&settings.control_bind, "simulator control API").await?;
    let control_addr = control_listener.local_addr()?;

    let mut simulators = Vec::new();
    let mut controlled = Simulators::new();
    let mut tasks = Vec::new();
    for (back_office, listener) in listeners {
        let system = back_office.system();
        let address = back_office.simulator_address(listener.local_addr()?);
        let simulation = back_office.simulate(SimulatorStart {
            listener,
            remembered_effects: settings.remembered_effects,
            shutdown: shutdown.clone(),
        });
        controlled.insert(system.as_str().into(), simulation.controls.clone());
        tasks.push(tokio::spawn(async move {
            log_exit(system.as_str(), simulation.serving.await)
        }));
        simulators.push(Simulated {
            back_office,
            controls: simulation.controls,
            address,
        });
    }
    let control = control_router(controlled);
    tasks.push(tokio::spawn(async move {
        let server = axum::serve(control_listener, control)
            .with_graceful_shutdown(shutdown.cancelled_owned());
        log_exit("control", server.await);
    }));
    Ok(RunningSimulators {
        simulators,
        control_addr,
        standing_in: Vec::new(),
        tasks,
    })
}
