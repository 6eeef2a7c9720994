//! The command line (SPEC §1): subcommands and what each runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::Control;
use crate::gateway::Gateway;
use crate::handles::Registry;
use crate::metrics::Metrics;
use crate::server;
use crate::signing::Secret;
use crate::upload::store::Store;

const DEFAULT_CONFIG: &str = "/etc/upgate/upgate.toml";

#[derive(Debug, Parser)]
#[command(
    name = "upgate",
    version,
    about = "An upload gateway in front of a web application"
)]
pub struct Cli {
    /// The config file (TOML).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config, print the effective config, exit 0 or 1.
    Check,
    /// Print a new random secret (base64url, 32 bytes).
    Keygen,
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            init_logging();
            let config = Config::load(&cli.config)?;
            runtime()?.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(&cli.config),
        Command::Keygen => {
            let secret =
                config::secret::generate().map_err(|_| anyhow::anyhow!("no system randomness"))?;
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `upgate check`: the effective config as TOML on stdout, or the first problem on stderr.
fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw = config::parse_file(&text)?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let effective = toml::to_string(&raw).context("printing the config")?;
    let validated = Config::from_file(raw, base)?;
    config::secret::load_or_create(&validated.secret_file)?;
    print!("{effective}");
    eprintln!("config ok: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Starts everything the config asks for, then serves until SIGTERM or SIGINT and drains;
/// systemd hears READY=1 once every listener accepts and STOPPING=1 when the drain begins.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let grace = config.server.shutdown_grace;
    let running = start(config).await?;
    server::notify::ready();
    shutdown_signal().await?;
    server::notify::stopping();
    tracing::info!(grace = ?grace, "shutting down: finishing requests in flight");
    if running.drain(grace).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("shutdown grace passed with requests still in flight");
    }
    Ok(())
}

/// Loads the secret, prepares storage, binds and starts serving.
pub async fn start(config: Config) -> anyhow::Result<server::Running> {
    let key = config::secret::load_or_create(&config.secret_file)?;
    let store = Arc::new(Store::open(&config.storage_root)?);
    let bound = server::Bound::bind(&config).await?;
    let registry = Registry::load(
        &store.db,
        config.uploads.handle_ttl,
        crate::proxy::unix_now(),
    )?;
    tracing::info!(handles = registry.len(), "loaded the handle registry");
    let gateway = Arc::new(Gateway::new(
        config,
        Secret::new(&key),
        store,
        Arc::new(registry),
        Arc::new(Metrics::new()),
    ));
    let control = Arc::new(Control::new(gateway.clone()));
    let running = server::start(gateway.clone(), control, bound)?;
    running.spawn_background(|shutdown| upkeep(gateway, shutdown));
    Ok(running)
}

/// Background care of the state: refreshed handle expiries written every few seconds, expired handles
/// pruned; a last flush at shutdown.
async fn upkeep(gateway: Arc<Gateway>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut rounds = 0u64;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = server::stopped(&mut shutdown) => true,
        };
        rounds += 1;
        let gw = gateway.clone();
        let prune = rounds % 30 == 0;
        let step = (gw.config.uploads.handle_ttl.as_secs() / 60).max(1);
        let done = tokio::task::spawn_blocking(move || {
            gw.registry.flush(&gw.store.db, step)?;
            if prune {
                gw.registry.prune(&gw.store.db, crate::proxy::unix_now())?;
            }
            Ok::<_, crate::db::DbError>(())
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::error!(error = %e, "handle upkeep failed");
        }
        if last {
            return;
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
