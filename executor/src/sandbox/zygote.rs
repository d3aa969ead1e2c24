//! The warm Python path: a zygote interpreter (`zygote.py`) that forks one process per job.
//!
//! The zygote is started through the ordinary spawn path — sandbox uid, no capabilities but
//! CAP_SETUID, CAP_SETGID and CAP_KILL (as root: it gives each job its workspace's uid and
//! kills job groups; and CAP_SYS_CHROOT with views, to put each job in its workspace's), `no_new_privs`, clean environment, own process group — without
//! Landlock and seccomp,
//! which each job's process applies for itself after the fork (the Landlock ruleset of its
//! workspace arrives as a descriptor with the job; the seccomp program is the executor's
//! own compiled filter, handed to the zygote once at start). Job code never runs in the
//! zygote. Messages are JSON on a `SOCK_SEQPACKET` socket, job descriptors travel with
//! `SCM_RIGHTS`. If the zygote dies, waiting jobs fail, their processes are killed, and the
//! next Python job starts a new zygote.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, socketpair,
};
use nox_protocol::ResourceUsage;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::cgroup::JobCgroup;
use super::reaper::ExitReport;
use super::spawn::{self, ChildPlan, RlimitResource, SpawnedJob};
use super::{Sandbox, SandboxError};

/// The zygote's program, run with `python3 -I -u -c`.
const ZYGOTE_SOURCE: &str = include_str!("zygote.py");
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Capability numbers (linux/capability.h).
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_CHROOT: u32 = 18;

/// A Python job for the zygote.
#[derive(Debug)]
pub struct WarmPython<'a> {
    /// Path shown as the script's (`__file__`, tracebacks).
    pub display: &'a str,
    /// `sys.argv[0]`, the name the client gave.
    pub filename: &'a str,
    pub code: &'a [u8],
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    pub limits: &'a nox_protocol::Limits,
    /// The workspace's owner, whom the job runs as (see `crate::owners`).
    pub user: Option<(u32, u32)>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Message {
    Ready {
        #[allow(dead_code)]
        pid: i32,
    },
    Started {
        id: u64,
        pid: i32,
    },
    /// The job was handed to the spare in the reserved cgroup: it runs there, and the
    /// cgroup sent with it is the reservation now. Sent at the hand-off, before any later
    /// job's.
    Reserved {
        id: u64,
    },
    /// The reservation is no longer joined or held by the zygote.
    Lost,
    Failed {
        id: u64,
        step: String,
        errno: i32,
    },
    Exit {
        pid: i32,
        status: i32,
        user_ms: u64,
        system_ms: u64,
        max_rss_kib: u64,
    },
}

/// A started job: its pid, its exit report and the cgroup it is in.
type StartReply = Result<(i32, oneshot::Receiver<ExitReport>, Option<JobCgroup>), (String, i32)>;

/// A job sent to the zygote and not yet started.
#[derive(Debug)]
struct Waiting {
    reply: mpsc::Sender<StartReply>,
    /// The cgroup the job is in: the one sent with it, or the reservation it took.
    cgroup: Option<JobCgroup>,
    /// It took the reservation.
    reserved: bool,
}

