//! Spare processes: a child forked ahead of the next shell job, already in a pids cgroup.
//!
//! Joining a cgroup through `cgroup.procs` is the one step of starting a job whose cost
//! depends on what happened before: it takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing, and the first writer after a quiet moment waits a whole RCU grace period —
//! measured here at 10–20 ms, against 0.5 ms for the whole spawn (a job every 20 ms paid it
//! almost every other time; `/run_sh` spaced 50 ms apart had a p50 of 9.9 ms). So the join
//! happens before the job exists: a spare is cloned while nothing waits for it, joins a
//! cgroup from the pool (paying the wait, if any, on nobody's time) and blocks; a job hands
//! it its plan and descriptors and it goes on with the usual steps from stdio to exec
//! ([`enter_job`]). On cgroup v1 a job now joins through `tasks`, which skips that lock
//! (see `super::cgroup`), so there the spare saves the rest: its clone and the user
//! namespace below. The kernel also offers `favordynmods` (a host-wide mount
//! option, documented to make forks and exits dearer, that on 6.18 cannot be turned off
//! again) and, on cgroup v2 only, `CLONE_INTO_CGROUP`; the spare needs neither.
//!
//! A spare is cloned with `CLONE_VM` like every job's child, but not suspended-parent
//! (`CLONE_VFORK`): it runs on a stack of its own ([`SpareMemory`]) that stays allocated
//! until it has exec'd or exited. It keeps nothing of the executor's: first thing, it
//! closes every descriptor but its socket and the file that joins its cgroup (so it never
//! holds another job's pipe open), and it waits with every signal blocked. The job's
//! descriptors arrive with `SCM_RIGHTS` on a `SOCK_SEQPACKET` pair, with the address of
//! the job's [`RawPlan`] in the executor's memory, which the executor keeps alive until the
//! child's exec (or failure) is reported. EOF on the socket — the executor dropped the
//! spare or died — makes it exit. A spare that could not set itself up says which step
//! failed on the socket and exits; [`Spare::check`] finds that before a job is handed to it.
//!
//! The spare has the job's seccomp filter before it waits, so a job handed to it never
//! loads one (the load is one of the dearest steps of a start: the kernel checks and
//! compiles the program, and frees it again at the exit). It inherits the filter from the
//! spawner thread that clones it (see `super::spawner`), which also means that the
//! executor makes it its group's leader (the filter denies `setpgid`); without spawner
//! threads it loads the filter itself, after its `setpgid`.
//!
//! A job handed to a spare wakes it on the CPU that hands it over: the spare is pinned
//! there first and takes back every CPU the executor has once awake. Left to itself the
//! kernel wakes a sleeping task on the CPU it last ran on when that one is idle, and
//! waking an idle virtual CPU here costs hundreds of microseconds (traced: a job's spare
//! woken on the other, idle CPU started 0.8 ms after its hand-over, while the CPU that
//! handed it over sat idle).
//!
//! One spare waits at a time, made by a thread of its own ([`Spares`]): as soon as the job
//! that took one has started, while at most [`LIGHT_LOAD`] jobs run, else once no job has
//! started for [`QUIET`]. Under load jobs fork as before: a spare's own steps and the wake-ups to make
//! and hand it over cost CPU the jobs need (interleaved A/B, `/run_sh` c=32: -6..10 % with
//! a spare made after every job), while one job after another gains from it (c=1: p50
//! -0.06 ms with the filter loaded ahead; before that, forking was 0.1 ms faster).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, Shutdown, SockFlag, SockType, sendmsg, shutdown,
    socketpair,
};
use seccompiler::BpfProgram;
use tokio::sync::oneshot;

use super::Step;
use super::cgroup::{Cgroups, JobCgroup};
use super::reaper::{ExitReport, Reaper};
use super::spawn::{
    CHILD_STACK, Dispositions, INHERIT_FLOOR, MAX_INHERITED, RawPlan, clone_on, enter_job, fail,
    fprog, raise_fd, unblock_signals,
};
use super::spawner::{Group, Spawners};

/// Descriptors a job hands its spare: error pipe, stdin, stdout, stderr, working
/// directory, Landlock ruleset, view (root, user and network namespaces), and the
/// inherited ones.
const MAX_HANDED: usize = 9 + MAX_INHERITED;

