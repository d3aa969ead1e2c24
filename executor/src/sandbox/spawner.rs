//! Spawner threads: one thread per CPU that carries the job filter, so that a job forked
//! from it inherits the filter instead of loading it.
//!
//! Loading a seccomp filter is one of the dearest steps of a job's start: for every load
//! the kernel checks, converts and JIT-compiles the program, and at the job's exit it frees
//! it all again on a kworker. Measured here (interleaved A/B, `/run_sh true` at c=32), jobs
//! forked without loading any filter ran 13.8 % more per second, and a 5-instruction
//! filter in place of the job's 251 cost nearly as much as the whole one: the price is
//! per load, not per instruction. A filter is inherited by every child of the thread that
//! loaded it, for free. So each spawner thread loads the job filter once — with
//! `no_new_privs`, both for that thread alone, never for the executor's other threads —
//! and a forked job's child is cloned from one of them: it starts with the very filter a
//! job loads, and never runs without it.
//!
//! A job leads its own process group (the executor kills the group at the timeout and
//! when the leader exits), and the filter denies `setpgid` so that a job cannot leave it.
//! A child of a spawner therefore cannot call it: the executor makes it the group's leader
//! from the thread that asked for the clone (a parent may do so until its child's exec),
//! and the child waits for that just before its exec ([`Group`]). By then it is nearly
//! always done: the child's own steps take longer than the executor's one call.
//!
//! The asking thread (a runtime worker) hands over its prepared plan and its child stack,
//! waits for the pid, then waits for the child's exec on its setup pipe as it does for a
//! child it clones itself; the child runs `CLONE_VM` on that stack meanwhile. Each spawner
//! is pinned to its CPU, and a worker asks the one of the CPU it is running on: the
//! hand-over wakes a thread on the same CPU, never the other, idle one (waking an idle
//! virtual CPU costs tens of microseconds here). A single spawner for all CPUs made jobs
//! slower than loading the filter (-8 % at c=32); one per CPU, faster (+21.8 % in the
//! first trial, +13.0 % as built; 8 of 8 interleaved pairs each). The child starts on its
//! spawner's CPU and takes back every CPU the executor may use right after its signals.
//! A spawner that could not load the filter ends, and no job is cloned from it: the
//! sandbox then has no spawners, and forked jobs load the filter themselves.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use seccompiler::BpfProgram;

use super::spawn::{clone_on, fprog};

/// Stack of a spawner thread: it only waits, locks and clones (the child runs on the
/// asking thread's stack).
const SPAWNER_STACK: usize = 64 * 1024;

/// The executor's spawner threads, one per CPU it may run on.
#[derive(Debug)]
pub struct Spawners {
    /// Indexed by CPU number; `None` for a CPU outside the executor's affinity.
    by_cpu: Vec<Option<Arc<Spawner>>>,
    /// The filter each of them carries.
    program: BpfProgram,
    /// The CPUs the executor may run on: a child takes them back from its spawner's one.
    cpus: libc::cpu_set_t,
}

#[derive(Debug, Default)]
struct Spawner {
    slot: Mutex<Slot>,
    /// Signalled when a request is put in the slot.
    requested: Condvar,
    /// Signalled when its answer is.
    answered: Condvar,
    /// Held by the one thread whose request is in the slot.
    turn: Mutex<()>,
}

#[derive(Debug, Default)]
struct Slot {
    request: Option<Request>,
    /// The child's pid, or `-errno` when the clone failed.
    answer: Option<i32>,
}

/// What the child runs, on which stack: in the asking thread's memory.
#[derive(Debug)]
struct Request {
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    stack: *mut u8,
    len: usize,
}

// SAFETY: the pointers are only used by the spawner thread while the asking thread waits
// for the answer, and by the child until its exec, which the asking thread waits for too
// (see `Spawners::clone_child`); both stay valid and unmoved all that time.
unsafe impl Send for Request {}

impl Spawners {
    /// Start a spawner on every CPU the executor may run on, each with `program` loaded.
    /// `Err` if any of them could not load it.
    fn start(program: &BpfProgram) -> io::Result<Spawners> {
        let cpus = super::cpus::affinity().ok_or_else(io::Error::last_os_error)?;
        let mut by_cpu = Vec::new();
        for cpu in super::cpus::members(&cpus) {
            by_cpu.resize(cpu + 1, None);
            by_cpu[cpu] = Some(Spawner::start(cpu, program)?);
        }
        if by_cpu.is_empty() {
            return Err(io::Error::other("the executor may run on no CPU"));
        }
        Ok(Spawners {
            by_cpu,
            program: program.clone(),
            cpus,
        })
    }

