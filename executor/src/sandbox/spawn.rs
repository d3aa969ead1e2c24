//! Starting one job: prepare everything in the executor, fork, and in the child only apply.
//!
//! INVARIANT: the order of the child's steps is fixed and is the order of [`Step`]:
//! signals reset → own process group (and every CPU back, for a child of a spawner thread or
//! of a runtime worker kept on one CPU) → the job's pids cgroup → stdio and the code
//! descriptor in place → every
//! other descriptor close-on-exec → rlimits → the workspace's view (`setns` into its user
//! and network namespaces, `fchdir` to its root and `chroot`: as root, so before the uid
//! change) → supplementary groups,
//! gid, uid (as root) → working directory → no capabilities in any set → `no_new_privs` → Landlock → seccomp →
//! exec. rlimits come before the uid change so the job cannot raise them (it lacks
//! CAP_SYS_RESOURCE afterwards); `no_new_privs` before Landlock and seccomp because both
//! require it without CAP_SYS_ADMIN; seccomp last so no earlier step can be refused by it.
//!
//! The child is started like posix_spawn does it, `clone(CLONE_VM | CLONE_VFORK)` on its own
//! stack: it shares the executor's memory until it execs, so it runs only async-signal-safe
//! system calls on data prepared before the clone, writes nothing but its own stack, and
//! changes ids with raw system calls (glibc's wrappers would reach the executor's threads).
//! No allocation, no locks, no logging. A failing step writes `(step, errno)` to a
//! close-on-exec pipe and exits 127; the executor reads that pipe until EOF, which comes
//! either with those 8 bytes or with a successful exec.
//!
//! A job may instead start on a spare (see `spare`): a child cloned earlier that took the
//! first three steps (signals, process group, cgroup) while no job waited, and takes the
//! rest ([`enter_job`]) in the same order once it has the job's plan and descriptors.
//!
//! Without a spare, the child is cloned by a spawner thread when there is one (see
//! `spawner`): `CLONE_VM` without `CLONE_VFORK` (this thread waits on the setup pipe
//! instead), and the job filter comes with the clone rather than last. Like a spare, which
//! loads the filter before its job's steps, it then takes every step under the filter: the
//! filter allows each of them (the spare path and the probe job prove it), and it denies
//! `setpgid`, so the executor makes the child its group's leader and the child waits for
//! that before its exec; after its signals it checks that it has the filter and takes back
//! every CPU the executor may use from its spawner's one.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nox_protocol::Limits;
use seccompiler::BpfProgram;
use tokio::sync::oneshot;

use super::reaper::{ExitReport, Reaper};
use super::spare::Spare;
use super::spawner::{Group, Spawners};
use super::{SandboxError, Step};

/// What to start, decided by the job runner.
#[derive(Debug, Clone)]
pub struct JobCommand {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after argv\[0\] (argv\[0\] is the program path).
    pub args: Vec<String>,
    /// The whole environment of the job.
    pub env: Vec<(String, String)>,
    /// The job's working directory (its workspace).
    pub workdir: PathBuf,
    /// Bytes readable on descriptor 3 (the Python source), if any.
    pub code: Option<Vec<u8>>,
    pub limits: Limits,
    /// A program to exec instead of `program`, when one of its paths execs (a shell job
    /// that needs no shell, see `crate::direct`); `program` runs when none does.
    pub direct: Option<DirectExec>,
    /// Whether the job is given input on a pipe; without it, its stdin is `/dev/null`.
    pub stdin: bool,
}

/// A program tried before the job's own one: the paths in order, the first that execs is
/// the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectExec {
    pub paths: Vec<PathBuf>,
    /// argv, argv\[0\] included.
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
}

