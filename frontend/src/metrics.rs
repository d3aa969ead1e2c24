//! `GET /metrics`: counters and histograms in the Prometheus text exposition format
//! (version 0.0.4), hand-rolled: a handful of metrics with fixed label sets do not need a
//! metrics library, and every byte of the output is visible here.
//!
//! What is counted in the frontend: HTTP requests by route and status, jobs by language and
//! outcome, and the job duration and queue wait the executor reports (`Finished.duration_ms`,
//! `Started.queued_ms`). What the executor knows now (jobs running and queued, whether it
//! answers) is asked at scrape time. Label values come from closed sets (route names, status
//! codes, languages, outcomes), so the number of series is bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nox_protocol::{ExecutorStatus, ExitStatus, JobOutcome, LimitHit};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the job duration buckets, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds of the queue wait buckets, in seconds.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The languages jobs are counted by (`nox_protocol::Program::language`).
pub const LANGUAGES: [&str; 2] = ["python", "shell"];

/// How a job ended, as `nox_jobs_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobResult {
    /// Exit status 0.
    Ok,
    /// A non-zero exit status, or a signal that no limit sent.
    Nonzero,
    /// The wall-clock timeout killed the job.
    Timeout,
    /// Another limit ended it (output, CPU, file size).
    KilledByLimit,
    /// The job never ran: the denylist, a full queue, a missing sandbox layer or an
    /// unreachable executor refused it.
    Refused,
}

impl JobResult {
    pub const ALL: [JobResult; 5] = [
        JobResult::Ok,
        JobResult::Nonzero,
        JobResult::Timeout,
        JobResult::KilledByLimit,
        JobResult::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JobResult::Ok => "ok",
            JobResult::Nonzero => "nonzero",
            JobResult::Timeout => "timeout",
            JobResult::KilledByLimit => "killed_by_limit",
            JobResult::Refused => "refused",
        }
    }

    /// The result of a job that ran to its end.
    pub fn of(outcome: &JobOutcome) -> JobResult {
        match (outcome.timed_out, outcome.limit_hit, outcome.status) {
            (true, _, _) | (_, Some(LimitHit::Timeout), _) => JobResult::Timeout,
            (_, Some(_), _) => JobResult::KilledByLimit,
            (_, None, ExitStatus::Exited(0)) => JobResult::Ok,
            (_, None, _) => JobResult::Nonzero,
        }
    }
}

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        if let Some(slot) = self.counts.get_mut(index) {
            *slot += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Debug)]
