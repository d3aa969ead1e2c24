//! nox-frontend: the unprivileged HTTP half of nox.
//!
//! It authenticates every request (Bearer tokens, each mapped to a workspace), validates what
//! it can cheaply (paths, sizes, JSON shape, a courtesy command denylist), and turns each HTTP
//! request into a conversation with `nox-executor` over a Unix socket (see `nox_protocol`).
//! It trusts the executor's replies only as far as their shape: any unexpected frame drops
//! that executor connection and answers 502. It never sees job processes or workspace files;
//! the executor is the authority on both.
//!
//! `main.rs` does only process-global steps (arguments, logging, socket adoption); [`run`]
//! is what tests and `main` call.

#![forbid(unsafe_code)]

pub mod api_error;
pub mod api_types;
pub mod auth;
mod body;
mod busy;
pub mod config;
pub mod cpus;
pub mod denylist;
pub mod dev;
pub mod executor;
mod files;
mod health;
mod host;
mod jobs;
pub mod metrics;
pub mod openapi;
pub mod random;
mod recent;
mod routes;
mod server;
pub mod telemetry;
pub mod uri;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use config::FrontendConfig;
use nox_protocol::config::ConfigError;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the frontend could not serve.
#[derive(Debug, Error)]
pub enum FrontendError {
    #[error("invalid frontend configuration")]
    Config(#[source] ConfigError),
    #[error("the listening socket has no usable address")]
    ListenerAddress(#[source] std::io::Error),
}

/// A future that ends at SIGINT (Ctrl-C) or SIGTERM, both watched from this call on: a
/// signal that comes before the future is first polled (say, right after the banner or the
/// readiness notification) still ends it, rather than killing the process with its children
/// left behind. Call it within the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &'static str| {
        let stream = signal(kind);
        async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, signal = name, "cannot watch this signal");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let interrupt = watch(SignalKind::interrupt(), "SIGINT");
    let terminate = watch(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received"),
            () = terminate => tracing::info!("SIGTERM received"),
        }
    }
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct AppState {
    pub config: FrontendConfig,
    pub tokens: auth::Tokens,
    pub denylist: denylist::Denylist,
    pub executor: executor::ExecutorClient,
    pub metrics: Arc<metrics::Metrics>,
    /// `GET /openapi.json`, built once.
    pub openapi: Bytes,
    pub cpu: host::CpuSampler,
    /// The executor's status as `/health` last read it.
    pub health: recent::Recent<nox_protocol::ExecutorStatus>,
    /// The executor's last "busy" refusal of a job.
    pub busy: Arc<busy::BusyHint>,
    /// Cancelled by `POST /actions/restart`.
    pub restart: CancellationToken,
}

/// What `POST /actions/restart` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// Stop serving (gracefully) and return from [`run_with`]: under systemd the process
    /// exits with status 0 and `Restart=always` starts it again on the socket systemd keeps.
    Exit,
    /// Drain, then serve again on the same listener with a fresh state (configuration
    /// validated again, token files re-read): `nox-frontend dev`, which has no supervisor.
    InProcess,
}

/// Serve HTTP on `listener` until `shutdown` completes or a restart is asked for; then stop
/// accepting, let requests in flight finish for up to `shutdown_grace_s`, and return.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: FrontendConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FrontendError> {
    run_with(listener, config, shutdown, RestartMode::Exit).await
}

/// [`run`], with the given behaviour for `POST /actions/restart`.
pub async fn run_with(
    listener: tokio::net::TcpListener,
    config: FrontendConfig,
    shutdown: impl Future<Output = ()>,
    restart_mode: RestartMode,
) -> Result<(), FrontendError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = Arc::new(metrics::Metrics::new());
    let openapi = Bytes::from(openapi::document());
    loop {
        let state = Arc::new(app_state(
            &listener,
            config.clone(),
            Arc::clone(&metrics),
            openapi.clone(),
        )?);
        let (stop, connections) = server::accept_until(&listener, &state, &mut shutdown).await;
        let grace = Duration::from_secs(state.config.shutdown_grace_s);
        match (stop, restart_mode) {
            (server::Stop::Restart, RestartMode::InProcess) => {
                tracing::info!("restarting in process; new connections wait in the backlog");
                server::drain(connections, grace).await;
            }
            (server::Stop::Restart, RestartMode::Exit) => {
                tracing::info!(
                    "restart requested: exiting for the service manager to start us again"
                );
                drop(listener);
                server::drain(connections, grace).await;
                return Ok(());
            }
            (server::Stop::Shutdown, _) => {
                drop(listener);
                server::drain(connections, grace).await;
                return Ok(());
            }
        }
    }
}

/// Validate `config` and build the state requests share.
fn app_state(
    listener: &tokio::net::TcpListener,
    config: FrontendConfig,
    metrics: Arc<metrics::Metrics>,
    openapi: Bytes,
) -> Result<AppState, FrontendError> {
    let tokens = config.validate().map_err(FrontendError::Config)?;
    for workspace in tokens.short_token_workspaces(config::SHORT_TOKEN_LEN) {
        tracing::warn!(
            workspace,
            "an API token is shorter than {} characters; use a long random token",
            config::SHORT_TOKEN_LEN
        );
    }
    let address = listener
        .local_addr()
        .map_err(FrontendError::ListenerAddress)?;
    let executor = executor::ExecutorClient::new(
        config.executor_socket.clone(),
        Duration::from_millis(config.executor_connect_timeout_ms),
    );
    let state = AppState {
        denylist: denylist::Denylist::new(&config.forbidden_commands),
        tokens,
        executor,
        config,
        metrics,
        openapi,
        cpu: host::CpuSampler::default(),
        health: recent::Recent::new(health::FRESH),
        busy: Arc::new(busy::BusyHint::new(busy::BUSY_HINT)),
        restart: CancellationToken::new(),
    };
    tracing::info!(
        %address,
        executor_socket = %state.config.executor_socket.display(),
        tokens = state.tokens.len(),
        "nox-frontend listening"
    );
    Ok(state)
}