    /// The process's spawners for `program`, started on first use (threads that live as
    /// long as the process: every sandbox of it uses the same job filter).
    pub fn global(program: &BpfProgram) -> io::Result<Arc<Spawners>> {
        static GLOBAL: Mutex<Option<Arc<Spawners>>> = Mutex::new(None);
        let mut global = lock(&GLOBAL);
        if let Some(spawners) = global.as_ref().filter(|spawners| spawners.carry(program)) {
            return Ok(Arc::clone(spawners));
        }
        let spawners = Arc::new(Spawners::start(program)?);
        *global = Some(Arc::clone(&spawners));
        Ok(spawners)
    }

    /// Whether a child cloned here gets `program`: it does not load it then.
    pub fn carry(&self, program: &BpfProgram) -> bool {
        self.program == *program
    }

    /// The filter a child cloned here has.
    pub fn program(&self) -> &BpfProgram {
        &self.program
    }

    /// The CPUs the child takes back.
    pub fn cpus(&self) -> &libc::cpu_set_t {
        &self.cpus
    }

    /// Clone a child running `child(arg)` on `stack`, from the spawner of the CPU this
    /// thread runs on: `CLONE_VM | SIGCHLD`, suspending no one. Returns its pid, or -1 with
    /// errno set.
    ///
    /// # Safety
    ///
    /// As for `spawn::clone_on`, and the caller must keep `arg` and `stack` valid and
    /// unused until the child has exec'd or exited (for a job: EOF on its setup pipe).
    pub(super) unsafe fn clone_child(
        &self,
        child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
        stack: &mut [u8],
    ) -> libc::pid_t {
        // SAFETY: no arguments; the CPU this thread runs on.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok();
        let spawner = cpu
            .and_then(|cpu| self.by_cpu.get(cpu))
            .and_then(Option::as_ref)
            .or_else(|| self.by_cpu.iter().flatten().next());
        let Some(spawner) = spawner else {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = libc::EAGAIN };
            return -1;
        };
        let _turn = lock(&spawner.turn);
        lock(&spawner.slot).request = Some(Request {
            child,
            arg,
            stack: stack.as_mut_ptr(),
            len: stack.len(),
        });
        // Notified with the lock released: a spawner woken while it is held (on this very
        // CPU) would only wait for it, and be woken a second time.
        spawner.requested.notify_one();
        let mut slot = lock(&spawner.slot);
        loop {
            if let Some(answer) = slot.answer.take() {
                if answer < 0 {
                    // SAFETY: errno is thread-local.
                    unsafe { *libc::__errno_location() = -answer };
                    return -1;
                }
                return answer;
            }
            slot = spawner
                .answered
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Spawner {
    /// Start the spawner of `cpu`: pinned there, `program` loaded, waiting for requests.
    fn start(cpu: usize, program: &BpfProgram) -> io::Result<Arc<Spawner>> {
        let spawner = Arc::new(Spawner::default());
        let serving = Arc::clone(&spawner);
        let program = program.clone();
        let (loaded, load_result) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("nox-spawner".into())
            .stack_size(SPAWNER_STACK)
            .spawn(move || {
                let result = pin_and_filter(cpu, &program);
                let ok = result.is_ok();
                let _ = loaded.send(result);
                if ok {
                    serving.serve();
                }
            })?;
        load_result
            .recv()
            .map_err(|_| io::Error::other("a spawner thread ended before loading the filter"))??;
        Ok(spawner)
    }

    /// Clone a child for every request, forever.
    fn serve(&self) {
        loop {
            let request = {
                let mut slot = lock(&self.slot);
                loop {
                    if let Some(request) = slot.request.take() {
                        break request;
                    }
                    slot = self
                        .requested
                        .wait(slot)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            // SAFETY: the asking thread keeps the stack valid and unused until the child's
            // exec (see `Spawners::clone_child`).
            let stack = unsafe { std::slice::from_raw_parts_mut(request.stack, request.len) };
            // SAFETY: what the asking thread vouched for in `clone_child`.
            let pid = unsafe { clone_on(request.child, stack, libc::CLONE_VM, request.arg) };
            let answer = if pid < 0 {
                -io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EAGAIN)
            } else {
                pid
            };
            // Neither the clone nor the wake-up below holds the lock: the asking thread,
            // woken, takes it at once instead of waiting for it (a second wake-up).
            lock(&self.slot).answer = Some(answer);
            self.answered.notify_one();
        }
    }
}

/// Pin the calling thread to `cpu`, then load `program` on it (with `no_new_privs`, which
/// the kernel requires without CAP_SYS_ADMIN). Both are this thread's alone.
fn pin_and_filter(cpu: usize, program: &BpfProgram) -> io::Result<()> {
    super::cpus::pin(0, cpu)?;
    let filter = fprog(program);
    // SAFETY: prctl and seccomp with a pointer to a filter that lives across the call; they
    // change only this thread (no SECCOMP_FILTER_FLAG_TSYNC).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                std::ptr::from_ref(&filter),
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (single assignments).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a child of a spawner leads its own process group yet: the executor sets it, the
/// child waits for it before its exec.
#[derive(Debug)]
pub struct Group {
    state: AtomicI32,
    /// The executor's pid: the child's parent until the executor dies. A child whose
    /// executor died before making it a leader (killed between the clone and its
    /// `setpgid`) would otherwise wait forever, every signal but SIGKILL blocked (a spare).
    parent: libc::pid_t,
}

impl Default for Group {
    /// For a child of this process (its pid read once, not for every job).
    fn default() -> Group {
        static THIS_PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        Group::for_child_of(*THIS_PROCESS.get_or_init(std::process::id))
    }
}

/// How long a child waits for its group before it checks that its executor still lives.
static GROUP_PATIENCE: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};

/// Not decided yet.
const GROUP_PENDING: i32 = 0;
/// The child leads its own process group.
const GROUP_LED: i32 = 1;
// Anything else: `-errno` of the executor's failed `setpgid`.

impl Group {
    /// For a child of process `parent`.
    fn for_child_of(parent: u32) -> Group {
        Group {
            state: AtomicI32::new(GROUP_PENDING),
            parent: libc::pid_t::try_from(parent).unwrap_or(libc::pid_t::MAX),
        }
    }

    /// Make `pid`, a child of a spawner that has not exec'd, the leader of its own process
    /// group, and tell it.
    pub fn lead(&self, pid: libc::pid_t) {
        // SAFETY: setpgid on our own child: no memory involved.
        let answer = if unsafe { libc::setpgid(pid, pid) } == 0 {
            GROUP_LED
        } else {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EPERM)
        };
        self.tell(answer);
    }

    /// Give the child the executor's `answer` and wake it.
    fn tell(&self, answer: i32) {
        self.state.store(answer, Ordering::Release);
        // SAFETY: FUTEX_WAKE on an aligned i32 of ours, waking at most one waiter.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            );
        }
    }

    /// In the child: wait until the executor has decided. `Err(errno)` when it could not
    /// make us the leader, `Err(ESRCH)` when it died first (we are another's child then).
    ///
    /// # Safety
    ///
    /// Only in a child sharing the executor's memory (`CLONE_VM`), before its exec: the
    /// wait is a private futex of that memory.
    pub(super) unsafe fn wait(&self) -> Result<(), i32> {
        loop {
            match self.state.load(Ordering::Acquire) {
                GROUP_LED => return Ok(()),
                GROUP_PENDING => {
                    // SAFETY: FUTEX_WAIT on an aligned i32 shared with the executor, with a
                    // timeout that lives across the call; it returns at once (EAGAIN) if the
                    // value is no longer 0, else when woken, interrupted or timed out — the
                    // loop reads the value again either way. getppid takes nothing.
                    unsafe {
                        let waited = libc::syscall(
                            libc::SYS_futex,
                            self.state.as_ptr(),
                            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                            GROUP_PENDING,
                            &raw const GROUP_PATIENCE,
                        );
                        if waited != 0
                            && *libc::__errno_location() == libc::ETIMEDOUT
                            && libc::getppid() != self.parent
                        {
                            return Err(libc::ESRCH);
                        }
                    }
                }
                errno => return Err(-errno),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::sock_filter;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A filter that answers `getppid` with EDOM and allows everything else.
    fn getppid_is_edom() -> BpfProgram {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let number = libc::SYS_getppid as u32;
        #[allow(clippy::cast_sign_loss)]
        let edom = libc::SECCOMP_RET_ERRNO | libc::EDOM as u32;
        vec![
            sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            }, // A = syscall number
            sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: number,
            }, // A == getppid?
            sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: edom,
            },
            sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ]
    }

    /// getppid's errno, or 0 when it answered (through syscall(2): glibc's getppid, a
    /// call that cannot fail, returns the kernel's answer without setting errno).
    fn getppid_errno() -> i32 {
        // SAFETY: getppid takes nothing; errno is thread-local.
        unsafe {
            if libc::syscall(libc::SYS_getppid) < 0 {
                *libc::__errno_location()
            } else {
                0
            }
        }
    }

    /// The child: reports getppid's errno and its seccomp mode on the pipe `arg`, exits.
    extern "C" fn report(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: prctl takes no pointers here.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        let answer = [getppid_errno(), mode];
        // SAFETY: `arg` is the pipe's write end, cast from a descriptor number; the buffer
        // is on this stack; _exit is async-signal-safe.
        unsafe {
            libc::write(
                arg as usize as libc::c_int,
                answer.as_ptr().cast(),
                std::mem::size_of_val(&answer),
            );
            libc::_exit(0)
        }
    }

    #[test]
    fn a_child_of_a_spawner_has_its_filter_while_the_thread_that_asked_has_none() {
        let program = getppid_is_edom();
        let spawners = Spawners::start(&program).unwrap();
        assert!(spawners.carry(&program));
        assert!(!spawners.carry(&Vec::new()));
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe2 to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 returned two new descriptors nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: `report` only writes to the pipe and its stack; both outlive it (the read
        // below returns once it has written, and the wait once it has exited).
        let pid = unsafe {
            spawners.clone_child(
                report,
                write.as_raw_fd() as usize as *mut libc::c_void,
                &mut stack,
            )
        };
        assert!(pid > 0, "{}", io::Error::last_os_error());
        drop(write);
        let mut answer = [0i32; 2];
        let mut file = std::fs::File::from(read);
        std::io::Read::read_exact(&mut file, bytemuck_bytes(&mut answer)).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(
            answer,
            [libc::EDOM, 2],
            "the child's getppid errno and seccomp mode"
        );
        assert_eq!(getppid_errno(), 0, "the asking thread was filtered");
        // SAFETY: prctl takes no pointers here.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) }, 0);
    }

    fn bytemuck_bytes(values: &mut [i32; 2]) -> &mut [u8] {
        // SAFETY: an i32 array is plain bytes, borrowed mutably for as long as the slice.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), 8) }
    }

    #[test]
    fn a_child_whose_executor_died_stops_waiting_for_its_group() {
        // A group for a child of a process that is not our parent: what a child whose
        // executor died finds (its parent is then another).
        let group = std::sync::Arc::new(Group::for_child_of(u32::MAX));
        let waiter = std::sync::Arc::clone(&group);
        let (done, answer) = std::sync::mpsc::channel();
        // SAFETY: not a cloned child; the futex is this process's private one.
        std::thread::spawn(move || done.send(unsafe { waiter.wait() }));
        let answer = answer.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(answer, Ok(Err(libc::ESRCH)), "still waiting after 5 s");
    }

    #[test]
    fn a_child_whose_executor_lives_waits_past_the_patience_for_its_group() {
        let group = std::sync::Arc::new(Group::for_child_of(std::os::unix::process::parent_id()));
        let leader = std::sync::Arc::clone(&group);
        let lead = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(250));
            leader.tell(GROUP_LED);
        });
        // SAFETY: as above.
        assert_eq!(unsafe { group.wait() }, Ok(()));
        lead.join().unwrap();
    }

    #[test]
    fn a_group_the_executor_could_not_make_tells_the_child_why() {
        let group = Group::default();
        // Not our child: setpgid refuses (ESRCH or EPERM, never success).
        group.lead(1);
        // SAFETY: not a cloned child, but the group is decided: wait returns at once.
        let answer = unsafe { group.wait() };
        assert!(
            matches!(answer, Err(errno) if errno == libc::ESRCH || errno == libc::EPERM),
            "{answer:?}"
        );
    }
}