#[derive(Debug, Default)]
struct Pending {
    starts: HashMap<u64, Waiting>,
    exits: HashMap<i32, oneshot::Sender<ExitReport>>,
    /// The cgroup the zygote keeps for its spare to join before a job exists (see
    /// zygote.py): it holds `Zygote::reserved_limit` processes, as does the job cgroup that
    /// replaces it when a job takes it. Changed only by the reader thread, in the order of
    /// the zygote's messages, and by `reserve` while there is none.
    reservation: Option<JobCgroup>,
}

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    pid: i32,
    control: OwnedFd,
    send_lock: Mutex<()>,
    pending: Arc<Mutex<Pending>>,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    /// The process limit of a reserved cgroup: only jobs with that limit may take one.
    reserved_limit: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Zygote {
    /// Start a zygote with `sandbox`'s identity, in `workdir` (a directory the sandbox user
    /// can enter; the zygote writes nothing there). Jobs limited to `reserved_limit`
    /// processes may run in a reserved cgroup ([`Zygote::reserve`]).
    pub fn start(
        sandbox: &Sandbox,
        python: &Path,
        workdir: &Path,
        seccomp: &[seccompiler::sock_filter],
        reserved_limit: u64,
    ) -> Result<Zygote, SandboxError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| SandboxError::Pipe(errno.into()))?;
        let program: Vec<u8> = seccomp
            .iter()
            .flat_map(|instruction| {
                let mut bytes = [0u8; 8];
                bytes[..2].copy_from_slice(&instruction.code.to_ne_bytes());
                bytes[2] = instruction.jt;
                bytes[3] = instruction.jf;
                bytes[4..].copy_from_slice(&instruction.k.to_ne_bytes());
                bytes
            })
            .collect();
        let program = spawn::memfd_with(&program).map_err(SandboxError::Pipe)?;
        let theirs = spawn::raise_fd(theirs).map_err(SandboxError::Pipe)?;
        let command = spawn::JobCommand {
            program: python.to_path_buf(),
            args: vec![
                "-I".into(),
                "-u".into(),
                "-c".into(),
                ZYGOTE_SOURCE.into(),
                libc::SYS_landlock_restrict_self.to_string(),
                libc::SYS_seccomp.to_string(),
                libc::SYS_capset.to_string(),
                libc::SYS_setns.to_string(),
            ],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            workdir: workdir.to_path_buf(),
            code: None,
            limits: nox_protocol::Limits::default(),
            direct: None,
            stdin: false,
        };
        let (program_path, argv, envp) = spawn::command_strings(&command)?;
        let workdir_fd =
            spawn::open_dir(workdir).map_err(|source| SandboxError::OpenDirectory {
                path: workdir.to_path_buf(),
                source,
            })?;
        let plan = ChildPlan {
            program: program_path,
            argv,
            envp,
            workdir: workdir_fd,
            inherit: vec![theirs, program],
            // The zygote itself only forks: generous limits; each job lowers its own.
            rlimits: vec![
                (libc::RLIMIT_CORE, spawn::both(0)),
                (libc::RLIMIT_NOFILE, spawn::both(1024)),
            ],
            cgroup: None,
            identity: sandbox.identity.switch_to,
            // To give each job its workspace's uid, and to kill job groups of those uids;
            // with views, to put each job in its workspace's.
            keep_capabilities: match (sandbox.identity.switch_to, &sandbox.views) {
                (Some(_), Ok(_)) => {
                    1 << CAP_SETUID | 1 << CAP_SETGID | 1 << CAP_KILL | 1 << CAP_SYS_CHROOT
                }
                (Some(_), Err(_)) => 1 << CAP_SETUID | 1 << CAP_SETGID | 1 << CAP_KILL,
                (None, _) => 0,
            },
            landlock: None,
            view: None,
            seccomp: None,
            dispositions: &sandbox.dispositions,
            direct: None,
            stdin: false,
        };
        let spawned = spawn::spawn(plan, &sandbox.reaper, None, None)?;
        let pid = spawned.pid;
        forward_diagnostics(spawned);

        let zygote = Zygote {
            pid,
            control: ours,
            send_lock: Mutex::new(()),
            pending: Arc::new(Mutex::new(Pending::default())),
            alive: Arc::new(AtomicBool::new(true)),
            next_id: AtomicU64::new(1),
            reserved_limit,
        };
        let ready = zygote.receive_ready();
        if let Err(error) = ready {
            sandbox.reaper.kill_group(pid);
            return Err(error);
        }
        let control = zygote.control.try_clone().map_err(SandboxError::Pipe)?;
        let (pending, alive) = (Arc::clone(&zygote.pending), Arc::clone(&zygote.alive));
        std::thread::Builder::new()
            .name("nox-zygote".into())
            .spawn(move || read_messages(&control, &pending, &alive))
            .map_err(SandboxError::Pipe)?;
        tracing::info!(pid, "python zygote ready");
        Ok(zygote)
    }

    fn receive_ready(&self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + START_TIMEOUT;
        set_receive_timeout(&self.control, Some(START_TIMEOUT))?;
        let message = receive(&self.control);
        set_receive_timeout(&self.control, None)?;
        match message {
            Ok(Some(Message::Ready { .. })) if Instant::now() <= deadline => Ok(()),
            Ok(_) => Err(SandboxError::Zygote("did not announce itself".into())),
            Err(error) => Err(SandboxError::Zygote(format!("did not start: {error}"))),
        }
    }

    /// Whether the zygote holds no reservation (none given yet, or it was lost).
    pub fn wants_reservation(&self) -> bool {
        lock(&self.pending).reservation.is_none()
    }

    /// Give the zygote `cgroup` (holding `reserved_limit` processes) for its spare to join
    /// ahead of a job.
    pub fn reserve(&self, cgroup: JobCgroup) -> Result<(), SandboxError> {
        let mut table = lock(&self.pending);
        if table.reservation.is_some() {
            return Ok(());
        }
        let message = json!({"op": "reserve"}).to_string();
        self.send(message.as_bytes(), &[cgroup.join_fd()])?;
        table.reservation = Some(cgroup);
        Ok(())
    }

    /// Whether the zygote is still serving.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Start one job in a fresh process forked from the zygote. Blocking.
    pub fn spawn(
        self: &Arc<Self>,
        job: &WarmPython<'_>,
        user: Option<(u32, u32)>,
        landlock: Option<std::sync::Arc<OwnedFd>>,
        view: Option<&crate::views::View>,
        cgroup: Option<super::cgroup::JobCgroup>,
        nproc: u64,
    ) -> Result<SpawnedJob, SandboxError> {
        let (stdin_read, stdin_write) = spawn::pipe_high().map_err(SandboxError::Pipe)?;
        let (stdout_read, stdout_write) = spawn::pipe_high().map_err(SandboxError::Pipe)?;
        let (stderr_read, stderr_write) = spawn::pipe_high().map_err(SandboxError::Pipe)?;
        let workdir = spawn::open_workdir(job.workdir, view)?;
        let code = spawn::memfd_with(job.code).map_err(SandboxError::Pipe)?;
        let rlimits: Vec<[u64; 3]> = spawn::rlimits_for(job.limits, nproc)
            .into_iter()
            .map(|(resource, limit)| [resource_number(resource), limit.rlim_cur, limit.rlim_max])
            .collect();
        let env: serde_json::Map<String, serde_json::Value> = job
            .env
            .iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect();
        // What the child enters: the view's root and, when it has them, its namespaces.
        let entered = view.map(crate::views::View::fds);
        // The details go in a memfd that only the job's process reads: the zygote never
        // holds them, so no later fork can find them in its memory.
        let extra: Vec<&str> = [
            landlock.as_ref().map(|_| "landlock"),
            view.map(|_| "view"),
            entered.and_then(|fds| fds.namespaces).map(|_| "userns"),
            entered.and_then(|fds| fds.namespaces).map(|_| "netns"),
            cgroup.as_ref().map(|_| "cgroup"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let details = json!({
            "display": job.display,
            "filename": job.filename,
            "env": env,
            "rlimits": rlimits,
            "user": user,
            "extra": extra,
        });
        let details =
            spawn::memfd_with(details.to_string().as_bytes()).map_err(SandboxError::Pipe)?;
        let mut fds: Vec<RawFd> = vec![
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
            workdir.as_raw_fd(),
            code.as_raw_fd(),
            details.as_raw_fd(),
        ];
        // Optional descriptors follow the six, named in the details' "extra" in order.
        if let Some(ruleset) = &landlock {
            fds.push(ruleset.as_raw_fd());
        }
        if let Some(entered) = entered {
            fds.push(entered.root.as_raw_fd());
            if let Some((user, net)) = entered.namespaces {
                fds.extend([user.as_raw_fd(), net.as_raw_fd()]);
            }
        }
        if let Some(cgroup) = &cgroup {
            fds.push(cgroup.join_fd());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = match &cgroup {
            Some(_) => json!({
                "op": "run",
                "id": id,
                "cgroup": fds.len() - 1,
                "reserve": job.limits.max_processes == self.reserved_limit,
            }),
            None => json!({"op": "run", "id": id}),
        };
        let (reply_sender, reply) = mpsc::channel();
        lock(&self.pending).starts.insert(
            id,
            Waiting {
                reply: reply_sender,
                cgroup,
                reserved: false,
            },
        );
        let started = Instant::now();
        if let Err(error) = self.send(message.to_string().as_bytes(), &fds) {
            lock(&self.pending).starts.remove(&id);
            return Err(error);
        }
        // The zygote holds its own copies now; ours of the child's ends must go, or the
        // job's stdout would never reach EOF.
        drop((
            stdin_read,
            stdout_write,
            stderr_write,
            workdir,
            code,
            landlock,
        ));
        match reply.recv_timeout(START_TIMEOUT) {
            Ok(Ok((pid, exit, cgroup))) => Ok(SpawnedJob {
                pid,
                stdin: Some(stdin_write),
                stdout: stdout_read,
                stderr: stderr_read,
                exit,
                started,
                zygote: Some(Arc::clone(self)),
                cgroup,
            }),
            Ok(Err((step, errno))) => Err(SandboxError::ZygoteSetup {
                step,
                source: io::Error::from_raw_os_error(errno),
            }),
            Err(_) => {
                let gone = lock(&self.pending).starts.remove(&id);
                // A zygote that does not answer is not trusted with cgroups any more: the
                // one sent with this job may be its reservation by now. Stopped (its spare
                // dies with it), the next Python job starts a new one.
                super::kill_process_group(self.pid);
                drop(gone);
                Err(SandboxError::Zygote("did not start the job in time".into()))
            }
        }
    }

    /// Kill the process group of a job this zygote started and has not reaped yet.
    pub fn kill(&self, pid: i32) {
        if !self.alive() {
            // Its children were re-parented to the executor: kill the group directly.
            super::kill_process_group(pid);
            return;
        }
        let message = json!({"op": "kill", "pid": pid}).to_string();
        if self.send(message.as_bytes(), &[]).is_err() {
            super::kill_process_group(pid);
        }
    }

    fn send(&self, payload: &[u8], fds: &[RawFd]) -> Result<(), SandboxError> {
        let _serialised = lock(&self.send_lock);
        let rights = [ControlMessage::ScmRights(fds)];
        let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(payload)],
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(|errno| SandboxError::Zygote(format!("cannot reach the zygote: {errno}")))
    }
}

fn resource_number(resource: RlimitResource) -> u64 {
    u64::from(resource)
}

fn set_receive_timeout(socket: &OwnedFd, timeout: Option<Duration>) -> Result<(), SandboxError> {
    let value = timeout.map_or(nix::sys::time::TimeVal::new(0, 0), |duration| {
        nix::sys::time::TimeVal::new(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX), 0)
    });
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimeout, &value)
        .map_err(|errno| SandboxError::Pipe(errno.into()))
}