/// [`DirectExec`] as C strings, built before the fork.
#[derive(Debug)]
pub struct DirectStrings {
    paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl DirectStrings {
    pub fn new(direct: &DirectExec) -> Result<DirectStrings, SandboxError> {
        Ok(DirectStrings {
            paths: direct
                .paths
                .iter()
                .map(|path| c_path(path, "program path"))
                .collect::<Result<_, _>>()?,
            argv: direct
                .argv
                .iter()
                .map(|arg| c_string(arg.as_bytes(), "command argument"))
                .collect::<Result<_, _>>()?,
            envp: environment(&direct.env)?,
        })
    }
}

/// Everything the child needs, prepared before the fork.
pub struct ChildPlan<'a> {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub workdir: OwnedFd,
    /// Descriptors the job keeps, placed on 3, 4, ... in this order (the Python source for
    /// a cold job; the control socket and the seccomp program for the zygote).
    pub inherit: Vec<OwnedFd>,
    pub rlimits: Vec<(RlimitResource, libc::rlimit)>,
    /// The job's pids cgroup, which its process joins first thing.
    pub cgroup: Option<super::cgroup::JobCgroup>,
    /// `(uid, gid)` to switch to; `None` keeps the executor's own (not root).
    pub identity: Option<(u32, u32)>,
    /// Capabilities (a mask of `1 << CAP_*`, the first 32) kept across the uid change and
    /// exec as ambient ones: only for the Python zygote, which changes each job's uid and
    /// kills its process groups. Every job has 0.
    pub keep_capabilities: u32,
    /// The job's Landlock ruleset, shared with later jobs (see `landlock`).
    pub landlock: Option<std::sync::Arc<OwnedFd>>,
    /// The workspace's view the child enters, its namespaces first (see `crate::views`);
    /// the working directory is then opened through it.
    pub view: Option<crate::views::ViewFds<'a>>,
    pub seccomp: Option<&'a BpfProgram>,
    /// The signals the child sets back to their default disposition.
    pub dispositions: &'a Dispositions,
    /// Tried before `program` (see [`JobCommand::direct`]).
    pub direct: Option<DirectStrings>,
    /// A pipe for the job's stdin ([`JobCommand::stdin`]); else `/dev/null`.
    pub stdin: bool,
}

/// `libc::setrlimit`'s resource type differs between libc flavours.
#[cfg(target_env = "gnu")]
pub type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub type RlimitResource = libc::c_int;

/// A started job.
#[derive(Debug)]
pub struct SpawnedJob {
    pub pid: i32,
    /// Write end of the job's stdin, when it was given a pipe.
    pub stdin: Option<OwnedFd>,
    /// Read ends of the job's stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<ExitReport>,
    pub started: Instant,
    /// The zygote that forked the job, for a Python job on the warm path.
    pub zygote: Option<std::sync::Arc<super::zygote::Zygote>>,
    /// The job's pids cgroup: held until the job is over, then emptied and removed.
    pub cgroup: Option<super::cgroup::JobCgroup>,
}

impl std::fmt::Debug for ChildPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildPlan")
            .field("program", &self.program)
            .field("argv", &self.argv.len())
            .field("identity", &self.identity)
            .field("landlock", &self.landlock.is_some())
            .field("seccomp", &self.seccomp.is_some())
            .finish_non_exhaustive()
    }
}

fn c_string(value: &[u8], what: &'static str) -> Result<CString, SandboxError> {
    CString::new(value).map_err(|_| SandboxError::NulByte { what })
}

fn c_path(path: &Path, what: &'static str) -> Result<CString, SandboxError> {
    c_string(path.as_os_str().as_bytes(), what)
}

/// An rlimit whose soft and hard values are both `value`.
pub fn both(value: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    }
}

/// The rlimits for `limits`, in the order they are applied; `nproc` is RLIMIT_NPROC, which
/// counts every process of the job's uid.
pub fn rlimits_for(limits: &Limits, nproc: u64) -> Vec<(RlimitResource, libc::rlimit)> {
    vec![
        // SIGXCPU at the soft limit, SIGKILL one second later at the hard limit.
        (
            libc::RLIMIT_CPU,
            libc::rlimit {
                rlim_cur: limits.cpu_seconds,
                rlim_max: limits.cpu_seconds.saturating_add(1),
            },
        ),
        (libc::RLIMIT_AS, both(limits.memory_bytes)),
        (libc::RLIMIT_NPROC, both(nproc)),
        (libc::RLIMIT_FSIZE, both(limits.max_file_bytes)),
        (libc::RLIMIT_NOFILE, both(limits.max_open_files)),
        (libc::RLIMIT_CORE, both(0)),
    ]
}

/// Build the child's argv and environment as C strings.
pub fn command_strings(
    command: &JobCommand,
) -> Result<(CString, Vec<CString>, Vec<CString>), SandboxError> {
    let program = c_path(&command.program, "program path")?;
    let mut argv = vec![program.clone()];
    for arg in &command.args {
        argv.push(c_string(arg.as_bytes(), "command or code argument")?);
    }
    Ok((program, argv, environment(&command.env)?))
}

