//! Graceful overload. Four times the executor's job capacity (slots + queue, read from
//! `/health`) of closed-loop clients post `/run_sh {"cmd": "sleep 0.2; echo N"}`, each on its
//! own keep-alive connection, so every slot is busy and the queue full. Two waves: refused
//! clients first wait as `Retry-After` says (as a client should), then ask again at once (a
//! retry storm). Measured: the queue and the running jobs seen by `/health` (never above the
//! configured bounds), every refusal is 503 with `Retry-After` and how long it took, every
//! admitted job prints its own N, the daemons' resident memory, and recovery: when the clients
//! go away (their connections closed mid-request), how long until a `/run_sh true` succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client;
use crate::raw::{self, RawConn};
use crate::{Check, Failure, Nox, RssSampler, mib, percentile, status_kib};

/// What each job does: long enough that the slots stay busy and the queue fills.
const JOB: &str = "sleep 0.2; echo";
const REFUSAL_P99_TARGET_MS: f64 = 10.0;
/// The bench's own bound for "stays bounded": neither daemon grows by more than this.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;
const RECOVERY_TARGET_MS: f64 = 100.0;
/// The shortest wave: the queue must fill and its jobs (0.2 s each) turn over many times.
const MIN_WAVE: Duration = Duration::from_secs(3);
/// How soon the first client after the load asks again when refused.
const RECOVERY_RETRY: Duration = Duration::from_millis(5);

/// What a refused client does next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refused {
    /// Waits the seconds `Retry-After` gives (1 s when it is missing) and up to as long
    /// again at random, as a client should (without the jitter all refused clients would
    /// come back in one burst every second). These clients also start spread over a second.
    WaitsRetryAfter,
    /// Asks again at once; all clients start together.
    RetriesAtOnce,
}

/// A fraction in [0, 1) from `n` (SplitMix64), for jitter without a random number crate.
#[allow(clippy::cast_precision_loss)]
fn fraction(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Admitted { correct: bool },
    Refused { retry_after: bool },
    OtherStatus,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    outcome: Outcome,
    latency: Duration,
}

