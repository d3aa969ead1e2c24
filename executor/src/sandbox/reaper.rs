//! The reaper: one thread that waits for every child of the executor.
//!
//! The executor is a child subreaper, so anything a job forks and orphans is re-parented
//! here rather than to PID 1. The reaper waits for any child with `WNOWAIT` first, so the
//! exited process stays a zombie — its pid (and so its process group id) cannot be reused —
//! while the reaper kills the job's whole process group; only then is it reaped. A timeout
//! kill takes the same lock and only signals a group whose leader has not been reaped yet.
//! Together these make "kill everything the job forked" free of pid-reuse races.
//!
//! Spawns run in parallel, without the table's lock: each takes a ticket before its fork
//! and registers the new pid with it. An exited pid the reaper does not know is either an
//! orphan or the leader of a spawn whose fork has not returned yet; the reaper waits for
//! every spawn that was in flight when it saw the pid (later ones cannot have made it),
//! then decides.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How a job's main process ended, as `wait4` reported it.
#[derive(Debug, Clone, Copy)]
pub struct ExitReport {
    /// The raw wait status.
    pub status: i32,
    pub usage: nox_protocol::ResourceUsage,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Table {
    /// Job leaders not yet reaped, with whoever waits for them.
    leaders: HashMap<i32, Option<oneshot::Sender<ExitReport>>>,
    /// Tickets of spawns between their ticket and their registration.
    in_flight: BTreeSet<u64>,
    next_ticket: u64,
    /// Whether the reaper sleeps on `children_exist` (no child at all) or on `spawn_done`
    /// (for a spawn to register): a spawn signals only then, instead of making two futex
    /// calls for nobody on every job.
    idle: bool,
    awaiting_spawns: bool,
}

#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
    children_exist: Condvar,
    /// Signalled when a spawn registers its pid or gives up.
    spawn_done: Condvar,
}

/// Handle to the reaper thread.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

impl Reaper {
    /// The process's reaper, started on first use. There must be exactly one: it waits for
    /// *any* child, so a second one would take the first one's exits.
    pub fn global() -> io::Result<Reaper> {
        static GLOBAL: std::sync::OnceLock<Reaper> = std::sync::OnceLock::new();
        static START: Mutex<()> = Mutex::new(());
        if let Some(reaper) = GLOBAL.get() {
            return Ok(reaper.clone());
        }
        let _starting = START
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(reaper) = GLOBAL.get() {
            return Ok(reaper.clone());
        }
        let reaper = Reaper::start()?;
        Ok(GLOBAL.get_or_init(|| reaper).clone())
    }

    /// Become a child subreaper and start the reaper thread.
    fn start() -> io::Result<Reaper> {
        super::set_child_subreaper()?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            children_exist: Condvar::new(),
            spawn_done: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("nox-reaper".into())
            .spawn(move || reap_forever(&thread_shared))?;
        Ok(Reaper { shared })
    }

    /// A ticket for one fork: take it before forking and register the new pid with it
    /// ([`SpawnTicket::watch`]); until then the reaper holds back an unknown exited pid.
    pub fn begin_spawn(&self) -> SpawnTicket<'_> {
        let mut table = lock(&self.shared.table);
        let ticket = table.next_ticket;
        table.next_ticket += 1;
        table.in_flight.insert(ticket);
        SpawnTicket {
            ticket,
            shared: &self.shared,
        }
    }

    /// Kill the process group of `leader` if the leader has not been reaped yet.
    pub fn kill_group(&self, leader: i32) {
        let table = lock(&self.shared.table);
        if table.leaders.contains_key(&leader) {
            super::kill_process_group(leader);
        }
    }
}

/// One fork in flight; see [`Reaper::begin_spawn`]. Dropped without [`SpawnTicket::watch`]
/// (the fork failed), it is withdrawn.
#[derive(Debug)]
pub struct SpawnTicket<'a> {
    ticket: u64,
    shared: &'a Shared,
}

impl SpawnTicket<'_> {
    /// Register `leader` and return the receiver of its exit report.
    pub fn watch(self, leader: i32) -> oneshot::Receiver<ExitReport> {
        let (sender, receiver) = oneshot::channel();
        let mut table = lock(&self.shared.table);
        table.leaders.insert(leader, Some(sender));
        if table.idle {
            self.shared.children_exist.notify_one();
        }
        receiver
        // Drop withdraws the ticket (after the registration) and wakes the reaper.
    }
}

impl Drop for SpawnTicket<'_> {
    fn drop(&mut self) {
        let mut table = lock(&self.shared.table);
        table.in_flight.remove(&self.ticket);
        if table.awaiting_spawns {
            self.shared.spawn_done.notify_all();
        }
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // A poisoned lock means a panic elsewhere; the table itself is still consistent
    // (every mutation is a single insert or remove).
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reap_forever(shared: &Shared) {
    loop {
        match super::wait_any_exited() {
            Ok(pid) => reap(shared, pid),
            Err(error) if error.raw_os_error() == Some(libc::ECHILD) => {
                // No children at all: sleep until one is registered (or a second passes,
                // in case an orphan arrives without a registration) — unless one was
                // registered since `waitid` said so.
                let mut table = lock(&shared.table);
                if table.leaders.is_empty() {
                    table.idle = true;
                    let (mut table, _) = shared
                        .children_exist
                        .wait_timeout(table, Duration::from_secs(1))
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    table.idle = false;
                }
            }
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
            Err(error) => {
                tracing::error!(%error, "waitid failed in the reaper");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn reap(shared: &Shared, pid: i32) {
    let mut table = lock(&shared.table);
    // Unknown: an orphan, or a leader whose spawn has not registered it yet. Only spawns
    // already in flight can have made `pid`; wait for those.
    let seen_at = table.next_ticket;
    while !table.leaders.contains_key(&pid)
        && table
            .in_flight
            .first()
            .is_some_and(|oldest| *oldest < seen_at)
    {
        table.awaiting_spawns = true;
        table = shared
            .spawn_done
            .wait(table)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.awaiting_spawns = false;
    }
    let leader = table.leaders.contains_key(&pid);
    if leader {
        // The leader is a zombie: its process group id is still ours. Kill whatever it
        // left behind before the pid can be reused.
        super::kill_process_group(pid);
    }
    let report = super::reap_pid(pid);
    if leader && let Some(slot) = table.leaders.remove(&pid) {
        drop(table);
        if let (Some(sender), Ok(report)) = (slot, report) {
            let _ = sender.send(report);
        }
    }
}
