//! Logging: to journald when it is there (identifier `nox-frontend`, fields prefixed `NOX_`,
//! so `journalctl NOX_JOB_ID=...` finds this daemon's and the executor's records of a job),
//! else a plain stderr format without colours. The filter comes from `NOX_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
}

/// Install the global subscriber: journald if `prefer_journald` and it is reachable, stderr
/// otherwise (development mode prefers the terminal). A second call changes nothing.
pub fn init(identifier: &str, prefer_journald: bool) -> LogTarget {
    let journald = prefer_journald
        .then(tracing_journald::layer)
        .and_then(Result::ok)
        .map(|layer| {
            layer
                .with_syslog_identifier(identifier.to_owned())
                .with_field_prefix(Some("NOX".to_owned()))
        });
    let target = if journald.is_some() {
        LogTarget::Journald
    } else {
        LogTarget::Stderr
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    let filter = EnvFilter::try_from_env("NOX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
    target
}