/// `KEY=value` strings of an environment.
fn environment(env: &[(String, String)]) -> Result<Vec<CString>, SandboxError> {
    env.iter()
        .map(|(key, value)| c_string(format!("{key}={value}").as_bytes(), "environment"))
        .collect()
}

/// `/dev/null` for reading, opened on first use and kept: close-on-exec and numbered like
/// [`pipe_high`]'s ends. `None` where it cannot be opened (jobs then get a closed pipe).
fn dev_null() -> Option<RawFd> {
    static DEV_NULL: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    DEV_NULL
        .get_or_init(|| {
            std::fs::File::open("/dev/null")
                .and_then(|null| raise_fd(OwnedFd::from(null)))
                .ok()
        })
        .as_ref()
        .map(AsRawFd::as_raw_fd)
}

/// A pipe whose both ends are close-on-exec and numbered 4 or above, so that placing
/// descriptors on 0–3 in the child never overwrites another one we still need.
pub fn pipe_high() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((raise_fd(read)?, raise_fd(write)?))
}

/// Read what the non-blocking `fd` holds into `buffer`'s spare capacity, without waiting:
/// the count read (0 at EOF), or `WouldBlock` when nothing is there yet.
pub fn read_ready(fd: &OwnedFd, buffer: &mut bytes::BytesMut) -> io::Result<usize> {
    use bytes::BufMut;
    if buffer.capacity() == buffer.len() {
        buffer.reserve(1);
    }
    let spare = buffer.chunk_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the buffer's spare capacity,
    // which is allocated and ours for as long as `buffer` is borrowed.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buffer.advance_mut(n) };
    Ok(n)
}

/// Most descriptors a job may inherit besides stdio.
pub const MAX_INHERITED: usize = 8;
/// Every descriptor handed to the child is numbered at least this: above 3 + MAX_INHERITED,
/// so placing them on 0..=3+MAX_INHERITED never overwrites one still to be placed.
pub const INHERIT_FLOOR: RawFd = 16;

/// Move a descriptor to number [`INHERIT_FLOOR`] or above (close-on-exec).
pub fn raise_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= INHERIT_FLOOR {
        return Ok(fd);
    }
    let raised = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(INHERIT_FLOOR))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raised) })
}

/// Fill every free descriptor number from 3 up to [`INHERIT_FLOOR`] with `/dev/null`
/// (close-on-exec, kept for the life of the process), so each descriptor opened later is
/// numbered at or above it and [`raise_fd`] has nothing to do: two system calls less per
/// pipe end and per directory a job is given. Run once, before the runtime starts.
pub fn reserve_low_descriptors() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    if null.as_raw_fd() >= INHERIT_FLOOR {
        return Ok(());
    }
    loop {
        // F_DUPFD_CLOEXEC from 3: the lowest free number.
        let copy = null.try_clone()?;
        if copy.as_raw_fd() >= INHERIT_FLOOR {
            break;
        }
        let _kept: RawFd = copy.into_raw_fd();
    }
    let _kept: RawFd = null.into_raw_fd();
    Ok(())
}

