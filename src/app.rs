//! Wiring: builds the store, the bus, the simulators, the supervisor tree, the bridges
//! and the HTTP server from the settings, and takes them down again in order.

use crate::actors::adapter::AdapterCore;
use crate::actors::notifier::{self, Notifier};
use crate::actors::order::{OrderActorView, OrderMsg};
use crate::actors::orders::OrdersMsg;
use crate::actors::root::{RootArgs, RootMsg};
use crate::actors::telemetry::{
    EventPage, EventQuery, MailboxGauge, MailboxesView, Telemetry, TelemetryArgs, TelemetryMsg,
};
use crate::actors::{
    ActorNode, AdapterDirectory, Context, Root, RuntimeControl, ServiceHealth, bridge,
};
use crate::bus::amqp::AmqpBus;
use crate::bus::local::LocalBus;
use crate::bus::{OrderCommand, SharedBus};
use crate::config::{BusKind, Settings, StoreKind};
use crate::domain::{Email, OrderId, Role, System};
use crate::protocols::SystemClient;
use crate::protocols::cms::CmsClient;
use crate::protocols::ros::RosClient;
use crate::protocols::wms::WmsClient;
use crate::service::{Admission, OrderService};
use crate::simulators::{self, RunningSimulators};
use crate::store::SharedStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use anyhow::{Context as _, bail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a control request to an actor may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

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
    root: ActorRef<RootMsg>,
    orders_supervisor: ActorRef<OrdersMsg>,
    root_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// The process-wide Prometheus recorder (a process has one metrics registry, even
/// when tests start several nodes in it).
pub fn metrics_handle() -> PrometheusHandle {
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
            let store = EmbeddedStore::open_with_timeout(
                &settings.store.path,
                Duration::from_secs(settings.store.timeout_secs),
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

async fn open_bus(settings: &Settings, node_id: &str) -> anyhow::Result<SharedBus> {
    match settings.bus.kind {
        BusKind::Local => Ok(Arc::new(LocalBus::default())),
        BusKind::Amqp => {
            let bus = AmqpBus::connect(&settings.bus, node_id)
                .await
                .context("cannot connect to RabbitMQ (bus.rabbitmq_url / RABBITMQ_URL)")?;
            Ok(Arc::new(bus))
        }
    }
}

fn clients(settings: &Settings) -> anyhow::Result<Vec<(System, Arc<dyn SystemClient>)>> {
    let ms = Duration::from_millis;
    Ok(vec![
        (
            System::Cms,
            Arc::new(CmsClient::new(
                &settings.cms.url,
                ms(settings.cms.timeout_ms),
            )?) as Arc<dyn SystemClient>,
        ),
        (
            System::Wms,
            Arc::new(WmsClient::new(
                settings.wms.addr.clone(),
                settings.wms.connections,
                ms(settings.wms.timeout_ms),
            )),
        ),
        (
            System::Ros,
            Arc::new(RosClient::new(
                &settings.ros.url,
                ms(settings.ros.timeout_ms),
            )?),
        ),
    ])
}

pub async fn start(mut settings: Settings) -> anyhow::Result<Runtime> {
    let shutdown = CancellationToken::new();
    let simulators = if settings.simulators.enabled {
        let sims = simulators::start(&settings.simulators, shutdown.child_token()).await?;
        // Point the clients at wherever the simulators really listen (port 0 in tests).
        settings.cms.url = sims.cms_url();
        settings.ros.url = sims.ros_url();
        settings.wms.addr = sims.wms_addr.to_string();
        Some(sims)
    } else {
        None
    };
    let settings = Arc::new(settings);
    // Installed before anything records, so that every metric lands in it.
    let metrics = metrics_handle();
    crate::observability::declare_series();
    let store = open_store(&settings).await?;
    let node_id = format!("node-{}", uuid::Uuid::new_v4().simple());
    let bus = open_bus(&settings, &node_id).await?;
    let admission = Arc::new(Admission::new(settings.orders.max_in_flight));
    let telemetry_args = TelemetryArgs {
        node: node_id.clone(),
        history: settings.telemetry.history,
        metrics: Some(metrics.clone()),
    };
    let (telemetry, _) = Actor::spawn(None, Telemetry, telemetry_args).await?;

    let cores = clients(&settings)?
        .into_iter()
        .map(|(system, client)| AdapterCore::new(system, client, &settings));
    let context = Arc::new(Context {
        settings: settings.clone(),
        store: store.clone(),
        bus: bus.clone(),
        admission: admission.clone(),
        telemetry: telemetry.clone(),
        adapters: AdapterDirectory::new(cores),
        node_id: node_id.clone(),
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
    let inbox = bus.order_commands().await?;
    tasks.push(bridge::spawn_order_bridge(
        orders_supervisor.clone(),
        orders_mailbox,
        bridge::gauge(&context, "bridge-orders"),
        inbox,
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

    let generated_accounts = crate::auth::ensure_bootstrap_accounts(&store, &settings).await?;
    let orders = OrderService::new(store.clone(), bus.clone(), admission, &node_id);

    let listener = tokio::net::TcpListener::bind(&settings.http.bind)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", settings.http.bind))?;
    let http_addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, crate::http::ws::tune_connection);
    let state = crate::http::AppState {
        settings: settings.clone(),
        store: store.clone(),
        bus: bus.clone(),
        orders: orders.clone(),
        control: Arc::new(Control(context.clone(), orders_supervisor.clone())),
        metrics,
        tracking: crate::http::ws::Tracking {
            notifier,
            shutdown: shutdown.child_token(),
        },
    };
    let app = crate::http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let http_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    }));

    resume_unfinished(&store, &bus, None).await?;
    let sweep = Duration::from_secs(settings.orders.resume_sweep_secs);
    tasks.push(spawn_resume_sweep(
        store.clone(),
        bus.clone(),
        sweep,
        shutdown.child_token(),
    ));
    Ok(Runtime {
        settings,
        http_addr,
        simulators,
        context,
        orders,
        generated_accounts,
        shutdown,
        root,
        orders_supervisor,
        root_task,
        tasks,
    })
}

/// After a restart every order still being processed picks up where its last
/// persisted transition left it; a sweep wakes those unchanged since `unchanged_since`.
async fn resume_unfinished(
    store: &SharedStore,
    bus: &SharedBus,
    unchanged_since: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    let unfinished = store.unfinished_orders(unchanged_since).await?;
    if !unfinished.is_empty() {
        tracing::info!(count = unfinished.len(), "resuming unfinished orders");
    }
    for order_id in unfinished {
        bus.send_to_order(OrderCommand::Wake { order_id }).await?;
    }
    Ok(())
}

/// Orders nobody is driving are found by sweeping the store now and then: in a
/// cluster, orders of a shard taken over from a dead node; anywhere, orders whose
/// wake-up was lost (a bus outage) or whose intake write landed although the store
/// reported a failure. Only orders unchanged for a whole sweep interval are woken:
/// waking one that is moving changes nothing but costs a message and a read, and
/// under a backlog of thousands of moving orders those would crowd out the work.
fn spawn_resume_sweep(
    store: SharedStore,
    bus: SharedBus,
    every: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let unchanged_since = chrono::TimeDelta::from_std(every)
                .ok()
                .and_then(|every| Utc::now().checked_sub_signed(every));
            if let Err(e) = resume_unfinished(&store, &bus, unchanged_since).await {
                tracing::warn!(error = %e, "resume sweep failed; trying again later");
            }
        }
    })
}