struct Counts {
    requests: BTreeMap<(&'static str, u16), u64>,
    jobs: BTreeMap<(&'static str, JobResult), u64>,
    duration: BTreeMap<&'static str, Histogram>,
    queue_wait: BTreeMap<&'static str, Histogram>,
}

/// The frontend's metrics, shared by all requests.
#[derive(Debug)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every job series starts at zero, so rates work from the first scrape.
    pub fn new() -> Self {
        let mut jobs = BTreeMap::new();
        let mut duration = BTreeMap::new();
        let mut queue_wait = BTreeMap::new();
        for language in LANGUAGES {
            for result in JobResult::ALL {
                jobs.insert((language, result), 0);
            }
            duration.insert(language, Histogram::new(DURATION_BUCKETS));
            queue_wait.insert(language, Histogram::new(QUEUE_WAIT_BUCKETS));
        }
        Metrics {
            counts: Mutex::new(Counts {
                requests: BTreeMap::new(),
                jobs,
                duration,
                queue_wait,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counters stay usable even if a holder panicked: they are plain numbers.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One answered request.
    pub fn request(&self, route: &'static str, status: u16) {
        *self.lock().requests.entry((route, status)).or_insert(0) += 1;
    }

    /// A job that waited `queued_ms` before it started.
    pub fn job_started(&self, language: &'static str, queued_ms: u64) {
        if let Some(histogram) = self.lock().queue_wait.get_mut(language) {
            histogram.observe(queued_ms as f64 / 1000.0);
        }
    }

    /// A job that ran to its end.
    pub fn job_finished(&self, language: &'static str, outcome: &JobOutcome) {
        let mut counts = self.lock();
        *counts
            .jobs
            .entry((language, JobResult::of(outcome)))
            .or_insert(0) += 1;
        if let Some(histogram) = counts.duration.get_mut(language) {
            histogram.observe(outcome.duration_ms as f64 / 1000.0);
        }
    }

    /// A job that never ran.
    pub fn job_refused(&self, language: &'static str) {
        *self
            .lock()
            .jobs
            .entry((language, JobResult::Refused))
            .or_insert(0) += 1;
    }

    /// The exposition. `executor` is the executor's status now, or `None` when it did not
    /// answer (then only `nox_executor_up 0` is said about it).
    pub fn render(&self, executor: Option<&ExecutorStatus>) -> String {
        let counts = self.lock();
        let mut out = String::with_capacity(8192);

        family(
            &mut out,
            "nox_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), value) in &counts.requests {
            let status = status.to_string();
            sample(
                &mut out,
                "nox_http_requests_total",
                &[("route", route), ("status", &status)],
                *value as f64,
            );
        }

        family(
            &mut out,
            "nox_jobs_total",
            "counter",
            "Jobs by language and outcome (ok, nonzero, timeout, killed_by_limit, refused).",
        );
        for ((language, result), value) in &counts.jobs {
            sample(
                &mut out,
                "nox_jobs_total",
                &[("language", language), ("outcome", result.label())],
                *value as f64,
            );
        }

        histogram_family(
            &mut out,
            "nox_job_duration_seconds",
            "Wall time of finished jobs, as the executor measured it.",
            &counts.duration,
        );
        histogram_family(
            &mut out,
            "nox_job_queue_wait_seconds",
            "Time jobs waited for a free slot before they started.",
            &counts.queue_wait,
        );
        drop(counts);

        family(
            &mut out,
            "nox_executor_up",
            "gauge",
            "1 if the executor answered a status request during this scrape.",
        );
        sample(
            &mut out,
            "nox_executor_up",
            &[],
            if executor.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(status) = executor {
            family(
                &mut out,
                "nox_jobs_in_flight",
                "gauge",
                "Jobs running now (executor status at scrape time).",
            );
            sample(
                &mut out,
                "nox_jobs_in_flight",
                &[],
                f64::from(status.jobs_running),
            );
            family(
                &mut out,
                "nox_jobs_queued",
                "gauge",
                "Jobs waiting for a slot now (executor status at scrape time).",
            );
            sample(
                &mut out,
                "nox_jobs_queued",
                &[],
                f64::from(status.jobs_queued),
            );
        }
        family(
            &mut out,
            "nox_build_info",
            "gauge",
            "Always 1; the frontend's version is in the label.",
        );
        sample(
            &mut out,
            "nox_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    histograms: &BTreeMap<&'static str, Histogram>,
) {
    family(out, name, "histogram", help);
    for (language, histogram) in histograms {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (index, count) in histogram.counts.iter().enumerate() {
            cumulative += count;
            let le = histogram
                .bounds
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), |bound| number(*bound));
            sample(
                out,
                &bucket,
                &[("language", language), ("le", &le)],
                cumulative as f64,
            );
        }
        sample(
            out,
            &format!("{name}_sum"),
            &[("language", language)],
            histogram.sum,
        );
        sample(
            out,
            &format!("{name}_count"),
            &[("language", language)],
            histogram.count as f64,
        );
    }
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (key, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A sample value or bucket bound: Rust's shortest round-trip form, which never uses an
/// exponent (`0.005`, `1`, `300`).
fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_owned()
    } else if value > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use nox_protocol::ResourceUsage;

    use super::*;

    fn outcome(status: ExitStatus, timed_out: bool, limit_hit: Option<LimitHit>) -> JobOutcome {
        JobOutcome {
            job_id: "j".into(),
            status,
            timed_out,
            limit_hit,
            duration_ms: 1500,
            usage: ResourceUsage::default(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    #[test]
    fn every_outcome_is_classified_once() {
        let table = [
            (ExitStatus::Exited(0), false, None, JobResult::Ok),
            (ExitStatus::Exited(3), false, None, JobResult::Nonzero),
            (ExitStatus::Signaled(11), false, None, JobResult::Nonzero),
            (
                ExitStatus::Signaled(9),
                true,
                Some(LimitHit::Timeout),
                JobResult::Timeout,
            ),
            (
                ExitStatus::Signaled(9),
                false,
                Some(LimitHit::Output),
                JobResult::KilledByLimit,
            ),
            (
                ExitStatus::Signaled(24),
                false,
                Some(LimitHit::Cpu),
                JobResult::KilledByLimit,
            ),
        ];
        for (status, timed_out, limit, expected) in table {
            assert_eq!(
                JobResult::of(&outcome(status, timed_out, limit)),
                expected,
                "{status:?} {timed_out} {limit:?}"
            );
        }
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let metrics = Metrics::new();
        metrics.job_finished("python", &outcome(ExitStatus::Exited(0), false, None));
        metrics.job_started("python", 0);
        let text = metrics.render(None);
        assert!(text.contains("nox_job_duration_seconds_bucket{language=\"python\",le=\"1\"} 0\n"));
        assert!(
            text.contains("nox_job_duration_seconds_bucket{language=\"python\",le=\"2.5\"} 1\n")
        );
        assert!(
            text.contains("nox_job_duration_seconds_bucket{language=\"python\",le=\"+Inf\"} 1\n")
        );
        assert!(text.contains("nox_job_duration_seconds_sum{language=\"python\"} 1.5\n"));
        assert!(text.contains("nox_job_queue_wait_seconds_count{language=\"python\"} 1\n"));
        assert!(text.contains("nox_jobs_total{language=\"python\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("nox_jobs_total{language=\"shell\",outcome=\"refused\"} 0\n"));
        assert!(text.contains("nox_executor_up 0\n"));
        assert!(!text.contains("nox_jobs_in_flight"));
        assert!(text.contains(&format!(
            "nox_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let metrics = Metrics::new();
        metrics.request("health", 200);
        metrics.request("health", 200);
        metrics.request("unknown", 404);
        let text = metrics.render(None);
        assert!(text.contains("nox_http_requests_total{route=\"health\",status=\"200\"} 2\n"));
        assert!(text.contains("nox_http_requests_total{route=\"unknown\",status=\"404\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