/// A memfd holding `bytes`, offset 0, close-on-exec.
pub fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string; the flags are valid.
    let raw = unsafe { libc::memfd_create(c"nox-code".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = raise_fd(unsafe { OwnedFd::from_raw_fd(raw) })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// Open a directory to `fchdir` into.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    raise_fd(fd)
}

/// A job's working directory, opened through its view when it has one (so that `..`
/// from it stops at the view's root), numbered above what a child places.
pub fn open_workdir(
    path: &Path,
    view: Option<&crate::views::View>,
) -> Result<OwnedFd, SandboxError> {
    let opened = match view {
        Some(view) => view
            .open(path, nix::fcntl::OFlag::O_DIRECTORY)
            .and_then(raise_fd),
        None => open_dir(path),
    };
    opened.map_err(|source| SandboxError::OpenDirectory {
        path: path.to_path_buf(),
        source,
    })
}

/// `program` as the kernel takes it.
pub(super) fn fprog(program: &BpfProgram) -> libc::sock_fprog {
    libc::sock_fprog {
        // The filter is refused at compile time if longer than the kernel's 4096.
        #[allow(clippy::cast_possible_truncation)]
        len: program.len() as u16,
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    }
}

/// Start the job described by `plan`: on `spare` when there is one (it is in its cgroup
/// already), else in a child forked now. Blocking: returns once the child has exec'd (or
/// failed to).
pub fn spawn(
    mut plan: ChildPlan<'_>,
    reaper: &Reaper,
    mut spare: Option<Spare>,
    spawners: Option<&Spawners>,
) -> Result<SpawnedJob, SandboxError> {
    let (error_read, error_write) = pipe_high().map_err(SandboxError::Pipe)?;
    // Most jobs get no input: `/dev/null`, open once, reads as EOF at once as a closed pipe
    // would, without a pipe made and closed on both sides for every job.
    let null = if plan.stdin { None } else { dev_null() };
    let (stdin, stdin_read, stdin_write) = match null {
        Some(null) => (null, None, None),
        None => {
            let (read, write) = pipe_high().map_err(SandboxError::Pipe)?;
            (read.as_raw_fd(), Some(read), Some(write))
        }
    };
    let (stdout_read, stdout_write) = pipe_high().map_err(SandboxError::Pipe)?;
    let (stderr_read, stderr_write) = pipe_high().map_err(SandboxError::Pipe)?;
    if plan.inherit.len() > MAX_INHERITED {
        return Err(SandboxError::Pipe(io::Error::other(
            "too many inherited descriptors",
        )));
    }
    let inherit_raw: Vec<RawFd> = plan.inherit.iter().map(AsRawFd::as_raw_fd).collect();
    // A spare has joined its cgroup: that is the job's.
    let cgroup = plan
        .cgroup
        .take()
        .or_else(|| spare.as_mut().and_then(Spare::take_cgroup));
    let argv_ptrs = null_terminated(&plan.argv);
    let envp_ptrs = null_terminated(&plan.envp);
    let direct_paths: Vec<*const libc::c_char> = plan
        .direct
        .iter()
        .flat_map(|direct| direct.paths.iter().map(|path| path.as_ptr()))
        .collect();
    let direct_argv = plan
        .direct
        .as_ref()
        .map(|direct| null_terminated(&direct.argv));
    let direct_envp = plan
        .direct
        .as_ref()
        .map(|direct| null_terminated(&direct.envp));
    let namespaces = plan.view.and_then(|view| view.namespaces);
    // Without a spare, a spawner thread carrying the job's filter clones the child, which
    // inherits the filter instead of loading it (see `spawner`).
    let spawners = spawners.filter(|spawners| {
        spare.is_none() && plan.seccomp.is_some_and(|program| spawners.carry(program))
    });
    let group = Group::default();
    let raw = RawPlan {
        program: plan.program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        workdir: plan.workdir.as_raw_fd(),
        stdin,
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        inherit: &inherit_raw,
        rlimits: &plan.rlimits,
        cgroup_join: cgroup
            .as_ref()
            .map_or(-1, super::cgroup::JobCgroup::join_fd),
        identity: plan.identity,
        keep_capabilities: plan.keep_capabilities,
        landlock: plan.landlock.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        view: plan.view.map_or(-1, |view| view.root.as_raw_fd()),
        view_user: namespaces.map_or(-1, |(user, _)| user.as_raw_fd()),
        view_net: namespaces.map_or(-1, |(_, net)| net.as_raw_fd()),
        seccomp: match spawners {
            Some(_) => None,
            None => plan.seccomp.map(fprog),
        },
        launched: spawners.map(|spawners| Launched {
            group: &group,
            cpus: spawners.cpus(),
        }),
        take_back: match spawners {
            Some(_) => None,
            None => super::cpus::to_take_back(),
        },
        error_fd: error_write.as_raw_fd(),
        dispositions: plan.dispositions,
        direct_paths: &direct_paths,
        direct_argv: direct_argv
            .as_ref()
            .map_or(std::ptr::null(), |argv| argv.as_ptr()),
        direct_envp: direct_envp
            .as_ref()
            .map_or(std::ptr::null(), |envp| envp.as_ptr()),
    };

    let started = Instant::now();
    let mut on_spare = None;
    if let Some(spare) = spare {
        match spare.start(&raw) {
            Ok(started) => on_spare = Some(started),
            // It died since it was checked: fork as usual, into the cgroup it left.
            Err(error) => tracing::warn!(%error, "a spare process could not take a job"),
        }
    }
    let (pid, exit, spare_memory) = match on_spare {
        Some((pid, exit, memory)) => (pid, exit, Some(memory)),
        None => {
            let ticket = reaper.begin_spawn();
            // The child's own stack: it shares our memory (CLONE_VM) until it execs, and
            // this thread waits until then — suspended by the clone (CLONE_VFORK), or on
            // the setup pipe below for a spawner's child — so the stack is free again once
            // the pipe says so. Kept per thread: a fresh one per job cost a 256 KiB memset.
            let pid = CHILD_STACKS.with(|stack| {
                let stack = &mut stack.borrow_mut();
                match spawners {
                    // SAFETY: the child reads only `raw`, which lives in this frame, and
                    // runs on this thread's stack, which is not used again until the child
                    // has exec'd or exited (the setup pipe below says when).
                    Some(spawners) => unsafe {
                        spawners.clone_child(
                            raw_child_main,
                            std::ptr::from_ref(&raw).cast_mut().cast(),
                            stack,
                        )
                    },
                    None => clone_vfork(&raw, stack),
                }
            });
            if pid < 0 {
                return Err(SandboxError::Fork(io::Error::last_os_error()));
            }
            // `pid` is still our child's even if it has died already: the reaper holds an
            // unknown exited pid back while a spawn's ticket is in flight (see `reaper`).
            if spawners.is_some() {
                group.lead(pid);
            }
            (pid, ticket.watch(pid), None)
        }
    };

    // The child's ends belong to the child now; closing ours lets EOF and EPIPE work.
    drop((error_write, stdin_read, stdout_write, stderr_write));
    drop((plan.inherit, plan.workdir, plan.landlock));
    let report = read_setup_error(error_read);
    match (&report, spare_memory) {
        // EOF: the spare has exec'd or exited and runs on its stack no more.
        (Ok(_), Some(memory)) => drop(memory),
        // Whether it still does is unknown: its memory must stay.
        (Err(_), Some(memory)) => std::mem::forget(memory),
        // So must a spawner's child's stack: this thread's next child gets a new one.
        (Err(_), None) if spawners.is_some() => CHILD_STACKS.with(|stack| {
            std::mem::forget(std::mem::replace(
                &mut *stack.borrow_mut(),
                vec![0u8; CHILD_STACK],
            ));
        }),
        (_, None) => {}
    }
    match report {
        Ok(None) => Ok(SpawnedJob {
            pid,
            stdin: stdin_write,
            stdout: stdout_read,
            stderr: stderr_read,
            exit,
            started,
            zygote: None,
            cgroup,
        }),
        Ok(Some((step, errno))) => Err(SandboxError::ChildSetup {
            step,
            source: io::Error::from_raw_os_error(errno),
        }),
        Err(error) => Err(SandboxError::Pipe(error)),
    }
}

/// Stack of the child between clone and exec.
pub(super) const CHILD_STACK: usize = 256 * 1024;

thread_local! {
    /// The stack children cloned on this thread run on until they exec.
    static CHILD_STACKS: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHILD_STACK]);
}

