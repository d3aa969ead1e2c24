//! Thousands of idle keep-alive connections. Each makes one request (`GET /health`) and then
//! stays open, idle; meanwhile eight active clients drive `/health`, compared with the same
//! cell just before without them. The frontend serves at most `max_connections` connections
//! at once (more wait in the listen backlog, not accepted), so up to that bound the idle ones
//! are held alongside the active ones, and past it the bench measures what a new client meets.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Semaphore;

use crate::client::{self, Conn};
use crate::{Check, Endpoint, Failure, Nox, Row, Settings, load, mib, status_kib};

/// Connections kept free under the bound for the active clients and the bench's own requests.
const HEADROOM: usize = 16;
/// The active clients.
const ACTIVE: usize = 8;

/// What the frontend under test was configured with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout_s: u64,
}

/// Open `count` connections that each make one request, at most `parallel` at a time, each
/// given `within` for its reply. Returns the connections (all of them, answered or still
/// waiting) and how many were answered.
async fn open_idle(
    port: u16,
    count: usize,
    parallel: usize,
    within: Duration,
) -> (Vec<Conn<Full<Bytes>>>, usize) {
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let mut conn = tokio::time::timeout(within, client::connect(port))
                    .await
                    .ok()?
                    .ok()?;
                let request = client::get(port, "/health").ok()?;
                let answered = matches!(
                    tokio::time::timeout(within, client::send(&mut conn, request)).await,
                    Ok(Ok(reply)) if reply.status.is_success()
                );
                Some((conn, answered))
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    let mut answered = 0;
    for task in tasks {
        if let Ok(Some((conn, ok))) = task.await {
            conns.push(conn);
            answered += usize::from(ok);
        }
    }
    (conns, answered)
}

fn health_cell(
    nox: &Nox,
    duration: Duration,
) -> impl std::future::Future<Output = Result<Row, Failure>> {
    load(
        Endpoint::Health,
        nox,
        ACTIVE,
        Settings {
            duration,
            unmeasured: Duration::ZERO,
            pause: Duration::ZERO,
        },
        Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
    )
}

/// Hold up to `target` idle connections on `nox` (configured with `bound`) and measure the
/// active clients beside them; past the bound, what a new client meets.
pub(crate) async fn measure(
    nox: &Nox,
    bound: Bound,
    target: usize,
    duration: Duration,
) -> Result<(Vec<Row>, Vec<Check>), Failure> {
    let port = nox.port;
    // The idle connections are closed by nox after header_read_timeout_s: keep each cell
    // well inside it.
    let cell = duration.min(Duration::from_secs(4));
    let mut before = health_cell(nox, cell).await?;
    before.what = format!(
        "GET /health, no idle connections (max_connections {})",
        bound.max_connections
    );
    let frontend = nox.pids()[0];
    let rss_before = status_kib(frontend, "VmRSS:");
    let held_count = target.min(bound.max_connections.saturating_sub(HEADROOM));
    let opened = Instant::now();
    let (held, answered) = open_idle(port, held_count, 64, Duration::from_secs(5)).await;
    let opening = opened.elapsed();
    let rss_held = status_kib(frontend, "VmRSS:");
    let mut with = health_cell(nox, cell).await?;
    with.what = format!(
        "GET /health, {} idle connections held (max_connections {})",
        held.len(),
        bound.max_connections
    );
    let closed = held.iter().filter(|conn| conn.is_closed()).count();
    let per_connection = rss_held.saturating_sub(rss_before) as f64 / held.len().max(1) as f64;
    let throughput_kept = with.per_second >= 0.8 * before.per_second;
    let tail_kept = with.p99_ms <= 2.0 * before.p99_ms + 0.5;
    let mut checks = vec![Check::new(
        format!(
            "idle: {} keep-alive connections held, within max_connections {}",
            held.len(),
            bound.max_connections
        ),
        format!(
            "`/health` c={ACTIVE}: {:.0} req/s, p50/p99 {:.2}/{:.2} ms with them vs {:.0} req/s, {:.2}/{:.2} ms without; {answered} of {held_count} got their one reply (opened in {:.1} s), {closed} closed by nox during the cell; nox-frontend RSS +{:.1} MiB ({per_connection:.1} KiB per connection)",
            with.per_second,
            with.p50_ms,
            with.p99_ms,
            before.per_second,
            before.p50_ms,
            before.p99_ms,
            opening.as_secs_f64(),
            mib(rss_held.saturating_sub(rss_before)),
        ),
        "≥ 80 % of the req/s, p99 ≤ 2× + 0.5 ms".to_owned(),
        answered == held_count && closed == 0 && throughput_kept && tail_kept,
    )];
    let rows = vec![before, with];
    if target <= held.len() {
        return Ok((rows, checks));
    }

    // Past the bound: each extra connection makes nox close its oldest one.
    let extra = target - held.len();
    let (extras, extra_answered) = open_idle(port, extra, extra, Duration::from_secs(1)).await;
    let begun = Instant::now();
    let fresh = client::once(
        port,
        client::get(port, "/health")?,
        Duration::from_secs(bound.header_read_timeout_s + 5),
    )
    .await;
    let waited = begun.elapsed();
    let closed_by_then = held.iter().filter(|conn| conn.is_closed()).count();
    let fresh_text = match &fresh {
        Ok(reply) => format!(
            "a new client's `GET /health` then took {:.2} s ({})",
            waited.as_secs_f64(),
            reply.status.as_u16()
        ),
        Err(error) => format!(
            "a new client's `GET /health` got no reply in {:.1} s ({error})",
            waited.as_secs_f64()
        ),
    };
    checks.push(Check::new(
        format!(
            "idle: {target} keep-alive connections, past max_connections {}",
            bound.max_connections
        ),
        format!(
            "of {} more connections, {extra_answered} got a reply within 1 s (at the bound nox closes the oldest connection after its current request, at once when idle); {fresh_text}, {:.1} s after the held connections' one request; {closed_by_then} of the first {} closed by then (header_read_timeout_s = {} s)",
            extras.len(),
            (opened + opening).elapsed().as_secs_f64(),
            held.len(),
            bound.header_read_timeout_s,
        ),
        "a new client is served at once (≤ 1 s)".to_owned(),
        fresh.is_ok() && waited <= Duration::from_secs(1),
    ));
    drop(extras);
    drop(held);
    Ok((rows, checks))
}
