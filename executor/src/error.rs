//! Errors that stop the executor. Per-request failures travel as `nox_protocol::WireError`.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Something the executor cannot start or keep serving without.
#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error("could not load the configuration")]
    Config(#[from] nox_protocol::config::ConfigError),
    #[error("could not prepare the sandbox")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("could not prepare the workspace root {path}")]
    WorkspaceRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not adopt or bind the listening socket")]
    Activation(#[from] crate::activation::ActivationError),
    #[error("a startup task failed")]
    Startup(#[source] tokio::task::JoinError),
    #[error("could not accept connections")]
    Accept(#[source] io::Error),
    #[error("could not harden the process ({step})")]
    Harden {
        step: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("could not start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("could not enter the executor's own namespaces")]
    Namespaces(#[source] crate::namespaces::NamespaceError),
    #[error("could not make the workspaces' views")]
    Views(#[source] crate::views::ViewError),
    #[error("could not register the listening socket with the runtime")]
    RegisterListener(#[source] io::Error),
    #[error("could not install the signal handlers")]
    Signals(#[source] io::Error),
}