/// One message, `None` at end of stream.
fn receive(socket: &OwnedFd) -> io::Result<Option<Message>> {
    let mut buffer = vec![0u8; 64 * 1024];
    let n = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&buffer[..n])
        .map(Some)
        .map_err(io::Error::other)
}

fn read_messages(socket: &OwnedFd, pending: &Mutex<Pending>, alive: &AtomicBool) {
    loop {
        match receive(socket) {
            Ok(Some(Message::Reserved { id })) => {
                let mut table = lock(pending);
                let table = &mut *table;
                match table.starts.get_mut(&id) {
                    Some(waiting) => {
                        std::mem::swap(&mut waiting.cgroup, &mut table.reservation);
                        waiting.reserved = true;
                    }
                    // Nobody waits (timed out; the zygote is being stopped).
                    None => table.reservation = None,
                }
            }
            Ok(Some(Message::Started { id, pid })) => {
                let (exit_sender, exit) = oneshot::channel();
                let mut table = lock(pending);
                table.exits.insert(pid, exit_sender);
                let Some(waiting) = table.starts.remove(&id) else {
                    // Nobody waits (timed out; the zygote is being stopped): kill it.
                    table.exits.remove(&pid);
                    super::kill_process_group(pid);
                    continue;
                };
                if waiting.reserved && waiting.cgroup.is_none() {
                    // Never: a job that took a reservation there was not would run without
                    // a cgroup. Fail it closed.
                    table.exits.remove(&pid);
                    super::kill_process_group(pid);
                    let _ = waiting
                        .reply
                        .send(Err(("use the reserved pids cgroup".into(), 0)));
                    continue;
                }
                if let Err(mpsc::SendError(Ok((_, _, cgroup)))) =
                    waiting.reply.send(Ok((pid, exit, waiting.cgroup)))
                {
                    // Nobody waits for this job any more: kill it.
                    table.exits.remove(&pid);
                    super::kill_process_group(pid);
                    drop(table);
                    drop(cgroup);
                }
            }
            Ok(Some(Message::Lost)) => {
                let lost = lock(pending).reservation.take();
                drop(lost);
            }
            Ok(Some(Message::Failed { id, step, errno })) => {
                let waiting = lock(pending).starts.remove(&id);
                if let Some(waiting) = waiting {
                    // Its cgroup is emptied and pooled (or removed) once the failed
                    // process is gone.
                    let _ = waiting.reply.send(Err((step, errno)));
                }
            }
            Ok(Some(Message::Exit {
                pid,
                status,
                user_ms,
                system_ms,
                max_rss_kib,
            })) => {
                if let Some(waiter) = lock(pending).exits.remove(&pid) {
                    let _ = waiter.send(ExitReport {
                        status,
                        usage: ResourceUsage {
                            user_ms,
                            system_ms,
                            max_rss_kib,
                        },
                        at: Instant::now(),
                    });
                }
            }
            Ok(Some(Message::Ready { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    alive.store(false, Ordering::Release);
    let mut table = lock(pending);
    for pid in table.exits.keys() {
        super::kill_process_group(*pid);
    }
    table.exits.clear();
    table.starts.clear();
    table.reservation = None;
    tracing::warn!("python zygote exited; the next Python job starts a new one");
}

/// Log what the zygote writes on its own stdout and stderr (only a crash would).
fn forward_diagnostics(spawned: SpawnedJob) {
    let SpawnedJob {
        stdin,
        stdout,
        stderr,
        ..
    } = spawned;
    drop(stdin);
    for (stream, fd) in [("stdout", stdout), ("stderr", stderr)] {
        let _ = std::thread::Builder::new()
            .name("nox-zygote-log".into())
            .spawn(move || {
                use std::io::BufRead;
                let reader = io::BufReader::new(std::fs::File::from(fd));
                for line in reader.lines().map_while(Result::ok) {
                    tracing::warn!(stream, line = %line, "python zygote output");
                }
            });
    }
}