/// A closed-loop client: one connection, the next request as soon as a reply came.
async fn client(
    port: u16,
    token: String,
    refused: Refused,
    counter: Arc<AtomicU64>,
    samples: mpsc::UnboundedSender<Sample>,
) -> Result<(), Failure> {
    let mut conn = RawConn::connect(port).await?;
    if refused == Refused::WaitsRetryAfter {
        let first = counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(fraction(first))).await;
    }
    loop {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let request = client::post_json(
            port,
            &token,
            "/run_sh",
            format!(r#"{{"cmd":"{JOB} {n}"}}"#),
            None,
        )?;
        let request = raw::encode(request).await?;
        let begun = Instant::now();
        let mut pause = Duration::ZERO;
        let outcome = match conn.exchange(&request).await {
            Ok(reply) if reply.status == 503 => {
                let retry_after = reply.retry_after;
                if refused == Refused::WaitsRetryAfter {
                    pause =
                        Duration::from_secs(retry_after.unwrap_or(1)).mul_f64(1.0 + fraction(n));
                }
                Outcome::Refused {
                    retry_after: retry_after.is_some(),
                }
            }
            Ok(reply) if (200..300).contains(&reply.status) => {
                let json: serde_json::Value =
                    serde_json::from_slice(&reply.body).unwrap_or_default();
                Outcome::Admitted {
                    correct: json["returncode"] == 0 && json["stdout"] == format!("{n}\n"),
                }
            }
            Ok(_) => Outcome::OtherStatus,
            Err(_) => {
                conn = RawConn::connect(port).await?;
                Outcome::Failed
            }
        };
        let latency = begun.elapsed();
        let _ = samples.send(Sample { outcome, latency });
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// What `/health` showed while the load ran.
#[derive(Debug, Default)]
struct Seen {
    polls: u64,
    queued: u64,
    running: u64,
    latencies: Vec<Duration>,
}

/// Poll `/health` every 50 ms on one connection until `stop`.
async fn watch(port: u16, stop: Arc<AtomicBool>) -> Result<Seen, Failure> {
    let mut conn = client::connect(port).await?;
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let begun = Instant::now();
        let reply = client::send(&mut conn, client::get(port, "/health")?).await?;
        seen.latencies.push(begun.elapsed());
        let json = reply.json();
        let executor = &json["executor"];
        if let (Some(queued), Some(running)) = (
            executor["jobs_queued"].as_u64(),
            executor["jobs_running"].as_u64(),
        ) {
            seen.polls += 1;
            seen.queued = seen.queued.max(queued);
            seen.running = seen.running.max(running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(seen)
}

/// How long after `since` the executor reports no job running or queued (within 5 s).
async fn drained(port: u16, since: Instant) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(5) {
        if let Ok(json) = client::health(port).await
            && json["executor"]["jobs_queued"] == 0
            && json["executor"]["jobs_running"] == 0
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One wave of clients and what came of it.
#[derive(Default)]
struct Wave {
    refused: Vec<Duration>,
    admitted: Vec<Duration>,
    without_retry_after: u64,
    wrong: u64,
    other: u64,
    failed: u64,
    /// The first `/run_sh true` after the clients left: what it got, and when.
    recovery: String,
    recovered: bool,
}

/// `clients` closed-loop clients for `duration`; then they go away and recovery is timed.
async fn wave(
    nox: &Nox,
    clients: u64,
    refused: Refused,
    duration: Duration,
) -> Result<Wave, Failure> {
    let port = nox.port;
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let counter = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                port,
                nox.token.clone(),
                refused,
                Arc::clone(&counter),
                sender.clone(),
            ))
        })
        .collect();
    drop(sender);
    tokio::time::sleep(duration).await;
    // The load drops: every client goes away, its connection closed mid-request.
    for handle in &handles {
        handle.abort();
    }
    let mut measured = Wave::default();
    for handle in handles {
        if let Ok(Err(_)) = handle.await {
            measured.failed += 1;
        }
    }
    // The first client after them, asking again every few milliseconds while it is refused:
    // the departures (hundreds of connections closing, queued jobs giving up their places)
    // are still being processed when it comes, so its first try may find the queue full.
    let left = Instant::now();
    let mut refusals = 0;
    let recovery = loop {
        let reply = client::once(
            port,
            client::post_json(
                port,
                &nox.token,
                "/run_sh",
                r#"{"cmd":"true"}"#.to_owned(),
                None,
            )?,
            Duration::from_secs(10),
        )
        .await;
        match reply {
            Ok(reply) if reply.status == 503 && ms(left.elapsed()) < RECOVERY_TARGET_MS => {
                refusals += 1;
                tokio::time::sleep(RECOVERY_RETRY).await;
            }
            reply => break reply,
        }
    };
    let latency = left.elapsed();
    let drained_after = drained(port, left).await;
    measured.recovered = ms(latency) <= RECOVERY_TARGET_MS
        && recovery
            .as_ref()
            .is_ok_and(|reply| reply.status.is_success() && reply.json()["returncode"] == 0);
    measured.recovery = match &recovery {
        Ok(reply) => format!(
            "{} in {:.2} ms ({refusals} refused before)",
            reply.status.as_u16(),
            ms(latency)
        ),
        Err(error) => format!("failed after {:.2} ms ({error})", ms(latency)),
    };
    measured.recovery.push_str(&match drained_after {
        Some(after) => format!(", nothing running or queued {:.1} ms after", ms(after)),
        None => ", jobs still running or queued 5 s after".to_owned(),
    });

    while let Ok(sample) = receiver.try_recv() {
        match sample.outcome {
            Outcome::Refused { retry_after } => {
                measured.refused.push(sample.latency);
                measured.without_retry_after += u64::from(!retry_after);
            }
            Outcome::Admitted { correct } => {
                measured.admitted.push(sample.latency);
                measured.wrong += u64::from(!correct);
            }
            Outcome::OtherStatus => measured.other += 1,
            Outcome::Failed => measured.failed += 1,
        }
    }
    measured.refused.sort_unstable();
    measured.admitted.sort_unstable();
    Ok(measured)
}

/// The time-to-503 check of one wave.
fn time_to_refusal(wave: &Wave, how: &str, duration: Duration, explain: Option<u64>) -> Check {
    let (p50, p99) = (
        percentile(&wave.refused, 0.5),
        percentile(&wave.refused, 0.99),
    );
    let rate = wave.refused.len() as f64 / duration.as_secs_f64();
    let mut measured = format!(
        "p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({} refusals, {rate:.0}/s)",
        percentile(&wave.refused, 1.0),
        wave.refused.len(),
    );
    if let Some(waiting) = explain {
        // Little's law: the refused clients are always in flight, so the mean time is their
        // number over the rate nox refuses them at.
        measured.push_str(&format!(
            "; {waiting} refused clients always in flight ÷ {rate:.0}/s = {:.2} ms mean",
            waiting as f64 * 1000.0 / rate.max(1.0)
        ));
    }
    Check::new(
        format!("overload: time to the 503, {how}"),
        measured,
        format!("p99 ≤ {REFUSAL_P99_TARGET_MS} ms"),
        !wave.refused.is_empty() && p99 <= REFUSAL_P99_TARGET_MS,
    )
}

/// Overload `nox`, a wave of `duration` (at least [`MIN_WAVE`]) for each way of handling
/// refusals, and judge it.
pub(crate) async fn measure(nox: &Nox, duration: Duration) -> Result<Vec<Check>, Failure> {
    let duration = duration.max(MIN_WAVE);
    let port = nox.port;
    let health = client::health(port).await?;
    let executor = &health["executor"];
    let slots = executor["max_concurrent_jobs"]
        .as_u64()
        .ok_or("/health has no executor.max_concurrent_jobs")?;
    let queue = executor["max_queued_jobs"]
        .as_u64()
        .ok_or("/health has no executor.max_queued_jobs")?;
    let clients = 4 * (slots + queue);
    let pids = nox.pids();
    let idle = pids.map(|pid| status_kib(pid, "VmRSS:"));
    let rss = RssSampler::start(pids);
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(port, Arc::clone(&stop_watch)));
    let polite = wave(nox, clients, Refused::WaitsRetryAfter, duration).await?;
    let storm = wave(nox, clients, Refused::RetriesAtOnce, duration).await?;
    stop_watch.store(true, Ordering::Relaxed);
    let seen = watcher.await??;
    let peak = rss.finish().await;
    let mut watched = seen.latencies.clone();
    watched.sort_unstable();
    let both = [&polite, &storm];
    let sum = |field: fn(&Wave) -> u64| both.iter().map(|w| field(w)).sum::<u64>();
    let refused = sum(|w| w.refused.len() as u64);
    let admitted = sum(|w| w.admitted.len() as u64);
    let (without, wrong) = (sum(|w| w.without_retry_after), sum(|w| w.wrong));
    let (other, failed) = (sum(|w| w.other), sum(|w| w.failed));

    let mut checks = vec![Check::new(
        format!(
            "overload: {clients} closed-loop clients = 4 × ({slots} running + {queue} queued), `{JOB} N`, two waves of {:.1} s: queue stays bounded",
            duration.as_secs_f64()
        ),
        format!(
            "at most {} queued and {} running in {} `/health` polls (`/health` p50 {:.2} ms, max {:.2} ms)",
            seen.queued,
            seen.running,
            seen.polls,
            percentile(&watched, 0.5),
            percentile(&watched, 1.0)
        ),
        format!("≤ {queue} queued, ≤ {slots} running"),
        seen.polls > 0 && seen.queued <= queue && seen.running <= slots,
    )];
    checks.push(Check::new(
        "overload: refusals are 503 with `Retry-After`".to_owned(),
        format!(
            "{refused} refused with 503, {without} of them without `Retry-After`; {other} other error statuses, {failed} failed connections"
        ),
        "every refusal 503 + `Retry-After`, nothing else fails".to_owned(),
        refused > 0 && without == 0 && other == 0 && failed == 0,
    ));
    checks.push(time_to_refusal(
        &polite,
        "refused clients wait `Retry-After`",
        duration,
        None,
    ));
    checks.push(time_to_refusal(
        &storm,
        "refused clients retry at once",
        duration,
        Some(clients - slots - queue),
    ));
    let mut all_admitted: Vec<Duration> = both.iter().flat_map(|w| w.admitted.clone()).collect();
    all_admitted.sort_unstable();
    checks.push(Check::new(
        "overload: admitted jobs still answer correctly".to_owned(),
        format!(
            "{} of {admitted} printed their own N (latency with the queue wait: p50 {:.0} ms, max {:.0} ms)",
            admitted - wrong,
            percentile(&all_admitted, 0.5),
            percentile(&all_admitted, 1.0)
        ),
        "all".to_owned(),
        admitted > 0 && wrong == 0,
    ));
    let grown = [
        peak[0].saturating_sub(idle[0]),
        peak[1].saturating_sub(idle[1]),
    ];
    checks.push(Check::new(
        "overload: resident memory stays bounded".to_owned(),
        format!(
            "nox-frontend {:.1} → peak {:.1} MiB (+{:.1}), nox-executor {:.1} → peak {:.1} MiB (+{:.1})",
            mib(idle[0]),
            mib(peak[0]),
            mib(grown[0]),
            mib(idle[1]),
            mib(peak[1]),
            mib(grown[1])
        ),
        format!("each grows ≤ {} MiB", RSS_GROWTH_BOUND_KIB / 1024),
        grown.iter().all(|g| *g <= RSS_GROWTH_BOUND_KIB),
    ));
    checks.push(Check::new(
        format!(
            "overload: recovery (a `/run_sh true` right after the clients left, asking again every {} ms while refused)",
            RECOVERY_RETRY.as_millis()
        ),
        format!(
            "after the first wave {}; after the retry storm {}",
            polite.recovery, storm.recovery
        ),
        format!("200 within {RECOVERY_TARGET_MS} ms"),
        polite.recovered && storm.recovered,
    ));
    Ok(checks)
}