/// Start the child as posix_spawn does: `clone(CLONE_VM | CLONE_VFORK)` on its own stack,
/// so no page table is copied and no copy-on-write fault or TLB shootdown hits the
/// executor's threads; this thread is suspended until the child execs or exits. Returns
/// the child's pid, or -1 with errno set.
fn clone_vfork(plan: &RawPlan<'_>, stack: &mut [u8]) -> libc::pid_t {
    // SAFETY: `raw_child_main` reads only `plan`, which lives in this frame until the
    // child has exec'd or exited (CLONE_VFORK suspends us until then).
    unsafe {
        clone_on(
            raw_child_main,
            stack,
            libc::CLONE_VM | libc::CLONE_VFORK,
            std::ptr::from_ref(plan).cast_mut().cast(),
        )
    }
}

/// [`child_main`] as `clone` runs it: `arg` is the child's `&RawPlan`.
pub(super) extern "C" fn raw_child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: whoever cloned us passed a `&RawPlan` that stays valid until we exec or exit
    // (`clone_vfork`, `Spawners::clone_child`).
    let plan = unsafe { &*arg.cast::<RawPlan<'_>>() };
    // SAFETY: we are the new child, sharing the parent's memory; child_main only makes
    // system calls on prepared data and writes only to this stack.
    unsafe { child_main(plan) }
}

