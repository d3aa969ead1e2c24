//! The accept loop: HTTP/1.1 with keep-alive, a header read timeout, a cap on connections,
//! and graceful shutdown. At the cap, the oldest connection is asked to close once its
//! current request is answered (at once when it sits idle between requests), so a new
//! client is served instead of waiting in the listen backlog for an idle keep-alive
//! connection to time out.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{AppState, routes};

/// Why the accept loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The shutdown future completed (SIGTERM, SIGINT).
    Shutdown,
    /// `POST /actions/restart` asked for a restart.
    Restart,
}

/// How long a connection accepted before shutdown, but whose first request has not arrived
/// yet, is given to send it. (hyper's HTTP/1 graceful shutdown closes such a connection at
/// once, and the client, whose connection was accepted, sees an empty reply.)
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The connections being served, for [`drain`].
#[derive(Debug)]
pub struct Connections {
    tracker: TaskTracker,
    draining: CancellationToken,
}

/// Accept connections on `listener` until `shutdown` completes or a restart is asked for
/// (`state.restart`). The connections still open are returned, to be drained with [`drain`]
/// once the caller decided what to do with the listener.
pub async fn accept_until<F>(
    listener: &TcpListener,
    state: &Arc<AppState>,
    shutdown: &mut F,
) -> (Stop, Connections)
where
    F: Future<Output = ()> + Unpin,
{
    let config = &state.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_s))
        // hyper's hard caps, well above the frontend's own limits, so that `routes` is the
        // one answering 431, with the JSON error body (past these caps hyper answers a bare
        // 431 itself).
        .max_buf_size((64 * 1024).max(config.max_header_bytes.saturating_mul(16)))
        .max_headers(config.max_header_fields.saturating_mul(4).max(100))
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut live = Live::default();
    let tracker = TaskTracker::new();
    let draining = CancellationToken::new();
    let restart = state.restart.clone();

    let stop = loop {
        let permit = match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break Stop::Shutdown,
            Err(TryAcquireError::NoPermits) => {
                live.make_room();
                tokio::select! {
                    permit = Arc::clone(&connections).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break Stop::Shutdown,
                    },
                    () = &mut *shutdown => break Stop::Shutdown,
                    () = restart.cancelled() => break Stop::Restart,
                }
            }
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
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_request = Arc::clone(&served);
        let service = service_fn(move |request| {
            first_request.store(true, std::sync::atomic::Ordering::Relaxed);
            routes::handle(Arc::clone(&state), request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let draining = draining.clone();
        let close_asked = live.add();
        tracker.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                () = draining.cancelled() => None,
                () = close_asked.cancelled() => {
                    // Room for a new connection: this one ends after its current request.
                    connection.as_mut().graceful_shutdown();
                    Some(connection.as_mut().await)
                }
            };
            // Marks this connection gone for `Live`.
            close_asked.cancel();
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    // Accepted, but the first request may still be on its way: keep
                    // serving the connection until it has arrived (or the grace is over);
                    // graceful shutdown then lets that request finish.
                    let first_request = async {
                        while !served.load(std::sync::atomic::Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    let early = tokio::select! {
                        ended = connection.as_mut() => Some(ended),
                        () = first_request => None,
                        () = tokio::time::sleep(FIRST_REQUEST_GRACE) => None,
                    };
                    match early {
                        Some(ended) => ended,
                        None => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    };
    (stop, Connections { tracker, draining })
}

/// Open connections, oldest first, each with the token that asks it to close.
#[derive(Debug, Default)]
struct Live {
    tokens: Arc<Mutex<VecDeque<CancellationToken>>>,
}

impl Live {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<CancellationToken>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A token for a new connection. (A connection cancels its own token when it ends;
    /// those are dropped here from time to time.)
    fn add(&mut self) -> CancellationToken {
        let token = CancellationToken::new();
        let mut queue = self.queue();
        if queue.len() >= 64 && queue.len().is_power_of_two() {
            queue.retain(|token| !token.is_cancelled());
        }
        queue.push_back(token.clone());
        token
    }

    /// Ask the oldest connection still open to close after its current request.
    fn make_room(&mut self) {
        let mut queue = self.queue();
        while let Some(token) = queue.pop_front() {
            if !token.is_cancelled() {
                token.cancel();
                tracing::debug!("at max_connections: asked the oldest connection to close");
                return;
            }
        }
    }
}

/// Let the connections finish their requests for up to `grace`, then close the rest.
/// A connection accepted before the stop gets [`FIRST_REQUEST_GRACE`] for its first request.
pub async fn drain(connections: Connections, grace: Duration) {
    let Connections { tracker, draining } = connections;
    tracing::info!(
        connections = tracker.len(),
        grace_s = grace.as_secs(),
        "stopping: no new connections, finishing requests in flight"
    );
    draining.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}
