//! The root supervisor. It starts the subtrees, restarts the adapters subtree when it
//! escalates (within its own intensity limit) and stops, ending the process with an
//! error, when things keep failing: a node that cannot keep its adapters up should be
//! replaced by its own supervisor (systemd, Kubernetes), not limp on.

use super::Context;
use super::adapters::{self, AdaptersArgs, AdaptersSupervisor};
use super::control::ActorKind;
use super::notifier::{self, Notifier, NotifierArgs};
use super::orders::{OrdersArgs, OrdersMsg, OrdersSupervisor};
use super::supervision::{RestartIntensity, on_child_failure};
use super::telemetry::{self, ActorInfo, Lifecycle, MailboxGauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::Arc;

pub(crate) const NAME: &str = "root";

pub(crate) enum RootMsg {
    RestartAdapters,
    OrdersSupervisor(ractor::RpcReplyPort<ActorRef<OrdersMsg>>),
    Notifier(ractor::RpcReplyPort<Notifier>),
}

pub(crate) struct RootArgs {
    pub(crate) context: Arc<Context>,
    pub(crate) orders_mailbox: MailboxGauge,
}

pub(crate) struct RootState {
    context: Arc<Context>,
    orders: ActorRef<OrdersMsg>,
    notifier: Notifier,
    adapters: Option<ActorRef<adapters::AdaptersMsg>>,
    intensity: RestartIntensity,
}

pub(crate) struct Root;

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let context = args.context;
        telemetry::register(
            &context.telemetry,
            ActorInfo {
                name: NAME.into(),
                kind: ActorKind::Supervisor,
                parent: None,
                mailbox: None,
                family: None,
            },
        );
        telemetry::register(
            &context.telemetry,
            ActorInfo {
                name: "telemetry".into(),
                kind: ActorKind::Telemetry,
                parent: Some(NAME.into()),
                mailbox: None,
                family: None,
            },
        );
        context.telemetry.get_cell().link(myself.get_cell());
        let orders_args = OrdersArgs {
            context: context.clone(),
            mailbox: args.orders_mailbox,
            parent: NAME.into(),
        };
        let (orders, _) =
            Actor::spawn_linked(None, OrdersSupervisor, orders_args, myself.get_cell()).await?;
        let notifier_args = NotifierArgs {
            telemetry: context.telemetry.clone(),
            mailbox: MailboxGauge::new(
                notifier::NAME,
                notifier::NAME,
                context.settings.telemetry.mailbox_timing,
            ),
            parent: NAME.into(),
            listeners: context.listeners.clone(),
        };
        let notifier = notifier::spawn_linked(notifier_args, myself.get_cell()).await?;
        let mut state = RootState {
            intensity: RestartIntensity::new(&context.settings.supervision),
            context,
            orders,
            notifier,
            adapters: None,
        };
        state.start_adapters(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::RestartAdapters => {
                state.start_adapters(&myself).await?;
                telemetry::lifecycle(
                    &state.context.telemetry,
                    adapters::NAME,
                    Lifecycle::Restarted,
                    None,
                );
            }
            RootMsg::OrdersSupervisor(reply) => {
                let _ = reply.send(state.orders.clone());
            }
            RootMsg::Notifier(reply) => {
                let _ = reply.send(state.notifier.clone());
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
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            _ => return Ok(()),
        };
        let is_adapters = state
            .adapters
            .as_ref()
            .is_some_and(|a| a.get_id() == cell.get_id());
        if !is_adapters {
            // The orders supervisor, the notifier and telemetry do not fail on input; if one ends,
            // something is badly wrong and the node stops.
            return Err(format!("essential actor {} ended: {failure:?}", cell.get_id()).into());
        }
        state.adapters = None;
        on_child_failure(
            &mut state.intensity,
            &state.context.telemetry,
            adapters::NAME,
            failure,
            "the adapters keep failing; stopping the node".into(),
            |after| {
                myself.send_after(after, || RootMsg::RestartAdapters);
            },
        )
    }
}

impl RootState {
    async fn start_adapters(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = AdaptersArgs {
            context: self.context.clone(),
            parent: NAME.into(),
        };
        let (adapters, _) =
            Actor::spawn_linked(None, AdaptersSupervisor, args, myself.get_cell()).await?;
        self.adapters = Some(adapters);
        Ok(())
    }
}