/// `clone(flags | SIGCHLD)` running `child(arg)` on `stack`, with every signal blocked in
/// this thread across the clone, so no handler of the executor ever runs on the child's
/// stack in shared memory (the child inherits the full mask). Returns the child's pid, or
/// -1 with errno set.
///
/// # Safety
///
/// `child` must only do what a child sharing our memory may (see [`child_main`]), and
/// `arg` and `stack` must stay valid for as long as it uses them.
pub(super) unsafe fn clone_on(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [u8],
    flags: libc::c_int,
    arg: *mut libc::c_void,
) -> libc::pid_t {
    // The stack grows down from its (16-byte aligned) top.
    let top = stack.as_mut_ptr().wrapping_add(stack.len());
    let top = top.wrapping_sub(top as usize % 16).cast::<libc::c_void>();
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let (mut all, mut previous): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: the mask is restored right after the clone; the clone arguments are a valid
    // function, the top of a live stack and the caller's `arg`.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(child, top, flags | libc::SIGCHLD, arg);
        let errno = *libc::__errno_location();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        *libc::__errno_location() = errno;
        pid
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Read the child's setup report: `None` if it exec'd, `(step, errno)` if a step failed.
fn read_setup_error(pipe: OwnedFd) -> io::Result<Option<(Step, i32)>> {
    let mut file = std::fs::File::from(pipe);
    let mut buffer = [0u8; 8];
    let mut filled = 0;
    while filled < buffer.len() {
        match io::Read::read(&mut file, &mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    let step = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    let errno = i32::from_le_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]);
    Ok(Some((Step::from_code(step), errno)))
}

/// The prepared plan in raw form: only plain values and pointers, readable after fork.
#[derive(Clone, Copy)]
pub(super) struct RawPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pub(super) workdir: RawFd,
    pub(super) stdin: RawFd,
    pub(super) stdout: RawFd,
    pub(super) stderr: RawFd,
    /// Placed on 3, 4, ...; every one is numbered [`INHERIT_FLOOR`] or above, so placing
    /// one never overwrites another still to be placed.
    pub(super) inherit: &'a [RawFd],
    rlimits: &'a [(RlimitResource, libc::rlimit)],
    /// The file that joins the job's pids cgroup (`JobCgroup::join_fd`), or -1.
    pub(super) cgroup_join: RawFd,
    identity: Option<(u32, u32)>,
    keep_capabilities: u32,
    pub(super) landlock: RawFd,
    /// The view's root, or -1.
    pub(super) view: RawFd,
    /// The views' user namespace and the view's network namespace, or -1 (both or
    /// neither, but a spare has entered the user namespace already).
    pub(super) view_user: RawFd,
    pub(super) view_net: RawFd,
    /// `None` when the child has it already (a spare loads it while it waits, a spawner's
    /// child inherits it).
    pub(super) seccomp: Option<libc::sock_fprog>,
    /// Set for a child of a spawner thread.
    pub(super) launched: Option<Launched<'a>>,
    /// For a child cloned by a runtime worker kept on one CPU: every CPU the executor may
    /// use (see `cpus`).
    take_back: Option<&'a libc::cpu_set_t>,
    pub(super) error_fd: RawFd,
    dispositions: &'a Dispositions,
    /// Paths tried with `direct_argv` and `direct_envp` before `program` (empty: none).
    direct_paths: &'a [*const libc::c_char],
    direct_argv: *const *const libc::c_char,
    direct_envp: *const *const libc::c_char,
}

/// What a child of a spawner thread (see `spawner`) does differently.
#[derive(Clone, Copy)]
pub(super) struct Launched<'a> {
    /// The executor makes the child its group's leader; the child waits for it before its
    /// exec.
    group: &'a Group,
    /// The CPUs it takes back from its spawner's one.
    cpus: &'a libc::cpu_set_t,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Report a failed step on `error_fd` as `(step, errno)` and exit 127.
