//! The `adapters` supervisor: one_for_one over the cms, wms and ros adapter actors,
//! with the restart intensity of `supervision::RestartIntensity` (at most 5 restarts
//! in 10 s by default, with backoff), escalating to the root beyond it.

use super::Context;
use super::adapter::{Adapter, AdapterArgs, AdapterCore, AdapterMsg};
use super::control::ActorKind;
use super::supervision::{RestartIntensity, on_child_failure};
use super::telemetry::{self, ActorInfo, Lifecycle};
use crate::domain::System;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const NAME: &str = "adapters";

pub(crate) fn actor_name(system: System) -> String {
    format!("adapter-{}", system.as_str())
}

pub(crate) enum AdaptersMsg {
    Respawn(System),
}

pub(crate) struct AdaptersArgs {
    pub(crate) context: Arc<Context>,
    pub(crate) parent: String,
}

pub(crate) struct AdaptersState {
    context: Arc<Context>,
    children: HashMap<ActorId, System>,
    intensity: RestartIntensity,
}

pub(crate) struct AdaptersSupervisor;

impl Actor for AdaptersSupervisor {
    type Msg = AdaptersMsg;
    type State = AdaptersState;
    type Arguments = AdaptersArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: AdaptersArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        telemetry::register(
            &args.context.telemetry,
            ActorInfo {
                name: NAME.into(),
                kind: ActorKind::Supervisor,
                parent: Some(args.parent),
                mailbox: None,
                family: None,
            },
        );
        let intensity = RestartIntensity::new(&args.context.settings.supervision);
        Ok(AdaptersState {
            context: args.context,
            children: HashMap::new(),
            intensity,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for system in System::ALL {
            state.spawn(&myself, system).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AdaptersMsg::Respawn(system) => {
                state.spawn(&myself, system).await?;
                telemetry::lifecycle(
                    &state.context.telemetry,
                    &actor_name(system),
                    Lifecycle::Restarted,
                    None,
                );
                tracing::info!(system = system.as_str(), "adapter restarted");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(system) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.context.adapters.remove_live(system);
                let name = actor_name(system);
                tracing::error!(actor = %name, %error, "adapter failed");
                on_child_failure(
                    &mut state.intensity,
                    &state.context.telemetry,
                    &name,
                    Some(error.to_string()),
                    format!("{name} failed too often; escalating"),
                    |after| {
                        myself.send_after(after, move || AdaptersMsg::Respawn(system));
                    },
                )?;
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(system) = state.children.remove(&cell.get_id()) {
                    state.context.adapters.remove_live(system);
                    telemetry::lifecycle(
                        &state.context.telemetry,
                        &actor_name(system),
                        Lifecycle::Stopped,
                        None,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl AdaptersState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<AdaptersMsg>,
        system: System,
    ) -> Result<(), ActorProcessingErr> {
        let core: Arc<AdapterCore> = self
            .context
            .adapters
            .core(system)
            .ok_or_else(|| format!("no client configured for {}", system.as_str()))?;
        telemetry::register(
            &self.context.telemetry,
            ActorInfo {
                name: actor_name(system),
                kind: ActorKind::Adapter,
                parent: Some(NAME.into()),
                mailbox: Some(core.mailbox.clone()),
                family: None,
            },
        );
        let args = AdapterArgs {
            core,
            context: self.context.clone(),
        };
        let (actor, _): (ActorRef<AdapterMsg>, _) =
            Actor::spawn_linked(None, Adapter, args, myself.get_cell()).await?;
        self.children.insert(actor.get_id(), system);
        self.context.adapters.set_live(system, actor);
        Ok(())
    }
}
