//! Where the executor's runtime threads run: each runtime worker on a CPU of its own.
//!
//! A worker starts a shell job by handing it to the spawner thread of the CPU it is on
//! (see `spawner`), which clones the child there; the worker then waits for the child's
//! exec and goes on with the job. Left to the kernel, a worker moves between CPUs, and
//! with it the spawner it wakes, the CPU its child starts on and the caches that hold its
//! state. Each worker kept on one CPU, its own spawner beside it: `/run_sh true` at c=32
//! ran 4.0 % more jobs a second on two CPUs (interleaved pairs, 12 of 12 higher).
//!
//! Workers are pinned at their first park, one CPU each in turn over the CPUs the
//! executor may use (tokio runs its park hook on worker threads only). Nothing else keeps
//! a worker's pin: every thread the runtime starts (a blocking one may be started by a
//! worker and would inherit its CPU) takes back all the executor's CPUs first thing, and
//! a job's child that a pinned worker clones itself (when there are no spawner threads)
//! does too (see `spawn`). Threads of the executor's own (reaper, spawners, spares) are
//! started from a blocking thread and never pinned by this.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// CPU numbers a `cpu_set_t` holds.
const SET_BITS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// The CPUs the executor may use, as found by [`remember`].
static EXECUTOR_CPUS: OnceLock<libc::cpu_set_t> = OnceLock::new();

/// The next worker's turn among [`EXECUTOR_CPUS`].
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is a worker kept on one CPU.
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Record the CPUs the executor may use: from the main thread, before the runtime starts.
pub fn remember() {
    if let Some(cpus) = affinity() {
        let _ = EXECUTOR_CPUS.set(cpus);
    }
}

/// For every thread the runtime starts: every CPU the executor may use.
pub fn on_thread_start() {
    if let Some(cpus) = EXECUTOR_CPUS.get() {
        // SAFETY: a valid set of the size given, only read.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(cpus), cpus) };
    }
}

/// For a worker about to park: at the first time, keep it on its CPU from now on.
pub fn on_worker_park() {
    if PINNED.get() {
        return;
    }
    PINNED.set(true);
    let Some(cpus) = EXECUTOR_CPUS.get() else {
        return;
    };
    if let Some(cpu) = nth_cpu(cpus, NEXT_WORKER.fetch_add(1, Ordering::Relaxed)) {
        let _ = pin(0, cpu);
    }
}

/// Keep process or thread `pid` (0: the calling thread) on `cpu` alone.
pub(super) fn pin(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    if cpu >= SET_BITS {
        return Err(io::Error::other(
            "a CPU number beyond what a cpu_set_t holds",
        ));
    }
    // SAFETY: an all-zero cpu_set_t is a valid, empty set; CPU_SET stays within it (`cpu`
    // was checked above) and the call only reads it.
    unsafe {
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        if libc::sched_setaffinity(pid, std::mem::size_of_val(&only), &only) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs a child cloned on this thread must take back, if this thread is a worker
/// kept on one CPU.
pub fn to_take_back() -> Option<&'static libc::cpu_set_t> {
    PINNED.get().then(|| EXECUTOR_CPUS.get()).flatten()
}

/// The calling thread's CPUs, if they can be read.
pub(super) fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set, filled by the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) == 0).then_some(set)
    }
}

/// The CPUs in `cpus`, in ascending order.
pub(super) fn members(cpus: &libc::cpu_set_t) -> Vec<usize> {
    (0..SET_BITS)
        // SAFETY: every index is below the set's size in bits; the set is only read.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, cpus) })
        .collect()
}

/// The CPU at `turn` (modulo their number) in `cpus`, in ascending order.
fn nth_cpu(cpus: &libc::cpu_set_t, turn: usize) -> Option<usize> {
    let members = members(cpus);
    (!members.is_empty()).then(|| members[turn % members.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(members: &[usize]) -> libc::cpu_set_t {
        // SAFETY: as in `on_worker_park`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in members {
                libc::CPU_SET(cpu, &mut set);
            }
            set
        }
    }

    #[test]
    fn workers_take_the_cpus_in_turn_and_wrap_around() {
        let cpus = set_of(&[1, 3, 4]);
        let turns: Vec<_> = (0..5).map(|turn| nth_cpu(&cpus, turn)).collect();
        assert_eq!(turns, [Some(1), Some(3), Some(4), Some(1), Some(3)]);
        assert_eq!(nth_cpu(&set_of(&[]), 0), None);
    }

    #[test]
    fn a_pinned_worker_has_one_cpu_and_a_thread_it_starts_gets_them_all_back() {
        // In a thread of its own: the pin must not reach the test harness's threads.
        std::thread::spawn(|| {
            remember();
            let all = *EXECUTOR_CPUS.get().unwrap();
            assert_eq!(to_take_back(), None);
            on_worker_park();
            // SAFETY: a valid set, only read.
            let count = |set: &libc::cpu_set_t| unsafe { libc::CPU_COUNT(set) };
            assert_eq!(count(&affinity().unwrap()), 1);
            assert_eq!(to_take_back().map(count), Some(count(&all)));
            // What a runtime thread started by this worker does first.
            let started = std::thread::spawn(|| {
                let inherited = affinity().unwrap();
                on_thread_start();
                (inherited, affinity().unwrap())
            });
            let (inherited, after) = started.join().unwrap();
            assert_eq!(count(&inherited), 1);
            assert_eq!(count(&after), count(&all));
        })
        .join()
        .unwrap();
    }
}