///
/// # Safety
///
/// Only in a child between fork and exec (async-signal-safe calls only).
pub(super) unsafe fn fail(error_fd: RawFd, step: Step) -> ! {
    // SAFETY: errno is thread-local and readable at any time.
    let errno = unsafe { *libc::__errno_location() };
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(step as u32).to_le_bytes());
    report[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writing 8 bytes from a stack buffer to a descriptor we own; then _exit,
    // which is async-signal-safe and skips atexit handlers and stdio flushing.
    unsafe {
        libc::write(error_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// The signals whose disposition in this process is not the default: those a child sets
/// back to default before it unblocks signals. The executor's handlers must never run in
/// a child, in its memory; and Rust ignores SIGPIPE, which would survive exec and break
/// `yes | head`. Found once, when the sandbox is built, rather than by setting all 62 in
/// every child (~40 µs of each start here). With the kernel's call, not glibc's, which
/// hides its own two (32 and 33: the executor ignores 32, which jobs used to inherit).
///
/// INVARIANT: the executor installs every handler and ignores every signal it will before
/// it builds its sandbox (its `main` does so before `run`; Rust's runtime before `main`).
/// One installed later would not be reset in a child, where it could run between the
/// unblocking and the exec (which resets it).
#[derive(Debug, Clone, Copy)]
pub struct Dispositions {
    signals: [libc::c_int; 64],
    count: usize,
}

impl Dispositions {
    /// This process's signals with a handler or ignored, now.
    pub fn of_this_process() -> Dispositions {
        let mut found = Dispositions {
            signals: [0; 64],
            count: 0,
        };
        for signal in 1..libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction::default();
            // SAFETY: a query (no new action) into `old`, of the kernel's layout and size.
            let handled = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    std::ptr::null::<KernelSigaction>(),
                    &raw mut old,
                    SIGSET_BYTES,
                ) == 0
            } && old.handler != libc::SIG_DFL;
            if handled && found.count < found.signals.len() {
                found.signals[found.count] = signal;
                found.count += 1;
            }
        }
        found
    }

    /// The signals found.
    pub fn signals(&self) -> &[libc::c_int] {
        &self.signals[..self.count]
    }

    /// Set each of them back to its default.
    ///
    /// # Safety
    ///
    /// Only in a child between fork and exec.
    pub(super) unsafe fn reset(&self) {
        let default = KernelSigaction::default();
        for &signal in self.signals() {
            // SAFETY: SIG_DFL for a valid signal number, no handler involved; `default`
            // has the kernel's layout and size.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    &raw const default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    SIGSET_BYTES,
                )
            };
        }
    }
}

/// The kernel's `struct sigaction` (x86-64 and arm64 layout); all zero is `SIG_DFL`.
#[derive(Debug, Default)]
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The kernel's signal set size, which `rt_sigaction` requires.
const SIGSET_BYTES: usize = 8;

/// An empty signal mask (the parent blocked every signal across the clone). False if the
/// kernel refused.
///
/// # Safety
///
/// Only in a child between fork and exec.
pub(super) unsafe fn unblock_signals() -> bool {
    // SAFETY: sigset_t is plain data, emptied before use; the mask is this thread's.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) == 0
    }
}

/// The child between fork and exec. Never returns.
///
/// # Safety
///
/// Must be called only in a child just created by `fork`, with `plan` pointing at memory
/// valid in that child. Only async-signal-safe calls are made (signal-safety(7) plus raw
/// system calls that take no locks in user space).
unsafe fn child_main(plan: &RawPlan<'_>) -> ! {
    // SAFETY: plain system calls on descriptors this child owns, in the order the
    // INVARIANT in the module docs gives.
    unsafe {
        plan.dispositions.reset();
        if !unblock_signals() {
            fail(plan.error_fd, Step::Signals);
        }
        match plan.launched {
            None => {
                if libc::setpgid(0, 0) != 0 {
                    fail(plan.error_fd, Step::ProcessGroup);
                }
                if let Some(cpus) = plan.take_back
                    && libc::sched_setaffinity(0, std::mem::size_of_val(cpus), cpus) != 0
                {
                    fail(plan.error_fd, Step::Cpus);
                }
            }
            // A spawner's child: its filter came with the clone (it must never run without
            // one), its process group comes from the executor (see `spawner`), and it
            // runs on every CPU the executor may use, not only its spawner's.
            Some(launched) => {
                if libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) != 2 {
                    fail(plan.error_fd, Step::Seccomp);
                }
                if libc::sched_setaffinity(0, std::mem::size_of_val(launched.cpus), launched.cpus)
                    != 0
                {
                    fail(plan.error_fd, Step::Cpus);
                }
            }
        }
        // Into the job's pids cgroup ("0": this process) while still the only process.
        if plan.cgroup_join >= 0 && libc::write(plan.cgroup_join, c"0".as_ptr().cast(), 1) != 1 {
            fail(plan.error_fd, Step::Cgroup);
        }
        enter_job(plan)
    }
}

