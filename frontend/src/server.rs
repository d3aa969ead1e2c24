//! The accept loop: HTTP/1.1 with keep-alive, a header read timeout, a cap on connections
//! (past it, new connections wait in the listen backlog), and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::{AppState, routes};

/// Why the accept loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The shutdown future completed (SIGTERM, SIGINT).
    Shutdown,
    /// `POST /actions/restart` asked for a restart.
    Restart,
}

/// Accept connections on `listener` until `shutdown` completes or a restart is asked for
/// (`state.restart`). The connections still open are returned in `GracefulShutdown`, to be
/// drained with [`drain`] once the caller decided what to do with the listener.
pub async fn accept_until<F>(
    listener: &TcpListener,
    state: &Arc<AppState>,
    shutdown: &mut F,
) -> (Stop, GracefulShutdown)
where
    F: Future<Output = ()> + Unpin,
{
    let config = &state.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_s))
        // hyper's hard cap; `routes` answers 431 with the JSON error body below it.
        .max_buf_size(8192.max(config.max_header_bytes.saturating_mul(4)))
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let restart = state.restart.clone();

    let stop = loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Stop::Shutdown,
            },
            () = &mut *shutdown => break Stop::Shutdown,
            () = restart.cancelled() => break Stop::Restart,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut *shutdown => break Stop::Shutdown,
            () = restart.cancelled() => break Stop::Restart,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(state);
        let service = service_fn(move |request| routes::handle(Arc::clone(&state), request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    };
    (stop, graceful)
}

/// Let the connections in `graceful` finish their requests for up to `grace`, then close
/// the rest.
pub async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tracing::info!(
        connections = graceful.count(),
        grace_s = grace.as_secs(),
        "stopping: no new connections, finishing requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}