/// How long a spare that is dropped unused may take to exit before its memory is leaked
/// rather than freed under it.
const EXIT_PATIENCE: Duration = Duration::from_secs(2);

/// A spare is made once no job has started for this long, or at once while at most
/// [`LIGHT_LOAD`] jobs run.
const QUIET: Duration = Duration::from_millis(5);

/// Running jobs up to which a taken spare is replaced at once: jobs one after another get a
/// spare each, while under load (every slot busy) the CPU a spare costs goes to the jobs.
const LIGHT_LOAD: u32 = 1;

/// After a spare could not be made, the next try waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the spare reads when it starts, in the executor's memory.
#[derive(Debug)]
#[repr(C)]
struct SpareStart {
    socket: RawFd,
    /// The file that joins its cgroup (`JobCgroup::join_fd`), or -1.
    cgroup_join: RawFd,
    /// The job filter, loaded while the spare waits.
    seccomp: Option<Arc<BpfProgram>>,
    /// The CPUs it takes back once handed a job (it is pinned to one for the wake-up).
    cpus: Option<libc::cpu_set_t>,
    /// The signals it sets back to default.
    dispositions: Dispositions,
    /// The views' user namespace, which it enters while it waits (the dear part of
    /// entering a view: see `crate::views`), or -1.
    user_namespace: RawFd,
    /// Cloned by a spawner thread: it has the filter from its clone, and the executor makes
    /// it its group's leader through `group` (see `super::spawner`).
    inherited: bool,
    group: Group,
}

/// Memory a spare runs on or reads: freed only once it has exec'd or exited (its stack
/// then goes to [`STACKS`]).
#[derive(Debug)]
pub struct SpareMemory {
    stack: Box<[u8]>,
    _start: Box<SpareStart>,
}

/// Stacks of spares that have exec'd or exited, for the next spares. A new stack is fresh
/// pages, each faulted in by the spare that first writes it, and freeing one unmaps it
/// from every thread of the executor: kept, neither happens per job.
static STACKS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// Stacks kept in [`STACKS`]: one spare waits at a time, and a few more run until their
/// job's exec.
const KEPT_STACKS: usize = 4;

impl Drop for SpareMemory {
    fn drop(&mut self) {
        // Dropped only once the spare runs on it no more (see `Spare::drop` and
        // `spawn::spawn`, which forget it otherwise).
        let stack = std::mem::take(&mut self.stack);
        let mut kept = STACKS.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_STACKS {
            kept.push(stack);
        }
    }
}

/// A process waiting for a job, in its cgroup already.
pub struct Spare {
    pid: i32,
    /// Ours: the job's plan and descriptors go here. Closing it makes the spare exit.
    socket: OwnedFd,
    exit: Option<oneshot::Receiver<ExitReport>>,
    cgroup: Option<JobCgroup>,
    /// `None` once handed to a job, which then keeps it until the spare has exec'd.
    memory: Option<SpareMemory>,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare")
            .field("pid", &self.pid)
            .field("cgroup", &self.cgroup.is_some())
            .finish_non_exhaustive()
    }
}

impl Spare {
    /// Clone a spare that joins `cgroup`, has the filter `made` names (inherited from a
    /// spawner thread, or loaded) and waits.
    fn fork(reaper: &Reaper, cgroup: Option<JobCgroup>, made: &Made) -> io::Result<Spare> {
        // From a spawner thread when there are spawners (their filter is `made.seccomp`):
        // the spare then inherits the filter rather than loading it.
        let spawners = made.spawners.as_deref();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let (ours, theirs) = (raise_fd(ours)?, raise_fd(theirs)?);
        let start = Box::new(SpareStart {
            socket: theirs.as_raw_fd(),
            cgroup_join: cgroup.as_ref().map_or(-1, JobCgroup::join_fd),
            seccomp: made.seccomp.clone(),
            user_namespace: made.user_namespace.unwrap_or(-1),
            dispositions: made.dispositions,
            cpus: made.cpus,
            inherited: spawners.is_some(),
            group: Group::default(),
        });
        // A kept stack, or a new one zeroed by the allocator (fresh pages), not by a memset.
        let kept = STACKS.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut stack = kept.unwrap_or_else(|| vec![0u8; CHILD_STACK].into_boxed_slice());
        let ticket = reaper.begin_spawn();
        let pid = clone_spare(&start, &mut stack, spawners);
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // Still our spare's pid, even if it died: the ticket holds the reaper back.
        if spawners.is_some() {
            start.group.lead(pid);
        }
        let exit = ticket.watch(pid);
        drop(theirs);
        Ok(Spare {
            pid,
            socket: ours,
            exit: Some(exit),
            cgroup,
            memory: Some(SpareMemory {
                stack,
                _start: start,
            }),
        })
    }