/// The steps from stdio to exec, in a child that has its signals, process group and
/// cgroup: a freshly forked child, or a spare given its job. Never returns.
///
/// # Safety
///
/// As for [`child_main`]; `plan`'s descriptors are this child's.
pub(super) unsafe fn enter_job(plan: &RawPlan<'_>) -> ! {
    let fail = |step: Step| -> ! {
        // SAFETY: we are the child, between fork and exec.
        unsafe { fail(plan.error_fd, step) }
    };

    // SAFETY: plain system calls on descriptors and memory this child owns, in the order
    // the INVARIANT in the module docs gives; every pointer passed points into `plan` or
    // into this stack frame, both valid until exec.
    unsafe {
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.stdout, 1) < 0
            || libc::dup2(plan.stderr, 2) < 0
        {
            fail(Step::Stdio);
        }
        let mut target: libc::c_int = 3;
        for fd in plan.inherit {
            if libc::dup2(*fd, target) < 0 {
                fail(Step::Stdio);
            }
            target += 1;
        }
        // `target` is at most 3 + MAX_INHERITED, a small positive number.
        #[allow(clippy::cast_sign_loss)]
        let first_closed = target as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            first_closed,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(Step::CloseDescriptors);
        }
        for (resource, limit) in plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(Step::Rlimits);
            }
        }
        // The view: its user namespace (root owns it, so root may enter it and has every
        // capability there), the network namespace it owns, then its root — every path
        // the job names resolves in it from here on, and `..` stops at it (the working
        // directory below is opened through it). A chrooted process may not enter a user
        // namespace: the namespaces come first.
        // (A spare entered the user namespace while it waited: -1 here.)
        if plan.view_user >= 0
            && libc::syscall(libc::SYS_setns, plan.view_user, libc::CLONE_NEWUSER) != 0
        {
            fail(Step::View);
        }
        if plan.view_net >= 0
            && libc::syscall(libc::SYS_setns, plan.view_net, libc::CLONE_NEWNET) != 0
        {
            fail(Step::View);
        }
        if plan.view >= 0 && (libc::fchdir(plan.view) != 0 || libc::chroot(c".".as_ptr()) != 0) {
            fail(Step::View);
        }
        // Raw system calls, not libc's wrappers: glibc's set*id wrappers apply the change
        // to every thread of the process, and in this CLONE_VM child its thread list is
        // the executor's.
        let keep = plan.keep_capabilities;
        if let Some((uid, gid)) = plan.identity {
            if keep != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(Step::Uid);
            }
            if libc::syscall(libc::SYS_setgroups, 1, &gid) != 0 {
                fail(Step::Groups);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(Step::Gid);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(Step::Uid);
            }
        }
        if libc::fchdir(plan.workdir) != 0 {
            fail(Step::WorkingDirectory);
        }
        // No capabilities in any set (but `keep`, for the zygote). Leaving root already
        // emptied permitted and effective; ambient and inheritable are cleared explicitly
        // (they survive a non-root setuid).
        let ambient = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep,
                permitted: keep,
                inheritable: keep,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        if (ambient != 0 && *libc::__errno_location() != libc::EINVAL)
            || libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0
        {
            fail(Step::Capabilities);
        }
        for capability in 0..32u32 {
            if keep & (1 << capability) != 0
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    libc::c_ulong::from(capability),
                    0,
                    0,
                ) != 0
            {
                fail(Step::Capabilities);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(Step::NoNewPrivs);
        }
        if plan.landlock >= 0
            && libc::syscall(libc::SYS_landlock_restrict_self, plan.landlock, 0) != 0
        {
            fail(Step::Landlock);
        }
        if let Some(program) = &plan.seccomp
            && libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                std::ptr::from_ref(program),
            ) != 0
        {
            fail(Step::Seccomp);
        }
        // A spawner's child leads its own process group before anything of the job runs.
        if let Some(launched) = plan.launched
            && let Err(errno) = launched.group.wait()
        {
            *libc::__errno_location() = errno;
            fail(Step::ProcessGroup);
        }
        // A plain shell command: its program, found as the shell would; a path that does
        // not exec leaves this process as it was, and the shell runs the command after all.
        for path in plan.direct_paths {
            libc::execve(*path, plan.direct_argv, plan.direct_envp);
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(Step::Exec)
    }
}
