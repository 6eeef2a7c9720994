//! The command line (SPEC §1): subcommands and what each runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::control::Control;
use crate::files;
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
    /// Run the gateway in front of a built-in demo application; data in ./upgate-demo.
    Demo {
        /// Where the demo listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Validate the config, print the effective config, exit 0 or 1.
    Check,
    /// Print a signed URL for PATH (SPEC §7), path-absolute, so it works behind any host name.
    Sign {
        /// The path as it will be requested, e.g. /media/invoices/42.pdf; may end in ?query.
        /// Characters a URL path cannot carry are percent-encoded; an existing %XX is kept.
        path: String,
        /// How long the URL stays valid, e.g. 10m [default: files.max_url_ttl, also the maximum].
        #[arg(long)]
        ttl: Option<String>,
        /// The method the URL admits (a GET URL also admits HEAD).
        #[arg(long, default_value = "GET")]
        method: String,
    },
    /// Print a new random secret (base64url, 32 bytes).
    Keygen,
    /// Run retention now: expired handles, dead sessions' files, expired intercept files, leftovers.
    Gc {
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            init_logging();
            let config = Config::load(&cli.config)?;
            raise_open_files_limit();
            runtime()?.block_on(serve(config, &cli.config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen } => {
            init_logging();
            runtime()?.block_on(crate::demo::run(listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(&cli.config),
        Command::Gc { dry_run } => {
            let config = Config::load(&cli.config)?;
            let report = runtime()?.block_on(crate::retention::gc(config, dry_run))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { path, ttl, method } => sign(&cli.config, &path, ttl.as_deref(), &method),
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
        .with_writer(log_writer())
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        crate::access::set_sink(std::fs::File::from(fd));
    }
}

/// Where log lines go: standard error, through a handle of their own. Each line is already one
/// `write` (the formatter fills a buffer first); the standard library's stderr lock only made the
/// worker threads queue for each other (perf on the proxy path: futex waits under every access
/// log line).
fn log_writer() -> tracing_subscriber::fmt::writer::BoxMakeWriter {
    use std::os::fd::AsFd as _;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => BoxMakeWriter::new(Arc::new(std::fs::File::from(fd))),
        Err(_) => BoxMakeWriter::new(std::io::stderr),
    }
}

/// `upgate check`: the effective config as TOML on stdout, or the first problem on stderr.
fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw = config::parse_file(&text)?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let effective = toml::to_string(&raw).context("printing the config")?;
    let validated = Config::from_file(raw, base)?;
    // Checked if it is there; never created here (it would be owned by whoever runs `check`).
    if validated.secret_file.exists() {
        config::secret::load_or_create(&validated.secret_file)?;
    } else {
        eprintln!(
            "note: secret.file {} does not exist yet; `upgate run` creates it",
            validated.secret_file.display()
        );
    }
    print!("{effective}");
    eprintln!("config ok: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `upgate sign`: the URL on stdout. The secret must exist already: one created here would
/// not be the running gateway's, and would be owned by whoever ran this command.
fn sign(
    config_path: &std::path::Path,
    path: &str,
    ttl: Option<&str>,
    method: &str,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    anyhow::ensure!(
        config.secret_file.exists(),
        "secret.file: {} does not exist; start the gateway once, or write one with `upgate keygen`",
        config.secret_file.display()
    );
    let key = config::secret::load_or_create(&config.secret_file)?;
    let max_ttl = config.files.max_url_ttl;
    let ttl = match ttl {
        Some(t) => config::parse_duration(t).map_err(|p| anyhow::anyhow!("--ttl: {p}"))?,
        None => max_ttl,
    };
    let url = files::signed::sign_path(
        &Secret::new(&key),
        method,
        path,
        ttl,
        max_ttl,
        crate::proxy::unix_now(),
    )
    .map_err(anyhow::Error::msg)?;
    println!("{url}");
    Ok(ExitCode::SUCCESS)
}

/// Starts everything the config asks for, then serves until SIGTERM or SIGINT and drains;
/// systemd hears READY=1 once every listener accepts and STOPPING=1 when the drain begins.
/// SIGHUP re-reads `path` and puts it in force; an invalid config is refused and the old one stays.
pub async fn serve(config: Config, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Every handler is in place before READY=1: systemd may send SIGTERM the moment it hears it,
    // and a signal with no handler yet would end the process at once, with no drain.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    let running = start(config).await?;
    server::notify::ready();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = hup.recv() => reload(&running, path),
        }
    }
    server::notify::stopping();
    let grace = running.gateway().config.server.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: finishing requests in flight");
    if running.drain(grace).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("shutdown grace passed with requests still in flight");
    }
    Ok(())
}

fn reload(running: &server::Running, path: &std::path::Path) {
    server::notify::reloading();
    let attempt = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let key = config::secret::load_or_create(&config.secret_file)?;
            running.reload(config, &key)
        });
    match attempt {
        Ok(()) => tracing::info!(config = %path.display(), "reloaded"),
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "reload refused; the running config stays in force"
        ),
    }
    // Ends the reload for systemd either way (sd_notify(3)): a `Type=notify-reload` unit waits
    // for this READY=1, and a refused reload leaves the old config serving.
    server::notify::ready();
}

/// Raises the soft limit of open files to the hard one, as a server holding many connections must.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
    }
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
    let live: crate::gateway::Live = Arc::new(arc_swap::ArcSwap::new(gateway));
    let control = Arc::new(Control::new(live.clone()));
    let running = server::start(live.clone(), control, bound)?;
    running.spawn_background(|shutdown| crate::retention::upkeep(live, shutdown));
    Ok(running)
}

/// Installs the SIGTERM and SIGINT handlers now, and returns what completes on the first of
/// them. Installing is not left to the first poll: a signal before it would kill the process.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
