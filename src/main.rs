//! The `swiftlogistics` binary: `serve` (the default), `simulate`, and the `bench`,
//! `bench-ws` and `bench-db` load generators.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use swiftlogistics::config::{BusKind, LogFormat, Profile, Settings, StoreKind};
use swiftlogistics::{app, bench, observability, simulators};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, Layer as _};

/// mimalloc rather than glibc's malloc: under load a quarter of the node's CPU went to
/// glibc's allocator (arena locks, consolidation), and glibc kept each password hash's
/// tens of MiB of scratch memory after use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "swiftlogistics",
    version,
    about = "Logistics order-processing runtime"
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the HTTP API listens (overrides http.bind).
    #[arg(long, global = true, value_name = "ADDR")]
    bind: Option<String>,
    /// Directory of the embedded store (overrides store.path).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: HTTP API, supervisor tree, and (by default) the simulators.
    Serve {
        /// Do not start the in-process simulators; use the [cms] [ros] [wms] settings.
        #[arg(long)]
        no_simulators: bool,
    },
    /// Run only the CMS, ROS and WMS simulators, for nodes pointed at them.
    Simulate,
    /// Load a running node and report throughput, latency and memory
    Bench(bench::journey::BenchArgs),
    /// Hold many WebSocket sessions on a running node while orders flow; report
    /// update delivery latency and memory per idle session
    BenchWs(bench::ws::BenchWsArgs),
    /// Measure a MongoDB server's write ceiling with the documents the store writes
    BenchDb(bench::db::BenchDbArgs),
}

/// What must outlive the process's work so that nothing logged or traced is lost.
struct Logging {
    /// The OTLP pipeline, flushed by [`Logging::finish`].
    traces: Option<observability::Traces>,
    /// Flushes the log lines still queued when dropped.
    _lines: tracing_appender::non_blocking::WorkerGuard,
}

impl Logging {
    async fn finish(self) -> anyhow::Result<()> {
        if let Some(traces) = self.traces {
            tokio::task::spawn_blocking(|| traces.shutdown()).await?;
        }
        Ok(())
    }
}

/// Logs to stderr, and traces over OTLP when `[telemetry] otlp_endpoint` is set.
/// Lines are written by a thread of their own in batches: a busy node logs a line per
/// order transition, and one `write` to stderr per line cost a quarter of its CPU.
/// Never lossy: when stderr cannot keep up, logging waits, as it did when direct.
fn init_logging(settings: &Settings) -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.level));
    let json = match settings.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (writer, lines) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        fmt.boxed()
    };
    let (otlp, traces) = match observability::otlp_layer(&settings.telemetry) {
        Ok(Some((layer, traces))) => (Some(layer), Some(traces)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("traces are not exported: {e}");
            (None, None)
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otlp)
        .init();
    Logging {
        traces,
        _lines: lines,
    }
}

/// Resolves on SIGTERM (docker stop, Kubernetes, systemd) or SIGINT (Ctrl-C): both
/// start a drain. A process that is PID 1 in a container has no default action for
/// SIGTERM, so without this `docker stop` would wait and then kill.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM and SIGINT; running until killed");
        return std::future::pending::<()>().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stop requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(bind) = cli.bind {
        settings.http.bind = bind;
    }
    if let Some(data) = cli.data {
        settings.store.path = data;
    }
    settings.validate()?;
    match cli.command.unwrap_or(Command::Serve {
        no_simulators: false,
    }) {
        Command::Serve { no_simulators } => {
            settings.simulators.enabled &= !no_simulators;
            let logging = init_logging(&settings);
            let served = serve(settings).await;
            logging.finish().await?;
            served
        }
        Command::Simulate => {
            let _logging = init_logging(&settings);
            simulate(settings).await
        }
        Command::Bench(args) => {
            let _logging = init_logging(&settings);
            bench::journey::run(args).await
        }
        Command::BenchWs(args) => {
            let _logging = init_logging(&settings);
            bench::ws::run(args).await
        }
        Command::BenchDb(args) => {
            let _logging = init_logging(&settings);
            bench::db::run(args).await
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let development = settings.profile == Profile::Development;
    if development {
        tracing::warn!(
            default_secret = settings.uses_default_secret(),
            "DEVELOPMENT MODE: for a laptop only; generated passwords are printed, and the \
             built-in JWT secret is accepted on loopback. Set SWIFT__PROFILE=production \
             and JWT_SECRET for anything else"
        );
    }
    let runtime = app::start(settings).await?;
    let url = runtime.base_url();
    let mut banner = vec![
        format!("SwiftLogistics is running: API and pages at {url}"),
        if development {
            "  *** DEVELOPMENT MODE: not for production (SWIFT__PROFILE=production) ***".to_owned()
        } else {
            "  profile: production".to_owned()
        },
        // The MongoDB URI may carry credentials: only the database is shown.
        match runtime.settings.store.kind {
            StoreKind::Embedded => format!(
                "  store: embedded, in {}",
                runtime.settings.store.path.display()
            ),
            StoreKind::Mongo => format!(
                "  store: MongoDB, database {}",
                runtime.settings.store.database
            ),
        },
        match runtime.settings.bus.kind {
            BusKind::Local => "  bus: in-process".to_owned(),
            BusKind::Amqp => "  bus: RabbitMQ".to_owned(),
        },
        format!("  node: {}", runtime.context.node_id),
    ];
    banner.push(format!(
        "  systems: {}",
        runtime.system_targets().join(" | ")
    ));
    if let Some(sims) = &runtime.simulators {
        banner.push(format!("  simulator control API: {}", sims.control_addr));
    }
    banner.extend(swiftlogistics::auth::hand_over_generated_passwords(
        &runtime.settings,
        &runtime.generated_accounts,
    )?);
    banner.push(format!(
        "  try: curl -s -X POST {url}/api/auth/register -H 'content-type: application/json' \\\n         -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"password\":\"correct-horse\"}}'\n       then POST {url}/api/auth/login with the same e-mail and password"
    ));
    println!("{}", banner.join("\n"));
    runtime.run_until(stop_signal()).await
}

async fn simulate(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let sims = simulators::start(&settings.simulators, shutdown.clone())
        .await
        .context("cannot start the simulators")?;
    println!(
        "Simulators running: {} | control API http://{}",
        sims.described().join(" | "),
        sims.control_addr
    );
    stop_signal().await;
    shutdown.cancel();
    sims.join().await;
    Ok(())
}
