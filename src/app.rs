//! Wiring: builds the store, the bus, the simulators, the supervisor tree, the bridges
//! and the HTTP server from the settings, and takes them down again in order.

use crate::actors::adapter::AdapterCore;
use crate::actors::cluster::{ClusterArgs, ClusterKeeper, ClusterMsg, ClusterView};
use crate::actors::notifier::{self, Notifier};
use crate::actors::orders::OrdersMsg;
use crate::actors::root::{RootArgs, RootMsg};
use crate::actors::shards::ShardTable;
use crate::actors::telemetry::{
    EventPage, EventQuery, MailboxGauge, MailboxesView, Telemetry, TelemetryArgs, TelemetryMsg,
};
use crate::actors::{
    ActorNode, AdapterDirectory, Context, Root, RuntimeControl, ServiceHealth, bridge,
};
use crate::bus::OrderActorLocation;
use crate::bus::amqp::AmqpBus;
use crate::bus::local::LocalBus;
use crate::bus::{ClusterMessage, Listeners, SharedBus};
use crate::config::{BusKind, Settings, StoreKind};
use crate::domain::{Email, OrderId, Role, System};
use crate::protocols::{self, SystemClient};
use crate::service::{Admission, OrderService};
use crate::simulators::{self, RunningSimulators};
use crate::store::SharedStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use anyhow::{Context as _, bail};
use async_trait::async_trait;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a control request to an actor may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Time kept at the end of a drain for the HTTP server to finish its requests.
const HTTP_DRAIN_SHARE: Duration = Duration::from_secs(3);

/// A running node.
pub struct Runtime {
    pub settings: Arc<Settings>,
    pub http_addr: SocketAddr,
    pub simulators: Option<RunningSimulators>,
    pub context: Arc<Context>,
    pub orders: OrderService,
    /// Accounts created at this start with generated passwords, to print once.
    pub generated_accounts: Vec<(Email, Role, String)>,
    shutdown: CancellationToken,
    /// Cancelled first in a drain: WebSocket sessions close with 1012.
    sessions: CancellationToken,
    /// Stops the HTTP server gracefully (new connections refused, requests finish).
    http_shutdown: CancellationToken,
    http_task: JoinHandle<()>,
    keeper: ActorRef<ClusterMsg>,
    root: ActorRef<RootMsg>,
    root_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// The process-wide Prometheus recorder (a process has one metrics registry, even
/// when tests start several nodes in it).
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = crate::observability::prometheus_builder().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "histogram buckets refused; exporting summaries");
                PrometheusBuilder::new()
            });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays
            // unused and /metrics shows what it can.
            if metrics::set_global_recorder(recorder).is_ok() {
                crate::observability::describe_metrics();
            }
            handle
        })
        .clone()
}

