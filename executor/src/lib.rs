//! nox-executor: the privileged half of nox.
//!
//! It accepts connections on one Unix socket (inherited from systemd, or bound itself),
//! checks each peer's credentials, speaks the `nox-protocol` frames, and runs each job under
//! every per-job layer of the sandbox (see [`sandbox`]). It trusts nothing it is sent: the
//! frontend is a less privileged process, and every field is validated again here.
//!
//! `main.rs` does only process-global steps; [`run`] is what tests and `main` call.

#![deny(unsafe_code)]

pub mod activation;
pub mod config;
pub mod direct;
pub mod error;
pub mod job;
pub mod namespaces;
pub mod owners;
pub mod peer;
#[allow(unsafe_code)]
pub mod sandbox;
pub mod scratch;
pub mod server;
pub mod telemetry;
pub mod views;
pub mod workspace;

use std::future::Future;
use std::sync::Arc;

pub use config::ExecutorConfig;
pub use error::ExecutorError;

/// Serve `listener` until `shutdown` completes, then stop accepting, let running jobs
/// finish (up to their own timeouts) and return.
pub async fn run(
    listener: tokio::net::UnixListener,
    config: ExecutorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ExecutorError> {
    let identity = sandbox::JobIdentity::resolve(&config)?;
    let workspaces = Arc::new(
        workspace::Workspaces::new(
            config.workspace_root.clone(),
            identity.switches().then(|| config.tenant_uids()),
        )?
        .with_quota(config.workspace_quota()),
    );
    // Building the runner probes the sandbox with a real job: blocking work.
    let runner = {
        let (config, workspaces) = (config.clone(), Arc::clone(&workspaces));
        tokio::task::spawn_blocking(move || job::JobRunner::new(&config, identity, workspaces))
            .await
            .map_err(ExecutorError::Startup)??
    };
    let runner = Arc::new(runner);
    server::serve(listener, &config, runner, workspaces, shutdown).await
}