impl Runtime {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn control(&self) -> Control {
        Control(self.context.clone(), self.orders_supervisor.clone())
    }

    /// Runs until `stop` resolves or the supervisor tree gives up.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failed = tokio::select! {
            _ = stop => false,
            _ = &mut self.root_task => true,
        };
        self.shutdown().await;
        if failed {
            bail!("the supervisor tree stopped; see the log for the failure");
        }
        Ok(())
    }

    /// Stops accepting requests, then stops the actors, then the simulators.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
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
pub struct Control(Arc<Context>, ActorRef<OrdersMsg>);

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

    async fn recover(&self, system: System) -> Option<ServiceHealth> {
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

    async fn order_actor(&self, order_id: &OrderId) -> Result<Option<OrderActorView>, String> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        let actor = ractor::call_t!(self.1, OrdersMsg::Inspect, timeout, order_id.clone())
            .map_err(|e| e.to_string())?;
        let Some(actor) = actor else { return Ok(None) };
        // The actor may stop between the two questions: then none is live.
        Ok(ractor::call_t!(actor, OrderMsg::Inspect, timeout).ok())
    }

    async fn mailboxes(&self) -> Option<MailboxesView> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(self.0.telemetry, TelemetryMsg::Mailboxes, timeout).ok()
    }

    async fn events(&self, query: EventQuery) -> Option<EventPage> {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        ractor::call_t!(self.0.telemetry, TelemetryMsg::Events, timeout, query).ok()
    }

    async fn supervision(&self) -> ActorNode {
        let timeout = CONTROL_TIMEOUT.as_millis() as u64;
        match ractor::call_t!(self.0.telemetry, TelemetryMsg::Tree, timeout) {
            Ok(tree) => tree,
            Err(e) => ActorNode {
                name: "root".into(),
                kind: "supervisor".into(),
                status: format!("unknown ({e})"),
                restarts: 0,
                mailbox_depth: 0,
                count: None,
                children: Vec::new(),
            },
        }
    }
}
