//! `nox-executor`: the process-global steps only. In order: harden the process, read the
//! arguments, start logging, load the configuration, take the listening socket (before any
//! thread exists), then start the runtime and serve until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nix::sys::resource::{Resource, setrlimit};
use nox_executor::activation::{self, ListenerOrigin};
use nox_executor::sandbox::cpus;
use nox_executor::{ExecutorConfig, ExecutorError, namespaces, telemetry};
use nox_protocol::config::ConfigFile;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

/// The privileged half of nox: runs sandboxed jobs for nox-frontend over a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (must exist); without it, /etc/nox/nox.toml is read if present.
    #[arg(long, env = "NOX_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make the workspaces' views in `views_dir` and exit (as root, in the host's mount
    /// namespace, before the executor starts: what nox-views.service runs).
    Views {
        /// Unmount and remove them instead (what stopping nox-views.service runs).
        #[arg(long)]
        remove: bool,
    },
}

fn main() -> ExitCode {
    // First, before anything can hold a secret or a job's data: no core dumps, no ptrace
    // by other processes of the same uid.
    if let Err(error) = harden() {
        report(&error);
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    telemetry::init();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

fn harden() -> Result<(), ExecutorError> {
    nix::sys::prctl::set_dumpable(false).map_err(|source| ExecutorError::Harden {
        step: "PR_SET_DUMPABLE",
        source,
    })?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|source| ExecutorError::Harden {
        step: "RLIMIT_CORE",
        source,
    })?;
    // Each running job holds a few pipes and each frontend connection a socket: the soft
    // limit up to the hard one (jobs get their own RLIMIT_NOFILE).
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    Ok(())
}

fn start(args: Args) -> Result<(), ExecutorError> {
    let file = args.config.map_or(ConfigFile::Default, ConfigFile::Exact);
    let config = ExecutorConfig::load(&file)?;
    if let Some(Command::Views { remove }) = args.command {
        let dir = config.views_dir.display();
        if remove {
            let count =
                nox_executor::views::remove_all(&config.views_dir).map_err(ExecutorError::Views)?;
            tracing::info!(%dir, count, "workspace views removed");
        } else {
            nox_executor::views::build_configured(&config, &config.views_dir)
                .map_err(ExecutorError::Views)?;
            tracing::info!(%dir, count = config.view_count(), "workspace views made");
        }
        return Ok(());
    }
    let (listener, origin) = activation::take_listener_with_origin(&config)?;
    let (socket, activated) = match &origin {
        ListenerOrigin::Inherited { fd } => (format!("inherited fd {fd}"), true),
        ListenerOrigin::Bound { path } => (path.display().to_string(), false),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket,
        socket_activated = activated,
        uid = nix::unistd::geteuid().as_raw(),
        workspace_root = %config.workspace_root.display(),
        "nox-executor starting"
    );
    // Still one thread: a mount namespace cannot be entered by one of several.
    let bound = match &origin {
        ListenerOrigin::Bound { path } => Some(path.as_path()),
        ListenerOrigin::Inherited { .. } => None,
    };
    match namespaces::enter(&config, bound) {
        Ok(namespaces::Entered::Yes { writable }) => tracing::info!(
            writable = ?writable,
            "in its own network and mount namespaces: loopback only; system directories read-only, these read-write, nothing else of the host's file system"
        ),
        Ok(namespaces::Entered::No(reason)) => {
            tracing::info!(reason, "in the host's network and mount namespaces");
        }
        Ok(namespaces::Entered::Failed(error)) => tracing::warn!(
            error = nox_protocol::error_chain(&error),
            "could not enter its own namespaces; staying in the host's (namespaces = \"auto\")"
        ),
        Err(error) => return Err(ExecutorError::Namespaces(error)),
    }
    // Each runtime worker is kept on a CPU of its own (see `sandbox::cpus`).
    cpus::remember();
    if let Err(error) = nox_executor::sandbox::spawn::reserve_low_descriptors() {
        tracing::warn!(%error, "could not reserve the low descriptor numbers; jobs start a little slower");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nox-executor")
        .on_thread_start(cpus::on_thread_start)
        .on_thread_park(cpus::on_worker_park)
        .build()
        .map_err(ExecutorError::Runtime)?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(ExecutorError::RegisterListener)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(ExecutorError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ExecutorError::Signals)?;
        let shutdown = async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutting down");
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
        };
        // Connections arriving from here on queue in the socket until `run` accepts them.
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval / 2);
                loop {
                    ticks.tick().await;
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
            });
        }
        nox_executor::run(listener, config, shutdown).await
    });
    // Jobs are over once `run` returns; do not wait long for stray blocking work.
    runtime.shutdown_timeout(Duration::from_secs(2));
    served?;
    tracing::info!("nox-executor stopped");
    Ok(())
}

/// Print the error chain to stderr (`0: ... 1: ...`) and log it once.
fn report(error: &(dyn std::error::Error + 'static)) {
    let mut level = 0;
    let mut current = Some(error);
    while let Some(cause) = current {
        eprintln!("{level}: {cause}");
        level += 1;
        current = cause.source();
    }
    tracing::error!(
        error = nox_protocol::error_chain(error),
        "nox-executor failed"
    );
}