async fn open_store(settings: &Settings) -> anyhow::Result<SharedStore> {
    match settings.store.kind {
        StoreKind::Embedded => {
            let tuning = crate::store::embedded::Tuning {
                cache_bytes: settings.store.cache_mib.saturating_mul(1024 * 1024),
                cached_orders: settings.store.cached_orders,
                commit_window: Duration::from_micros(settings.store.commit_window_us),
            };
            let store = EmbeddedStore::open_with(
                &settings.store.path,
                Duration::from_secs(settings.store.timeout_secs),
                tuning,
            )
            .with_context(|| {
                format!(
                    "cannot open the store under {}",
                    settings.store.path.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        StoreKind::Mongo => {
            let store = MongoStore::connect(
                &settings.store.mongodb_uri,
                &settings.store.database,
                Duration::from_secs(settings.store.timeout_secs),
            )
            .await
            .context("cannot connect to MongoDB (store.mongodb_uri / MONGODB_URI)")?;
            Ok(Arc::new(store))
        }
    }
}

/// `queue_owner` names this process's private queues on the broker.
async fn open_bus(
    settings: &Settings,
    queue_owner: &str,
    listeners: &Listeners,
) -> anyhow::Result<SharedBus> {
    match settings.bus.kind {
        BusKind::Local => Ok(Arc::new(LocalBus::new(
            settings.bus.shards,
            listeners.clone(),
        ))),
        BusKind::Amqp => {
            let bus = AmqpBus::connect(&settings.bus, queue_owner)
                .await
                .context("cannot connect to RabbitMQ (bus.rabbitmq_url / RABBITMQ_URL)")?;
            Ok(Arc::new(bus))
        }
    }
}

/// A client of every system, built by its protocol module from its section.
async fn clients(settings: &Settings) -> anyhow::Result<Vec<(System, Arc<dyn SystemClient>)>> {
    let mut clients = Vec::new();
    for system in System::ALL {
        let back_office = protocols::back_office(system)
            .with_context(|| format!("no protocol module is registered for {}", system.as_str()))?;
        let timeout = Duration::from_millis(settings.call_limits(system).timeout_ms);
        let client = back_office
            .client(&settings.system(system).protocol, timeout)
            .await?;
        clients.push((system, client));
    }
    Ok(clients)
}

pub async fn start(settings: Settings) -> anyhow::Result<Runtime> {
    let shutdown = CancellationToken::new();
    let mut addressed = None;
    let simulators = if settings.simulators.enabled {
        let mut sims = simulators::start(&settings.simulators, shutdown.child_token()).await?;
        // Systems without an address of their own go to wherever the simulators
        // really listen (port 0 in tests).
        addressed = Some(sims.stand_in(&settings));
        Some(sims)
    } else {
        None
    };
    // Listening first: the port is part of the default node id.
    let listener = tokio::net::TcpListener::bind(&settings.http.bind)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", settings.http.bind))?;
    let http_addr = listener.local_addr()?;
    let node_id = settings.node_id(http_addr.port());
    // A restarted node keeps its id but not its private queues, which the broker
    // may still hold for the process that died.
    let incarnation = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let settings = Arc::new(settings);
    // Installed before anything records, so that every metric lands in it.
    let metrics = metrics_handle();
    crate::observability::declare_series();
    let store = open_store(&settings).await?;
    let listeners = Listeners::default();
    let bus = open_bus(&settings, &format!("{node_id}.{incarnation}"), &listeners).await?;
    let admission = Arc::new(Admission::new(settings.orders.max_in_flight));
    let telemetry_args = TelemetryArgs {
        node: node_id.clone(),
        history: settings.telemetry.history,
        metrics: Some(metrics.clone()),
    };
    let (telemetry, _) = Actor::spawn(None, Telemetry, telemetry_args).await?;
    let shards = Arc::new(ShardTable::new(bus.shard_count()));
    metrics::gauge!("swift_node_info", "node" => node_id.clone()).set(1.0);
    tracing::info!(node = %node_id, %incarnation, shards = shards.shards(), "node starting");

    let cores = clients(addressed.as_ref().unwrap_or(&settings))
        .await?
        .into_iter()
        .map(|(system, client)| AdapterCore::new(system, client, &settings));
    let context = Arc::new(Context {
        node_id: node_id.clone(),
        settings: settings.clone(),
        store: store.clone(),
        bus: bus.clone(),
        admission: admission.clone(),
        shards: shards.clone(),
        telemetry: telemetry.clone(),
        adapters: AdapterDirectory::new(cores),
        listeners,
    });

    let orders_mailbox = MailboxGauge::new(
        crate::actors::orders::NAME,
        crate::actors::orders::NAME,
        settings.telemetry.mailbox_timing,
    );
    let root_args = RootArgs {
        context: context.clone(),
        orders_mailbox: orders_mailbox.clone(),
    };
    let (root, root_task) = Actor::spawn(None, Root, root_args).await?;
    let orders_supervisor: ActorRef<OrdersMsg> = ractor::call_t!(
        root,
        RootMsg::OrdersSupervisor,
        CONTROL_TIMEOUT.as_millis() as u64
    )?;

    let mut tasks = Vec::new();
    for system in System::ALL {
        let inbox = bus.step_requests(system).await?;
        tasks.push(bridge::spawn_step_bridge(
            context.clone(),
            system,
            inbox,
            shutdown.child_token(),
        ));
    }
    let keeper_args = ClusterArgs {
        context: context.clone(),
        orders: orders_supervisor.clone(),
        incarnation,
    };
    let (keeper, _) =
        Actor::spawn_linked(None, ClusterKeeper, keeper_args, root.get_cell()).await?;
    let heard = bus.cluster_messages().await?;
    tasks.push(bridge::spawn_cluster_bridge(
        keeper.clone(),
        heard,
        shutdown.child_token(),
    ));
    // Last: from here on this node may become active on shards, and every gain
    // resumes that shard's unfinished orders from the store.
    let feed = bus.order_shards().await?;
    tasks.push(bridge::spawn_shard_bridge(
        context.clone(),
        orders_supervisor.clone(),
        keeper.clone(),
        orders_mailbox,
        bridge::gauge(&context, "bridge-orders"),
        feed,
        shutdown.child_token(),
    ));
    let notifier: Notifier =
        ractor::call_t!(root, RootMsg::Notifier, CONTROL_TIMEOUT.as_millis() as u64)?;
    let updates = bus.order_updates().await?;
    tasks.push(notifier::spawn_update_bridge(
        notifier.clone(),
        bridge::gauge(&context, "bridge-updates"),
        updates,
        shutdown.child_token(),
    ));

    let generated_accounts = crate::auth::ensure_bootstrap_accounts(&*store, &settings).await?;
    let orders = OrderService::new(store.clone(), bus.clone(), admission, &node_id);

    let sessions = shutdown.child_token();
    let state = crate::http::AppState {
        settings: settings.clone(),
        bus: bus.clone(),
        orders: orders.clone(),
        drivers: crate::service::DriverService::new(store.clone()),
        sessions: Arc::new(crate::auth::Sessions::new(store.clone(), &settings.auth)),
        control: Arc::new(Control(context.clone(), keeper.clone())),
        metrics,
        tracking: crate::http::ws::Tracking {
            notifier,
            shutdown: sessions.clone(),
        },
    };
    let http_shutdown = shutdown.child_token();
    let http_task = tokio::spawn(crate::http::server::serve(
        listener,
        crate::http::router(state),
        (&settings.http).into(),
        http_shutdown.clone(),
    ));

    Ok(Runtime {
        settings,
        http_addr,
        simulators,
        context,
        orders,
        generated_accounts,
        shutdown,
        sessions,
        http_shutdown,
        http_task,
        keeper,
        root,
        root_task,
        tasks,
    })
}

impl Runtime {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Where each system is called, as the start-up banner shows it:
    /// `CMS SOAP <address>`, with `(simulated)` where a simulator stands in.
    pub fn system_targets(&self) -> Vec<String> {
        protocols::BACK_OFFICE
            .iter()
            .map(|back_office| {
                let system = back_office.system();
                let simulated = self
                    .simulators
                    .as_ref()
                    .filter(|s| s.standing_in.contains(&system))
                    .and_then(|s| s.address(system));
                let shown = match simulated {
                    Some(address) => format!("{address} (simulated)"),
                    None => back_office.target(&self.settings.system(system).protocol),
                };
                format!("{} {shown}", back_office.label())
            })
            .collect()
    }

    pub fn control(&self) -> Control {
        Control(self.context.clone(), self.keeper.clone())
    }

    /// Runs until `stop` resolves (then drains) or the supervisor tree gives up.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failed = tokio::select! {
            _ = stop => false,
            _ = &mut self.root_task => true,
        };
        if failed {
            self.shutdown().await;
            bail!("the supervisor tree stopped; see the log for the failure");
        }
        let limit = Duration::from_secs(self.settings.cluster.drain_timeout_secs);
        self.drain(limit).await;
        Ok(())
    }

    /// A graceful stop within `limit` (DESIGN section 9): not ready and no intake at
    /// once, WebSocket sessions told to reconnect elsewhere (1012), every shard handed
    /// over (actors stopped, then consumers ended), requests in flight finished; then
    /// everything stops.
    pub(crate) async fn drain(mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        tracing::info!(node = %self.context.node_id, ?limit, "draining");
        self.context.admission.close();
        self.sessions.cancel();
        let shards_by = deadline
            .checked_sub(HTTP_DRAIN_SHARE.min(limit / 2))
            .unwrap_or(deadline);
        let left = shards_by.saturating_duration_since(tokio::time::Instant::now());
        let handed_over = ractor::call_t!(self.keeper, ClusterMsg::Drain, left.as_millis() as u64);
        match handed_over {
            Ok(()) => tracing::info!(node = %self.context.node_id, "every shard handed over"),
            Err(error) => {
                tracing::warn!(%error, "shards not all handed over in time; the broker moves them when the node goes")
            }
        }
        self.http_shutdown.cancel();
        let Self { http_task, .. } = &mut self;
        if tokio::time::timeout_at(deadline, http_task).await.is_err() {
            tracing::warn!("HTTP requests still running at the end of the drain");
        }
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(rest.max(Duration::from_secs(1)), self.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the node did not stop in time after draining");
        }
    }

    /// Stops accepting requests, then stops the actors, then the simulators.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.http_task.abort();
        for task in self.tasks {
            let _ = task.await;
        }
        self.root.stop_children(None);
        self.root.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.root_task).await;
        if let Some(sims) = self.simulators {
            sims.join().await;
        }
    }
}

