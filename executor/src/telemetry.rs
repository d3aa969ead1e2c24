//! Logging: to journald under the identifier `nox-executor` when the executor runs under
//! systemd, otherwise a plain stderr format. Fields carry the `NOX_` prefix in the journal,
//! the same as the frontend's, so `journalctl NOX_JOB_ID=<id>` follows one job through
//! both daemons. The filter comes from `NOX_LOG` (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
}

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() -> LogTarget {
    let (filter, bad_filter) = match EnvFilter::try_from_env("NOX_LOG") {
        Ok(filter) => (filter, None),
        Err(error) => {
            let set = std::env::var_os("NOX_LOG").is_some();
            (EnvFilter::new("info"), set.then_some(error))
        }
    };
    // JOURNAL_STREAM is set when stderr is connected to the journal (systemd.exec(5)): a
    // developer running the binary in a terminal wants their logs there, not in the journal.
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|layer| {
            layer
                .with_syslog_identifier("nox-executor".into())
                .with_field_prefix(Some("NOX".into()))
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
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "NOX_LOG is not a valid filter; logging at info");
    }
    target
}
