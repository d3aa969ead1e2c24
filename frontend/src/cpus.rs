//! Where the frontend's runtime threads run: each worker on a CPU of its own.
//!
//! Left to the kernel, the runtime's workers move between CPUs, and a request's steps
//! (its HTTP connection's task, the executor's reply, the answer) wake whichever worker
//! is where. On two CPUs, two such workers drove `/run_sh true` at c=32 3.2 % slower
//! than one (1 of 10 interleaved pairs higher), but one worker refuses a retry storm on
//! one CPU only: the 503's p99 went from 7.6-10.3 ms to 13.2-16.3 ms. Two workers kept on
//! a CPU each ran as fast as one (-0.2 %, 5 of 10 pairs) and keep the storm on both.
//!
//! Workers are pinned at their first park, one CPU each in turn over the CPUs the
//! frontend may use (tokio runs its park hook on worker threads only). Every thread the
//! runtime starts takes back all of them first thing: a blocking one may be started by a
//! pinned worker and would inherit its CPU (the development mode starts the executor
//! from one, see `dev`).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs the frontend may use, as found by [`remember`].
static FRONTEND_CPUS: OnceLock<CpuSet> = OnceLock::new();

/// The next worker's turn among [`FRONTEND_CPUS`].
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is a worker kept on one CPU.
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Record the CPUs the frontend may use: from the main thread, before the runtime starts.
pub fn remember() {
    if let Ok(cpus) = sched_getaffinity(Pid::from_raw(0)) {
        let _ = FRONTEND_CPUS.set(cpus);
    }
}

/// For every thread the runtime starts: every CPU the frontend may use.
pub fn on_thread_start() {
    if let Some(cpus) = FRONTEND_CPUS.get() {
        let _ = sched_setaffinity(Pid::from_raw(0), cpus);
    }
}

/// For a worker about to park: at the first time, keep it on its CPU from now on.
pub fn on_worker_park() {
    if PINNED.get() {
        return;
    }
    PINNED.set(true);
    let Some(cpu) = FRONTEND_CPUS
        .get()
        .and_then(|cpus| nth_cpu(cpus, NEXT_WORKER.fetch_add(1, Ordering::Relaxed)))
    else {
        return;
    };
    let mut only = CpuSet::new();
    if only.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &only);
    }
}

/// The CPU at `turn` (modulo their number) in `cpus`, in ascending order.
fn nth_cpu(cpus: &CpuSet, turn: usize) -> Option<usize> {
    let members: Vec<usize> = (0..CpuSet::count())
        .filter(|&cpu| cpus.is_set(cpu).unwrap_or(false))
        .collect();
    (!members.is_empty()).then(|| members[turn % members.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_cpus_in_turn_and_wrap_around() {
        let mut cpus = CpuSet::new();
        for cpu in [0, 2, 5] {
            cpus.set(cpu).unwrap();
        }
        let turns: Vec<_> = (0..4).map(|turn| nth_cpu(&cpus, turn)).collect();
        assert_eq!(turns, [Some(0), Some(2), Some(5), Some(0)]);
        assert_eq!(nth_cpu(&CpuSet::new(), 0), None);
    }
}