/// Operator controls over the running tree.
#[derive(Clone)]
pub struct Control(Arc<Context>, ActorRef<ClusterMsg>);

impl Control {
    /// Fault injection for supervision drills: makes the adapter panic.
    pub fn crash_adapter(&self, system: System) -> bool {
        self.0.adapters.live(system).is_some_and(|a| {
            a.cast(crate::actors::adapter::AdapterMsg::InjectPanic)
                .is_ok()
        })
    }
}

#[async_trait]
impl RuntimeControl for Control {
    async fn services_health(&self) -> Vec<ServiceHealth> {
        System::ALL
            .into_iter()
            .filter_map(|s| self.0.adapters.core(s))
            .map(|core| core.health())
            .collect()
    }

    /// Closes the circuit here and asks every other node to close theirs.
    async fn recover(&self, system: System) -> Option<ServiceHealth> {
        let everywhere = ClusterMessage::RecoverCircuit {
            service: system,
            from: self.0.node_id.clone(),
        };
        if let Err(error) = self.0.bus.broadcast(everywhere).await {
            tracing::warn!(%error, "circuit recovery not sent to the other nodes");
        }
        let adapter = self.0.adapters.live(system)?;
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(
            adapter,
            crate::actors::adapter::AdapterMsg::Recover,
            timeout
        )
        .ok()
    }