    /// The spare's pid (its process group too).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `Ok` if the spare is alive and waiting (or still joining its cgroup); `Err` says
    /// why not.
    pub fn check(&mut self) -> Result<(), String> {
        if let Some(exit) = &mut self.exit
            && !matches!(exit.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        {
            return Err("it has exited".into());
        }
        let mut report = [0u8; 8];
        // SAFETY: a non-blocking receive into a stack buffer of the given length.
        let n = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                report.as_mut_ptr().cast(),
                report.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            8 => {
                let step = u32::from_le_bytes([report[0], report[1], report[2], report[3]]);
                let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
                Err(format!(
                    "it could not {}: {}",
                    Step::from_code(step).name(),
                    io::Error::from_raw_os_error(errno)
                ))
            }
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Ok(()),
            -1 => Err(io::Error::last_os_error().to_string()),
            _ => Err("it has exited".into()),
        }
    }

    /// Its cgroup, now the job's.
    pub fn cgroup_mut(&mut self) -> Option<&mut JobCgroup> {
        self.cgroup.as_mut()
    }

    /// Take its cgroup: the job's from now on.
    pub fn take_cgroup(&mut self) -> Option<JobCgroup> {
        self.cgroup.take()
    }

    /// Hand the spare its job: `plan`, which must stay where it is until the spare has
    /// exec'd, and the descriptors it names, in the order [`spare_main`] places them.
    /// Returns its pid, its exit report and the memory to free once it has exec'd.
    pub(super) fn start(
        mut self,
        plan: &RawPlan<'_>,
    ) -> io::Result<(i32, oneshot::Receiver<ExitReport>, SpareMemory)> {
        let mut fds = vec![
            plan.error_fd,
            plan.stdin,
            plan.stdout,
            plan.stderr,
            plan.workdir,
        ];
        fds.extend((plan.landlock >= 0).then_some(plan.landlock));
        fds.extend((plan.view >= 0).then_some(plan.view));
        if plan.view_user >= 0 {
            fds.extend([plan.view_user, plan.view_net]);
        }
        fds.extend_from_slice(plan.inherit);
        // Wake it here, not on an idle CPU (see the module's docs). If this fails it only
        // wakes where the kernel puts it.
        pin_to_current_cpu(self.pid);
        let address = (std::ptr::from_ref(plan) as usize).to_ne_bytes();
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(&address)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        if let Err(error) = sent {
            return Err(io::Error::from(error));
        }
        let (Some(exit), Some(memory)) = (self.exit.take(), self.memory.take()) else {
            return Err(io::Error::other("the spare was already used"));
        };
        Ok((self.pid, exit, memory))
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else {
            return; // handed to a job, which frees the memory after the exec
        };
        // EOF on its socket makes it exit; it may still be on its stack meanwhile.
        let _ = shutdown(self.socket.as_raw_fd(), Shutdown::Both);
        let deadline = Instant::now() + EXIT_PATIENCE;
        if let Some(exit) = &mut self.exit {
            while matches!(exit.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                if Instant::now() >= deadline {
                    // Still running on that stack: it must never be reused.
                    std::mem::forget(memory);
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(memory);
    }
}

/// Clone the spare: `CLONE_VM` on `stack`, every signal blocked across the clone (and in
/// the spare until it has a job), from a spawner thread when given one. Returns its pid,
/// or -1 with errno set.
fn clone_spare(start: &SpareStart, stack: &mut [u8], spawners: Option<&Spawners>) -> libc::pid_t {
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the boxed `SpareStart` passed to clone below, kept alive with
        // the stack until the spare has exec'd or exited.
        let start = unsafe { &*arg.cast::<SpareStart>() };
        // SAFETY: we are the new spare, sharing the executor's memory; spare_main only
        // makes system calls on its own descriptors and writes only to this stack.
        unsafe { spare_main(start) }
    }
    let arg = std::ptr::from_ref(start).cast_mut().cast();
    // SAFETY: `trampoline` reads only `start`, boxed and kept with the stack in the
    // `Spare` until the spare has exec'd or exited.
    unsafe {
        match spawners {
            Some(spawners) => spawners.clone_child(trampoline, arg, stack),
            None => clone_on(trampoline, stack, libc::CLONE_VM, arg),
        }
    }
}

/// The spare, from its clone to its job's exec. Never returns.
///
/// # Safety
///
/// Only in a process just cloned by [`clone_spare`], with `start` valid. Like a job's
/// child, it makes only async-signal-safe calls and writes only to its own stack. It shares
/// the cloning thread's TLS, so its errno is that thread's: the [`Spares`] thread, which
/// only waits or forks the next spare meanwhile and reads errno only after a failed call.
unsafe fn spare_main(start: &SpareStart) -> ! {
    let socket = start.socket;
    let report = |step: Step| -> ! {
        // SAFETY: as in `spawn::fail`, on the socket: the executor reads it in `check`.
        unsafe { fail(socket, step) }
    };
    // SAFETY: system calls on this process's own descriptors and on buffers in this frame.
    unsafe {
        // Nothing of the executor's but the descriptors it gave us.
        let mut keep = [socket, start.cgroup_join, start.user_namespace];
        keep.sort_unstable();
        let mut next: libc::c_uint = 0;
        for fd in keep {
            if fd < 0 {
                continue;
            }
            #[allow(clippy::cast_sign_loss)]
            let fd = fd as libc::c_uint;
            if fd > next {
                libc::syscall(libc::SYS_close_range, next, fd - 1, 0);
            }
            next = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
        start.dispositions.reset();
        if !start.inherited {
            if libc::setpgid(0, 0) != 0 {
                report(Step::ProcessGroup);
            }
        } else {
            // A spawner's child: the filter came with the clone (never run without it) and
            // the executor makes it its group's leader (the filter denies setpgid).
            if libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) != 2 {
                report(Step::Seccomp);
            }
            if let Err(errno) = start.group.wait() {
                *libc::__errno_location() = errno;
                report(Step::ProcessGroup);
            }
        }
        if start.cgroup_join >= 0 {
            if libc::write(start.cgroup_join, c"0".as_ptr().cast(), 1) != 1 {
                report(Step::Cgroup);
            }
            libc::close(start.cgroup_join);
        }
        // The views' user namespace (after the cgroup: that write is the executor's as
        // root, not a namespace's), so that a job's view costs it only its network
        // namespace and root.
        if start.user_namespace >= 0 {
            if libc::syscall(libc::SYS_setns, start.user_namespace, libc::CLONE_NEWUSER) != 0 {
                report(Step::View);
            }
            libc::close(start.user_namespace);
        }
        // The job filter, now rather than on the job's time (its load, mostly the kernel
        // compiling it, is one of the dearest steps of a start). Past this point the spare
        // makes no call the filter denies: setpgid, the one it would, is behind us.
        let loaded = start.seccomp.as_deref().map(fprog);
        if let Some(program) = &loaded
            && !start.inherited
            && (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    std::ptr::from_ref(program),
                ) != 0)
        {
            report(Step::Seccomp);
        }
        // Occupy 0..INHERIT_FLOOR, so the descriptors received land above them and placing
        // them on 0, 1, 2, 3... never overwrites one still to be placed.
        for fd in 0..INHERIT_FLOOR {
            if fd != socket && libc::dup2(socket, fd) < 0 {
                report(Step::Stdio);
            }
        }

        let mut address = [0u8; std::mem::size_of::<usize>()];
        let mut iov = libc::iovec {
            iov_base: address.as_mut_ptr().cast(),
            iov_len: address.len(),
        };
        let mut control = [0u64; 16];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        let received = loop {
            let n = libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break n;
        };
        if usize::try_from(received) != Ok(address.len()) {
            libc::_exit(0); // EOF: not needed any more
        }
        let mut fds = [-1 as RawFd; MAX_HANDED];
        let mut count = 0;
        let header = libc::CMSG_FIRSTHDR(&message);
        if !header.is_null()
            && (*header).cmsg_level == libc::SOL_SOCKET
            && (*header).cmsg_type == libc::SCM_RIGHTS
            && message.msg_flags & libc::MSG_CTRUNC == 0
        {
            let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            count = (bytes / std::mem::size_of::<RawFd>()).min(MAX_HANDED);
            let data = libc::CMSG_DATA(header).cast::<RawFd>();
            for (i, slot) in fds.iter_mut().enumerate().take(count) {
                *slot = data.add(i).read_unaligned();
            }
        }
        if count == 0 {
            libc::_exit(127);
        }
        // The plan lives in the executor's frame that sent it, which waits for our exec.
        let plan = &*(usize::from_ne_bytes(address) as *const RawPlan<'_>);
        let mut local = *plan;
        let landlock = usize::from(plan.landlock >= 0);
        let view = usize::from(plan.view >= 0);
        let namespaces = 2 * usize::from(plan.view_user >= 0);
        if plan.inherit.len() > MAX_INHERITED
            || count != 5 + landlock + view + namespaces + plan.inherit.len()
        {
            fail(fds[0], Step::Stdio);
        }
        local.error_fd = fds[0];
        local.stdin = fds[1];
        local.stdout = fds[2];
        local.stderr = fds[3];
        local.workdir = fds[4];
        if landlock == 1 {
            local.landlock = fds[5];
        }
        if view == 1 {
            local.view = fds[5 + landlock];
        }
        if namespaces == 2 {
            // In the views' user namespace already, if we have one (every view's is it).
            local.view_user = if start.user_namespace >= 0 {
                -1
            } else {
                fds[5 + landlock + view]
            };
            local.view_net = fds[6 + landlock + view];
        }
        local.inherit = &fds[5 + landlock + view + namespaces..count];
        local.cgroup_join = -1; // joined already
        if let Some(cpus) = &start.cpus
            && libc::sched_setaffinity(0, std::mem::size_of_val(cpus), cpus) != 0
        {
            fail(local.error_fd, Step::Cpus);
        }
        if let (Some(loaded), Some(wanted)) = (&loaded, &plan.seccomp)
            && same_program(loaded, wanted)
        {
            local.seccomp = None; // loaded already
        }
        if !unblock_signals() {
            fail(local.error_fd, Step::Signals);
        }
        enter_job(&local)
    }
}

/// Pin process `pid` to the CPU the calling thread runs on (left where the kernel wakes it
/// when that cannot be done).
fn pin_to_current_cpu(pid: i32) {
    // SAFETY: no arguments; reads the calling thread's CPU.
    if let Ok(cpu) = usize::try_from(unsafe { libc::sched_getcpu() }) {
        let _ = super::cpus::pin(pid, cpu);
    }
}

/// Whether two filters are the same instructions (a job's plan names the sandbox's copy,
/// the spare loaded the spares' copy).
///
/// # Safety
///
/// Both must point to `len` valid instructions.
unsafe fn same_program(a: &libc::sock_fprog, b: &libc::sock_fprog) -> bool {
    let size = usize::from(a.len) * std::mem::size_of::<libc::sock_filter>();
    // SAFETY: the caller's; memcmp is async-signal-safe and only reads.
    a.len == b.len && unsafe { libc::memcmp(a.filter.cast(), b.filter.cast(), size) } == 0
}

/// The job filter a spare has before its job.
#[derive(Debug)]
pub enum SpareFilter {
    None,
    /// Loaded by the spare while it waits.
    Load(BpfProgram),
    /// Inherited from the spawner thread that clones it.
    Inherit(Arc<Spawners>),
}

/// Keeps one spare waiting, made on a thread of its own.
#[derive(Debug)]
pub struct Spares {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Slot {
    spare: Option<Spare>,
    stop: bool,
    /// When a job last started (took the spare or found none).
    last_start: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    taken: Condvar,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Slot> {
    shared.slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Spares {
    /// Start the thread that keeps a spare in a cgroup of `cgroups` (holding at most
    /// `max_processes` until a job sets its own) ready.
    pub fn start(
        reaper: Reaper,
        cgroups: Cgroups,
        max_processes: u64,
        filter: SpareFilter,
        dispositions: Dispositions,
        running: Arc<AtomicU32>,
        user_namespace: Option<RawFd>,
    ) -> io::Result<Spares> {
        let (seccomp, spawners) = match filter {
            SpareFilter::None => (None, None),
            SpareFilter::Load(program) => (Some(program), None),
            SpareFilter::Inherit(spawners) => (Some(spawners.program().clone()), Some(spawners)),
        };
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let made = Made {
            cgroups,
            max_processes,
            seccomp: seccomp.map(Arc::new),
            dispositions,
            cpus: super::cpus::affinity(),
            user_namespace,
            spawners,
        };
        std::thread::Builder::new()
            .name("nox-spares".into())
            .spawn(move || keep_one_ready(&thread_shared, &reaper, &made, &running))?;
        Ok(Spares { shared })
    }

    /// The pid of the waiting spare, if one waits.
    pub fn waiting(&self) -> Option<i32> {
        lock(&self.shared).spare.as_ref().map(Spare::pid)
    }

    /// The waiting spare, if there is one and it is alive. The thread makes the next
    /// once the returned [`MakeNext`] is dropped: after the job has started on this one
    /// (made at once, its setup would run first on the CPU they share, and the job's
    /// start wait for it: traced, ~0.25 ms of a 2 ms `/run_sh`).
    pub fn take(&self) -> Option<(Spare, MakeNext<'_>)> {
        let taken = {
            let mut slot = lock(&self.shared);
            slot.last_start = Some(Instant::now());
            slot.spare.take()
        };
        let mut spare = taken?;
        let next = MakeNext(self);
        match spare.check() {
            Ok(()) => Some((spare, next)),
            Err(reason) => {
                tracing::warn!(pid = spare.pid(), %reason, "a spare process is unusable");
                None
            }
        }
    }
}

/// Wakes the spares thread, when dropped, to make the next spare.
#[derive(Debug)]
pub struct MakeNext<'a>(&'a Spares);

impl Drop for MakeNext<'_> {
    fn drop(&mut self) {
        self.0.shared.taken.notify_one();
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.taken.notify_one();
    }
}

/// What every spare is made with.
struct Made {
    /// Where its cgroup comes from, and the process limit it holds until a job sets its own.
    cgroups: Cgroups,
    max_processes: u64,
    seccomp: Option<Arc<BpfProgram>>,
    dispositions: Dispositions,
    /// The executor's CPUs, which a spare takes back once handed a job.
    cpus: Option<libc::cpu_set_t>,
    /// The views' user namespace (see [`SpareStart`]); the executor keeps it open.
    user_namespace: Option<RawFd>,
    /// The threads a spare is cloned from, to inherit `seccomp`, which is then their
    /// filter (see `super::spawner` and [`SpareFilter::Inherit`]).
    spawners: Option<Arc<Spawners>>,
}

/// `running`: the executor's count of running jobs.
fn keep_one_ready(shared: &Shared, reaper: &Reaper, made: &Made, running: &AtomicU32) {
    loop {
        {
            let mut slot = lock(shared);
            loop {
                let quiet_for = slot.last_start.map(|at| at.elapsed());
                let due = quiet_for.is_none_or(|d| d >= QUIET)
                    || running.load(Ordering::Acquire) <= LIGHT_LOAD;
                if slot.stop || (slot.spare.is_none() && due) {
                    break;
                }
                // A whole QUIET each time, not what is left of it: under a steady stream of
                // jobs this thread then wakes once per QUIET, not once per job.
                slot = match quiet_for {
                    Some(_) if slot.spare.is_none() => {
                        shared
                            .taken
                            .wait_timeout(slot, QUIET)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    _ => shared
                        .taken
                        .wait(slot)
                        .unwrap_or_else(PoisonError::into_inner),
                };
            }
            if slot.stop {
                let spare = slot.spare.take();
                drop(slot);
                drop(spare);
                return;
            }
        }
        let spare = made
            .cgroups
            .create(made.max_processes)
            .and_then(|cgroup| Spare::fork(reaper, Some(cgroup), made));
        match spare {
            Ok(spare) => lock(shared).spare = Some(spare),
            Err(error) => {
                tracing::warn!(%error, "could not make a spare process; jobs fork their own");
                std::thread::sleep(RETRY_AFTER);
            }
        }
    }
}
