//! The `nox-frontend` binary: process-global steps only. Parse arguments, set up logging,
//! load the configuration, adopt the listening socket systemd passed (or bind one), tell
//! systemd when ready, and serve until SIGTERM or SIGINT. `nox-frontend dev` runs the
//! development setup instead (see `nox_frontend::dev`).

// One `unsafe` exists in this crate: adopting the socket systemd passed by number. The
// library is `forbid(unsafe_code)`.
#![deny(unsafe_code)]

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nox_frontend::FrontendConfig;
use nox_frontend::cpus;
use nox_frontend::telemetry::{self, LogTarget};
use nox_protocol::config::{ConfigError, ConfigFile, load};
use nox_protocol::error_chain;
use sd_notify::NotifyState;
use thiserror::Error;

/// The name of the inherited socket to serve HTTP on (`FileDescriptorName=http`).
const HTTP_FD_NAME: &str = "http";

#[derive(Debug, Parser)]
#[command(
    name = "nox-frontend",
    version,
    about = "nox's HTTP API: runs Python and shell jobs through nox-executor"
)]
struct Cli {
    /// Configuration file; must exist. Default: /etc/nox/nox.toml if it exists.
    #[arg(long, env = "NOX_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run nox for development: starts nox-executor (next to this binary) on a private
    /// socket, generates a token, keeps state in ~/.local/state/nox.
    Dev,
}

#[derive(Debug, Error)]
enum MainError {
    #[error("cannot read the sockets passed by systemd")]
    ListenFds(#[source] std::io::Error),
    #[error(
        "systemd passed sockets, but none named `{HTTP_FD_NAME}` (set FileDescriptorName=http)"
    )]
    NoHttpSocket,
    #[error("the inherited socket `{HTTP_FD_NAME}` is not a listening TCP socket")]
    AdoptSocket(#[source] std::io::Error),
    #[error("configuration error")]
    Config(#[source] ConfigError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the frontend failed")]
    Frontend(#[source] nox_frontend::FrontendError),
    #[error("development mode failed")]
    Dev(#[source] nox_frontend::dev::DevError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: reads LISTEN_* and marks the descriptors close-on-exec.
    let inherited = sd_notify::listen_fds_with_names().map(|fds| fds.collect::<Vec<_>>());
    let dev_mode = matches!(cli.command, Some(Command::Dev));
    let logs = telemetry::init("nox-frontend", !dev_mode);
    let result = match cli.command {
        Some(Command::Dev) => dev(),
        None => serve(cli.config, inherited),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = error_chain(&error);
            tracing::error!(error = %message, "nox-frontend stopped");
            // Records went to the journal: say it on the terminal too, unless stderr is the
            // journal already (running under systemd).
            if logs == LogTarget::Journald && std::env::var_os("JOURNAL_STREAM").is_none() {
                eprintln!("nox-frontend: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Every connection is a descriptor, and so is each pooled executor connection: raise the
/// soft RLIMIT_NOFILE to the hard one (systemd's default soft limit is 1024, the hard one
/// 524288), and say so when even that is short of `max_connections`.
fn raise_open_files(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(64);
    if hard < wanted {
        tracing::warn!(
            open_files = hard,
            max_connections,
            "RLIMIT_NOFILE is below max_connections: raise LimitNOFILE= or lower max_connections"
        );
    }
}

fn runtime(config: &FrontendConfig) -> Result<tokio::runtime::Runtime, MainError> {
    // Each runtime worker is kept on a CPU of its own (see `nox_frontend::cpus`).
    cpus::remember();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_workers())
        .on_thread_start(cpus::on_thread_start)
        .on_thread_park(cpus::on_worker_park)
        .enable_all()
        .build()
        .map_err(MainError::Runtime)
}

fn dev() -> Result<(), MainError> {
    let config = nox_frontend::dev::load_config().map_err(MainError::Dev)?;
    runtime(&config)?
        .block_on(nox_frontend::dev::run(config))
        .map_err(MainError::Dev)
}

fn serve(
    config_path: Option<PathBuf>,
    inherited: std::io::Result<Vec<(RawFd, String)>>,
) -> Result<(), MainError> {
    let file = config_path.map_or(ConfigFile::Default, ConfigFile::Exact);
    let config: FrontendConfig =
        load("frontend", &file, FrontendConfig::default()).map_err(MainError::Config)?;
    config.validate().map_err(MainError::Config)?;
    raise_open_files(config.max_connections);
    let adopted = match choose_http_fd(&inherited.map_err(MainError::ListenFds)?)? {
        Some(fd) => Some(adopt_tcp_listener(fd).map_err(MainError::AdoptSocket)?),
        None => None,
    };
    runtime(&config)?.block_on(async move {
        let listener = match adopted {
            Some(listener) => {
                tokio::net::TcpListener::from_std(listener).map_err(MainError::AdoptSocket)?
            }
            None => {
                let address = format!("{}:{}", config.bind_addr, config.port);
                tokio::net::TcpListener::bind((config.bind_addr.as_str(), config.port))
                    .await
                    .map_err(|source| MainError::Bind { address, source })?
            }
        };
        let signalled = nox_frontend::shutdown_signal();
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        let shutdown = async {
            signalled.await;
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
        };
        nox_frontend::run(listener, config, shutdown)
            .await
            .map_err(MainError::Frontend)
    })
}

/// The descriptor named `http`; a single unnamed-for-us descriptor is taken too (a unit
/// without `FileDescriptorName=` names it after the socket unit).
fn choose_http_fd(inherited: &[(RawFd, String)]) -> Result<Option<RawFd>, MainError> {
    if let Some((fd, _)) = inherited.iter().find(|(_, name)| name == HTTP_FD_NAME) {
        return Ok(Some(*fd));
    }
    match inherited {
        [] => Ok(None),
        [(fd, name)] => {
            tracing::info!(name, "using the only socket systemd passed");
            Ok(Some(*fd))
        }
        _ => Err(MainError::NoHttpSocket),
    }
}

/// Take ownership of the listening socket systemd passed as `fd`.
#[allow(unsafe_code)]
fn adopt_tcp_listener(fd: RawFd) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` comes from sd_notify::listen_fds_with_names, which checked that LISTEN_PID
    // is this process: systemd opened it for us and nothing else in this process owns it.
    // It is adopted exactly once (choose_http_fd returns one descriptor, called once).
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // A Unix socket passed by mistake fails here instead of misbehaving later.
    listener.local_addr()?;
    // systemd passes sockets in blocking mode; tokio needs non-blocking.
    listener.set_nonblocking(true)?;
    Ok(listener)
}