    fn node_id(&self) -> String {
        self.0.node_id.clone()
    }

    async fn order_actor(&self, order_id: &OrderId) -> Result<OrderActorLocation, String> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        let locate = |reply| ClusterMsg::Locate {
            order_id: order_id.clone(),
            reply,
        };
        match ractor::call_t!(self.1, locate, timeout) {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(format!(
                "the node holding the order's shard did not answer: {error}"
            )),
        }
    }

    async fn mailboxes(&self) -> Option<MailboxesView> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(self.0.telemetry, TelemetryMsg::Mailboxes, timeout).ok()
    }

    async fn events(&self, query: EventQuery) -> Option<EventPage> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(self.0.telemetry, TelemetryMsg::Events, timeout, query).ok()
    }

    async fn cluster(&self) -> Option<ClusterView> {
        let keeper = self.1.clone();
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(keeper, ClusterMsg::View, timeout).ok()
    }

    async fn supervision(&self) -> ActorNode {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        match ractor::call_t!(self.0.telemetry, TelemetryMsg::Tree, timeout) {
            Ok(tree) => tree,
            Err(e) => ActorNode {
                name: "root".into(),
                kind: crate::actors::ActorKind::Supervisor,
                status: format!("unknown ({e})"),
                restarts: 0,
                mailbox_depth: 0,
                count: None,
                children: Vec::new(),
            },
        }
    }
}
