//! Logging: to journald when it is there (identifier `nox-frontend`, fields prefixed `NOX_`,
//! so `journalctl NOX_JOB_ID=...` finds this daemon's and the executor's records of a job),
//! else a plain stderr format without colours. The filter comes from `NOX_LOG`
//! (default `info`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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

/// Run `write`, which writes a log record, once the current task waits, not now: formatting
/// a record and writing it (under systemd, a datagram to journald, which wakes it) costs
/// microseconds that a client waiting for its reply, or a job not yet sent to the executor,
/// should not wait for. The records of a thread wait in a queue that one spawned task
/// writes: the runtime polls a task spawned this way right after the current task's next
/// wait, and one task for all of them wakes no other worker. Dropped unpolled (the runtime
/// stopping), it writes them then. Outside a runtime `write` runs at once. Callers check
/// `tracing::enabled!` first, at their own call site (a filter may name their module), so
/// that nothing is queued for a record that would not be written.
pub fn write_soon(write: impl FnOnce() + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        write();
        return;
    };
    let queue = QUEUE.with(Arc::clone);
    let first = {
        let mut records = lock(&queue);
        records.push(Box::new(write));
        records.len() == 1
    };
    if first {
        let writer = Writer(queue);
        runtime.spawn(async move { drop(writer) });
    }
}

type Record = Box<dyn FnOnce() + Send>;
type Queue = Arc<Mutex<Vec<Record>>>;

thread_local! {
    /// This thread's records not written yet (see [`write_soon`]).
    static QUEUE: Queue = Arc::new(Mutex::new(Vec::new()));
}

fn lock(queue: &Queue) -> MutexGuard<'_, Vec<Record>> {
    // A poisoned queue means a panic while logging; the records are still whole.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a queue's records when dropped.
struct Writer(Queue);

impl Drop for Writer {
    fn drop(&mut self) {
        let records = std::mem::take(&mut *lock(&self.0));
        for write in records {
            write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write_soon;
    use std::sync::{Arc, Mutex};

    type Written = Arc<Mutex<Vec<u32>>>;

    /// What was written, and a maker of records that write their number there.
    fn recorder() -> (Written, impl Fn(u32) -> super::Record) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&written);
        let record = move |n: u32| -> super::Record {
            let sink = Arc::clone(&sink);
            Box::new(move || sink.lock().unwrap().push(n))
        };
        (written, record)
    }

    #[test]
    fn records_are_written_once_the_task_waits_and_in_order() {
        let (written, record) = recorder();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            write_soon(record(1));
            write_soon(record(2));
            assert!(
                written.lock().unwrap().is_empty(),
                "written before the task waited"
            );
            tokio::task::yield_now().await;
            assert_eq!(*written.lock().unwrap(), [1, 2]);
            write_soon(record(3));
            tokio::task::yield_now().await;
            assert_eq!(*written.lock().unwrap(), [1, 2, 3]);
        });
    }

    #[test]
    fn records_are_written_when_the_runtime_stops_first() {
        let (written, record) = recorder();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { write_soon(record(7)) });
        drop(runtime);
        assert_eq!(*written.lock().unwrap(), [7]);
    }

    #[test]
    fn records_are_written_at_once_outside_a_runtime() {
        let (written, record) = recorder();
        write_soon(record(5));
        assert_eq!(*written.lock().unwrap(), [5]);
    }
}
