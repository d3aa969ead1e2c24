//! One job end to end: validation (the frontend is not trusted), admission (a concurrency
//! limit and a bounded queue), limits clamped to the ceilings, the workspace prepared, the
//! sandbox applied, output streamed back with a cap, a wall-clock timeout that kills the
//! whole process group, one structured log record, cleanup.
//!
//! Python jobs: the code is saved in the workspace as `filename` (as the seed application
//! did, so the file is there afterwards), but the interpreter runs the job's own copy,
//! passed on descriptor 3 — two concurrent jobs that both write `run.py` each run their own
//! code. A short bootstrap compiles it under the workspace file's name, so tracebacks,
//! `__file__`, `sys.argv[0]` and `sys.path[0]` look as they would for `python3 run.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nox_protocol::{
    ErrorKind, ExecutorStatus, ExitStatus, JobOutcome, JobSpec, JobStarted, LimitHit, Limits,
    OutputChunk, Program, RelPath, Reply, ResourceUsage, Stream, WireError,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{ExecutorConfig, PythonMode};
use crate::sandbox::reaper::ExitReport;
use crate::sandbox::spawn::{self, JobCommand, SpawnedJob};
use crate::sandbox::zygote::WarmPython;
use crate::sandbox::{JobIdentity, Sandbox, SandboxError};
use crate::scratch::{Scratch, Scratches, Untouched};
use crate::views::ViewLease;
use crate::workspace::{WorkspaceError, Workspaces};
use nox_protocol::error_chain;

/// Runs `-c` before the job's code; see the module docs. Argument 1 is the path shown as
/// the script's, argument 2 the name the client gave; the source is on descriptor 3.
const PYTHON_BOOTSTRAP: &str = r#"def _nox_main():
    import linecache, os, sys
    path, name = sys.argv[1], sys.argv[2]
    with open(3, "rb") as f:
        source = f.read()
    lines = source.decode("utf-8", "replace").splitlines(True)
    linecache.cache[path] = (len(source), None, lines, path)
    code = compile(source, path, "exec", dont_inherit=True)
    sys.argv[:] = [name]
    sys.path.insert(0, os.path.dirname(path))
    import __main__
    g = __main__.__dict__
    del g["_nox_main"]
    g["__file__"] = path
    g["__cached__"] = None
    try:
        exec(code, g)
    except SystemExit:
        raise
    except BaseException as e:
        e = e.with_traceback(e.__traceback__.tb_next)
        if sys.excepthook is sys.__excepthook__:
            # Python's own hook reads source lines back from the file, which another job
            # may have rewritten since: print them from this job's source (linecache).
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__)
        else:
            sys.excepthook(type(e), e, e.__traceback__)
        sys.exit(1)
_nox_main()
"#;

/// What `/bin/sh -c` runs for a shell job: the command comes from `NOX_COMMAND`, expanded
/// into the text eval parses, after which the variable is gone before any of it runs.
const SHELL_BOOTSTRAP: &str = r#"eval "unset NOX_COMMAND; $NOX_COMMAND""#;

/// How long pipes are drained after the job's main process ended (its group is killed
/// by then, so EOF normally comes at once).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long a job's `Started` may wait to go out with what follows it: its output and its
/// `Finished`, in one write and one wake-up of the frontend instead of two. A job that ends
/// at once (most) sends them together; one that runs on sends `Started`, and what it printed
/// so far, after this (its pipes are read only from then on, or from its exit).
const STARTED_HOLD: Duration = Duration::from_millis(2);
/// Most a read of a job's output takes at once: what a pipe holds.
const READ_BUFFER: usize = 64 * 1024;
/// What a job's output buffers start with. Most jobs print little; a buffer this small
/// comes from the thread's cache of small blocks, where a 64 KiB one took the allocator's
/// slow path twice per job (and its free made it sort every cached small block). The
/// first read that fills it makes it [`READ_BUFFER`].
const FIRST_READ_BUFFER: usize = 512;

/// Reads of each output pipe at once after the job's exit, before what is left (written
/// by a process the job left behind, until it is killed) is read as it comes.
const READS_AT_EXIT: usize = 16;

/// Why a job could not run. User code failing is not here: that is an outcome.
#[derive(Debug, Error)]
pub enum JobError {
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("job input is larger than {} bytes", nox_protocol::MAX_JOB_INPUT_LEN)]
    TooLarge,
    #[error("the job queue is full ({0} waiting); try again later")]
    Busy(u32),
    #[error("a required sandbox layer is not active: {0}")]
    SandboxUnavailable(String),
    #[error("workspace operation failed")]
    Workspace(#[from] WorkspaceError),
    #[error("could not start the job")]
    Sandbox(#[from] SandboxError),
    #[error("could not prepare the job's scratch directory {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an internal task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl JobError {
    /// The one place job errors become wire errors.
    pub fn to_wire(&self) -> WireError {
        let kind = match self {
            JobError::Invalid(_) => ErrorKind::BadRequest,
            JobError::TooLarge => ErrorKind::TooLarge,
            JobError::Busy(_) | JobError::Sandbox(SandboxError::NoView) => ErrorKind::Busy,
            JobError::SandboxUnavailable(_) => ErrorKind::SandboxUnavailable,
            JobError::Workspace(error) => error.kind(),
            JobError::Sandbox(
                SandboxError::ChildSetup { .. }
                | SandboxError::ZygoteSetup { .. }
                | SandboxError::Zygote(_),
            ) => ErrorKind::SandboxUnavailable,
            JobError::Sandbox(_) | JobError::Scratch { .. } | JobError::Task(_) => {
                ErrorKind::Internal
            }
        };
        WireError::from_error(kind, self)
    }
}

/// Runs jobs; shared by every connection.
#[derive(Debug)]
pub struct JobRunner {
    config: ExecutorConfig,
    sandbox: Arc<Sandbox>,
    workspaces: Arc<Workspaces>,
    ceilings: Limits,
    scratches: Arc<Scratches>,
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    queued: AtomicU32,
    running: Arc<AtomicU32>,
    started_at: Instant,
    /// Why jobs are refused, when a required layer is missing.
    refusal: Option<String>,
    /// Workspaces measured after their jobs, under a quota.
    remeasures: Arc<Remeasures>,
}

impl JobRunner {
    /// Probe the sandbox layers, compile the seccomp filter, start the reaper. Blocking
    /// (it runs one probe job); call it outside the async runtime or in `spawn_blocking`.
    pub fn new(
        config: &ExecutorConfig,
        identity: JobIdentity,
        workspaces: Arc<Workspaces>,
    ) -> Result<JobRunner, SandboxError> {
        let scratch_root = config.state_dir.join("jobs");
        identity.check_reachable(&config.workspace_root.join("x"))?;
        identity.check_reachable(&scratch_root.join("x"))?;
        let scratches =
            Scratches::new(scratch_root.clone()).map_err(|source| SandboxError::OpenDirectory {
                path: scratch_root.clone(),
                source,
            })?;
        let running = Arc::new(AtomicU32::new(0));
        let sandbox = Sandbox::new(config, identity, scratches.root(), Arc::clone(&running))?;
        let missing = sandbox.missing_required();
        let refusal = (!missing.is_empty()).then(|| {
            missing
                .iter()
                .map(|status| format!("{} ({})", status.layer.name(), status.detail))
                .collect::<Vec<_>>()
                .join(", ")
        });
        match &refusal {
            Some(reason) => {
                tracing::error!(
                    missing = %reason,
                    "required sandbox layers are not active: every job will be refused"
                );
            }
            None => tracing::info!(layers = %describe_layers(&sandbox), "sandbox ready"),
        }
        let max_concurrent = config.concurrency();
        let remeasures = Arc::new(Remeasures::new({
            let workspaces = Arc::clone(&workspaces);
            move |workspace| {
                let _ = workspaces.measure(workspace);
            }
        }));
        Ok(JobRunner {
            config: config.clone(),
            sandbox: Arc::new(sandbox),
            workspaces,
            ceilings: config.limits.ceilings(),
            scratches: Arc::new(scratches),
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            queued: AtomicU32::new(0),
            running,
            started_at: Instant::now(),
            remeasures,
            refusal,
        })
    }

    /// The pid of the process waiting for the next shell job, if one waits (diagnostics
    /// and tests).
    pub fn spare_pid(&self) -> Option<i32> {
        self.sandbox.spare_pid()
    }

    /// Health, limits and layers, for `Request::Status`.
    pub fn status(&self) -> ExecutorStatus {
        ExecutorStatus {
            software: format!("nox-executor {}", env!("CARGO_PKG_VERSION")),
            uptime_ms: millis(self.started_at.elapsed()),
            ready: self.refusal.is_none(),
            layers: self.sandbox.layers().to_vec(),
            jobs_running: self.running.load(Ordering::Relaxed),
            jobs_queued: self.queued.load(Ordering::Relaxed),
            max_concurrent_jobs: self.max_concurrent,
            max_queued_jobs: self.config.max_queued_jobs,
            ceilings: self.ceilings,
        }
    }

    /// Run `spec`. Sends `Started`, then `Output`*, then `Finished` — or a single `Error`
    /// (queue full, bad request, a required layer missing) — through `replies`. When
    /// `cancel` fires (the client went away) the job is killed and nothing more is sent.
    /// Returns after the last reply has been sent.
    pub async fn run(
        &self,
        spec: JobSpec,
        replies: mpsc::Sender<Reply>,
        cancel: CancellationToken,
    ) {
        let job_id = spec.job_id.clone();
        let workspace = spec.workspace.clone();
        if let Err(error) = self.run_job(spec, &replies, &cancel).await {
            if matches!(error, JobError::Busy(_)) {
                // Under overload this is every excess request: the frontend's metrics count
                // them (503 busy); a journal line each would add to the load.
                tracing::debug!(job_id = %job_id, workspace = %workspace, "job refused: queue full");
            } else {
                tracing::warn!(
                    job_id = %job_id,
                    workspace = %workspace,
                    error = %error_chain(&error),
                    "job refused"
                );
            }
            if !cancel.is_cancelled() {
                let _ = replies.send(Reply::Error(error.to_wire())).await;
            }
        }
    }

    async fn run_job(
        &self,
        spec: JobSpec,
        replies: &mpsc::Sender<Reply>,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let filename = validate(&spec)?;
        if let Some(reason) = &self.refusal {
            return Err(JobError::SandboxUnavailable(reason.clone()));
        }
        let queued_at = Instant::now();
        let Some(_permit) = self.admit(cancel).await? else {
            return Ok(()); // cancelled while queued
        };
        let queued_ms = millis(queued_at.elapsed());
        let _running = RunningCount::enter(&self.running);
        let limits = self.ceilings.clamp(&spec.limits);
        // The workspace's path follows from its name (`ensure` below creates it if needed).
        let workdir = self.config.workspace_root.join(&spec.workspace);
        let scratch = self.scratches.take(&spec.workspace);
        let scratch_path = scratch.path().to_owned();
        let (command, warm) = self.command_for(&spec, &limits, &workdir, &scratch_path);
        // A shell job is started right here: its start blocks for a few hundred
        // microseconds (workspace and scratch directory, pipes, the Landlock ruleset, then
        // clone until exec), less than the hop to a blocking thread and back costs in
        // wake-ups on an idle machine (interleaved A/B: /run_sh c=1 p50 -0.1 ms back to
        // back, -0.26 ms one job every 25 ms; c=32 unchanged). A Python job waits for the
        // zygote or writes its file, and a workspace whose use is not known yet would be
        // measured: those go to the blocking pool, in one hop for everything up to the
        // fork.
        let inline = matches!(spec.program, Program::Shell { .. })
            && self.workspaces.quota_known(&spec.workspace);
        // Held until the job has ended: its view goes to another workspace only then.
        let view = self.sandbox.lease_view(&spec.workspace)?;
        let prepared = Prepared {
            workspaces: Arc::clone(&self.workspaces),
            sandbox: Arc::clone(&self.sandbox),
            scratches: Arc::clone(&self.scratches),
            workspace: spec.workspace.clone(),
            python_file: filename,
            scratch,
            command,
            warm,
            view,
        };
        let Started {
            job,
            view: _view,
            untouched,
        } = if inline {
            prepared.spawn()?
        } else {
            tokio::task::spawn_blocking(move || prepared.spawn()).await??
        };
        let result = self
            .supervise(&spec, job, limits, queued_ms, replies, cancel)
            .await;
        // Nobody waits for the cleanup: the reply has been sent. An empty scratch directory
        // (most jobs) is kept at once, here: a blocking thread's two wake-ups cost more.
        if !self
            .scratches
            .release_if_empty(&scratch_path, &spec.workspace, untouched)
        {
            let scratches = Arc::clone(&self.scratches);
            let workspace = spec.workspace.clone();
            tokio::task::spawn_blocking(move || scratches.release(&scratch_path, &workspace));
        }
        // What the job left is what the next job and upload are measured against.
        if self.workspaces.quota().is_some() {
            self.remeasures.request(&spec.workspace);
        }
        result
    }

    /// Wait for a slot: at once if one is free, in the bounded queue otherwise.
    /// `Ok(None)` when cancelled while waiting.
    async fn admit(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, JobError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(Some(permit));
        }
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.config.max_queued_jobs {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(JobError::Busy(waiting));
        }
        let permit = tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            () = cancel.cancelled() => None,
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(permit)
    }

    /// The job's command, and `(shown path, file name)` when a Python job takes the warm
    /// path (the zygote then uses the command's environment, code and limits, not its argv).
    fn command_for(
        &self,
        spec: &JobSpec,
        limits: &Limits,
        workdir: &Path,
        scratch: &Path,
    ) -> (JobCommand, Option<(String, String)>) {
        // The workspace's uid has no passwd entry (see `owners`): `USER` and `LOGNAME`
        // name the workspace, so that what asks the environment first (Python's
        // `getpass.getuser()`, shells, many tools) gets a name instead of an error.
        let mut env = vec![
            ("PATH".to_owned(), self.config.job_path.clone()),
            ("HOME".to_owned(), workdir.display().to_string()),
            ("TMPDIR".to_owned(), scratch.display().to_string()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("USER".to_owned(), spec.workspace.clone()),
            ("LOGNAME".to_owned(), spec.workspace.clone()),
            ("NOX_JOB_ID".to_owned(), spec.job_id.clone()),
        ];
        let mut warm = None;
        let mut direct = None;
        let (program, args, code) = match &spec.program {
            Program::Python { code, filename } => {
                let shown = workdir.join(filename).display().to_string();
                let args = if self.config.python_mode == PythonMode::Zygote {
                    warm = Some((shown, filename.clone()));
                    Vec::new()
                } else {
                    vec![
                        "-I".to_owned(),
                        "-u".to_owned(),
                        "-c".to_owned(),
                        PYTHON_BOOTSTRAP.to_owned(),
                        shown,
                        filename.clone(),
                    ]
                };
                (
                    self.config.python.clone(),
                    args,
                    Some(code.as_bytes().to_vec()),
                )
            }
            Program::Shell { command } => {
                // One program with plain words needs no shell (see `crate::direct`): its
                // words become its argv, as the shell would have passed them on.
                direct = crate::direct::direct_exec(command, &env, workdir);
                // Else not `sh -c <command>`: argv is readable in /proc/<pid>/cmdline where
                // the environment is not. The command travels in the environment, which
                // /proc guards with ptrace access checks (refused across jobs by Landlock,
                // across uids by the kernel), and the shell evaluates it, unsetting the
                // variable first. (What the shell execs shows its argv either way.)
                env.push(("NOX_COMMAND".to_owned(), command.clone()));
                (
                    self.config.shell.clone(),
                    vec!["-c".to_owned(), SHELL_BOOTSTRAP.to_owned()],
                    None,
                )
            }
        };
        let command = JobCommand {
            program,
            args,
            env,
            workdir: workdir.to_path_buf(),
            code,
            limits: *limits,
            direct,
            stdin: !spec.stdin.is_empty(),
        };
        (command, warm)
    }

    async fn supervise(
        &self,
        spec: &JobSpec,
        spawned: SpawnedJob,
        limits: Limits,
        queued_ms: u64,
        replies: &mpsc::Sender<Reply>,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let pid = spawned.pid;
        let zygote = spawned.zygote.clone();
        let started = spawned.started;
        let deadline =
            tokio::time::Instant::from_std(started) + Duration::from_millis(limits.timeout_ms);

        // Most jobs get no stdin: `/dev/null` (a shell job), or a pipe closed here (a job
        // from the zygote); either reads as EOF at once, without a task or the pipe's
        // registration with the runtime.
        if let Some(stdin) = spawned.stdin.filter(|_| !spec.stdin.is_empty()) {
            let stdin_data = spec.stdin.clone();
            let stdin = pipe::Sender::from_owned_fd(stdin);
            tokio::spawn(async move {
                // A job that never reads its stdin gets EPIPE here; that is its business.
                if let Ok(mut stdin) = stdin {
                    let _ = stdin.write_all(&stdin_data).await;
                }
            });
        }
        let mut watch = Watch::new(limits.max_output_bytes);
        let mut held = Some(Reply::Started(JobStarted {
            job_id: spec.job_id.clone(),
            queued_ms,
            limits,
        }));
        let hold = tokio::time::sleep(STARTED_HOLD);
        tokio::pin!(hold);
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        let mut exit = spawned.exit;
        let mut report: Option<Result<ExitReport, ()>> = None;
        // Not zeroed: reads fill the spare capacity.
        let mut out_buffer = bytes::BytesMut::with_capacity(FIRST_READ_BUFFER);
        let mut err_buffer = bytes::BytesMut::with_capacity(FIRST_READ_BUFFER);

        // Most jobs end while their `Started` is held. Until then the output pipes are not
        // watched: what the job wrote waits in them (it blocks only past a pipe's 64 KiB),
        // and its exit closing each of them does not wake the runtime — once for each
        // pipe, then for the exit itself, each time taking the CPU the job is exiting on.
        // After its exit they are read at once, without the runtime, to EOF (a job that
        // outlives the hold is watched as before).
        tokio::select! {
            result = &mut exit => report = Some(result.map_err(|_| ())),
            () = &mut hold => {}
            () = &mut timeout => {}
            () = cancel.cancelled() => {}
        }
        // Ours to read without waiting, here or through the runtime (one call each, where
        // tokio's checked constructor makes three).
        let nonblocking = |fd: &std::os::fd::OwnedFd| {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
        };
        if nonblocking(&spawned.stdout)
            .and(nonblocking(&spawned.stderr))
            .is_err()
        {
            self.sandbox.kill(pid, zygote.as_ref());
            return Err(JobError::Sandbox(SandboxError::Pipe(
                std::io::Error::other("could not make the job's output pipes non-blocking"),
            )));
        }
        let (mut stdout, mut stderr) = (Some(spawned.stdout), Some(spawned.stderr));
        if report.is_some() {
            for (stream, pipe, buffer) in [
                (Stream::Stdout, &mut stdout, &mut out_buffer),
                (Stream::Stderr, &mut stderr, &mut err_buffer),
            ] {
                for _ in 0..READS_AT_EXIT {
                    let Some(fd) = pipe.as_ref() else { break };
                    match spawn::read_ready(fd, buffer) {
                        Ok(0) => *pipe = None,
                        Ok(n) => {
                            if relay(&mut watch, &mut held, replies, stream, &buffer[..n]).await {
                                self.sandbox.kill(pid, zygote.as_ref());
                            }
                            emptied(buffer);
                        }
                        // Held open by a process the job left behind: read as it comes.
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => *pipe = None,
                    }
                }
            }
        }
        // The rest is read as it comes, through the runtime.
        let watched = |fd: Option<std::os::fd::OwnedFd>| {
            fd.map(pipe::Receiver::from_owned_fd_unchecked).transpose()
        };
        let (Ok(mut stdout), Ok(mut stderr)) = (watched(stdout), watched(stderr)) else {
            self.sandbox.kill(pid, zygote.as_ref());
            return Err(JobError::Sandbox(SandboxError::Pipe(
                std::io::Error::other("could not register the job's output pipes"),
            )));
        };
        let (mut stdout_open, mut stderr_open) = (stdout.is_some(), stderr.is_some());
        let drain = tokio::time::sleep(Duration::MAX.min(Duration::from_secs(86_400 * 365)));
        tokio::pin!(drain);
        if report.is_some() {
            drain
                .as_mut()
                .reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
        }
        let over_quota = over_quota(
            Arc::clone(&self.workspaces),
            Arc::clone(&self.remeasures),
            spec.workspace.clone(),
        );
        tokio::pin!(over_quota);

        while report.is_none() || stdout_open || stderr_open {
            let mut chunk: Option<(Stream, usize)> = None;
            tokio::select! {
                read = read_some(stdout.as_mut(), &mut out_buffer), if stdout_open => match read {
                    Ok(0) | Err(_) => stdout_open = false,
                    Ok(n) => chunk = Some((Stream::Stdout, n)),
                },
                read = read_some(stderr.as_mut(), &mut err_buffer), if stderr_open => match read {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => chunk = Some((Stream::Stderr, n)),
                },
                result = &mut exit, if report.is_none() => {
                    report = Some(result.map_err(|_| ()));
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                () = &mut timeout, if report.is_none() && !watch.timed_out => {
                    watch.timed_out = true;
                    self.sandbox.kill(pid, zygote.as_ref());
                }
                () = &mut over_quota, if report.is_none() && !watch.disk_hit => {
                    watch.disk_hit = true;
                    self.sandbox.kill(pid, zygote.as_ref());
                }
                () = cancel.cancelled(), if !watch.cancelled => {
                    watch.cancelled = true;
                    self.sandbox.kill(pid, zygote.as_ref());
                }
                () = &mut hold, if held.is_some() && !watch.cancelled => {
                    if !send_held(&mut held, replies).await {
                        watch.cancelled = true;
                        self.sandbox.kill(pid, zygote.as_ref());
                    }
                }
                () = &mut drain, if report.is_some() => break,
            }
            if let Some((stream, n)) = chunk {
                let buffer = match stream {
                    Stream::Stdout => &mut out_buffer,
                    Stream::Stderr => &mut err_buffer,
                };
                if relay(&mut watch, &mut held, replies, stream, &buffer[..n]).await {
                    self.sandbox.kill(pid, zygote.as_ref());
                }
                emptied(buffer);
            }
        }

        let outcome = watch.outcome(&spec.job_id, started, report, &limits);
        let record = outcome.clone();
        if !watch.cancelled && send_held(&mut held, replies).await {
            let _ = replies.send(Reply::Finished(outcome)).await;
            // The connection's writer sends it now; the record below and the cleanup
            // after this (the job's cgroup back to its pool, the scratch directory) wait
            // the one turn.
            tokio::task::yield_now().await;
        }
        // Logged once the reply is on its way: formatting 18 fields (under systemd, and
        // sending them to the journal) is not the client's wait.
        tracing::info!(
            job_id = %spec.job_id,
            workspace = %spec.workspace,
            language = spec.program.language(),
            pid,
            status = ?record.status,
            timed_out = record.timed_out,
            limit_hit = ?record.limit_hit,
            duration_ms = record.duration_ms,
            queued_ms,
            cpu_ms = record.usage.user_ms + record.usage.system_ms,
            max_rss_kib = record.usage.max_rss_kib,
            stdout_bytes = record.stdout_bytes,
            stderr_bytes = record.stderr_bytes,
            truncated = record.stdout_truncated || record.stderr_truncated,
            cancelled = watch.cancelled,
            timeout_ms = limits.timeout_ms,
            memory_bytes = limits.memory_bytes,
            "job finished"
        );
        Ok(())
    }
}

/// Forward `data`, read from the job's `stream`, as far as the output cap allows. True if
/// the job is to be killed now: the client is gone, or the cap was just reached.
async fn relay(
    watch: &mut Watch,
    held: &mut Option<Reply>,
    replies: &mpsc::Sender<Reply>,
    stream: Stream,
    data: &[u8],
) -> bool {
    let (keep, over_cap) = watch.account(stream, data.len());
    let mut kill = false;
    if keep > 0 && !watch.cancelled {
        let reply = Reply::Output(OutputChunk {
            stream,
            data: data[..keep].to_vec(),
        });
        if !send_held(held, replies).await || replies.send(reply).await.is_err() {
            watch.cancelled = true;
            kill = true;
        }
    }
    if over_cap && !watch.output_hit {
        watch.output_hit = true;
        kill = true;
    }
    kill
}

/// Empty `buffer` again for the next read, with all its capacity (a full buffer would
/// read as EOF); grown to [`READ_BUFFER`] once a read has filled it.
fn emptied(buffer: &mut bytes::BytesMut) {
    let filled = buffer.len() == buffer.capacity();
    buffer.clear();
    if filled {
        buffer.reserve(READ_BUFFER);
    }
}

/// Read what `pipe` has into `buffer`'s spare capacity (a `select!` branch is only polled
/// while its pipe is open, so `None` never is).
async fn read_some(
    pipe: Option<&mut pipe::Receiver>,
    buffer: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read_buf(buffer).await,
        None => Ok(0),
    }
}

/// Send the held `Started`, if it is still held. False if the connection is gone.
async fn send_held(held: &mut Option<Reply>, replies: &mpsc::Sender<Reply>) -> bool {
    match held.take() {
        Some(started) => replies.send(started).await.is_ok(),
        None => true,
    }
}

/// Measurements of workspaces after their jobs (under a quota): one at a time per
/// workspace, however many jobs end meanwhile. A measurement walks the whole workspace
/// (~4 ms for 5,000 files here): one per job made a workspace of that size the bound of
/// every job in it (`/run_sh true` c=32 1,872 → 222 req/s, c=1 p50 0.9 → 4.6 ms). Jobs
/// that end while one runs, or in the pause after it, ask for one more, which starts once
/// the pause is over: [`REMEASURE_PAUSE`] times the walk's length, and at least
/// [`REMEASURE_MIN_PAUSE`]. So walks of one workspace take at most a fifth of a CPU, a
/// small workspace is walked at most 100 times a second however many jobs end (a walk
/// after every job had cost ~40 µs of CPU per `/run_sh true` at c=1), and what the next
/// job or upload is checked against is at most a few walks or 10 ms old. Running jobs
/// ask too, every [`QUOTA_CHECK_EVERY`] (see [`over_quota`]).
struct Remeasures {
    /// Measures a workspace (`Workspaces::measure`, remembering what it found).
    measure: Arc<dyn Fn(&str) + Send + Sync>,
    /// Workspaces being measured, each with whether another measurement was asked for.
    pending: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

impl std::fmt::Debug for Remeasures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remeasures")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// See [`Remeasures`].
const REMEASURE_PAUSE: u32 = 4;

/// See [`Remeasures`].
const REMEASURE_MIN_PAUSE: Duration = Duration::from_millis(10);

impl Remeasures {
    fn new(measure: impl Fn(&str) + Send + Sync + 'static) -> Remeasures {
        Remeasures {
            measure: Arc::new(measure),
            pending: std::sync::Mutex::default(),
        }
    }

    /// Measure `workspace` soon, on a blocking thread: now if no measurement of it runs
    /// or pauses, else once more after the running one and its pause.
    fn request(self: &Arc<Self>, workspace: &str) {
        {
            let mut pending = self.lock();
            if let Some(again) = pending.get_mut(workspace) {
                *again = true;
                return;
            }
            pending.insert(workspace.to_owned(), false);
        }
        let (remeasures, workspace) = (Arc::clone(self), workspace.to_owned());
        // The pause waits on the runtime's timer, not on a blocking thread: one per
        // workspace in use would add up.
        tokio::spawn(async move {
            loop {
                let (measure, name) = (Arc::clone(&remeasures.measure), workspace.clone());
                let took = tokio::task::spawn_blocking(move || {
                    let begun = Instant::now();
                    measure(&name);
                    begun.elapsed()
                })
                .await
                .unwrap_or_default();
                tokio::time::sleep(
                    took.saturating_mul(REMEASURE_PAUSE)
                        .max(REMEASURE_MIN_PAUSE),
                )
                .await;
                let mut pending = remeasures.lock();
                match pending.get_mut(&workspace) {
                    Some(again) if *again => *again = false,
                    _ => {
                        pending.remove(&workspace);
                        return;
                    }
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, bool>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How often a running job's workspace is checked against its quota.
const QUOTA_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Completes when `workspace` has grown past its quota; never without one. Every
/// [`QUOTA_CHECK_EVERY`] while the job runs it checks the last measurement and asks for the
/// next (through [`Remeasures`]), so a job writing fast may overshoot by what it writes in
/// about two of those periods, and the executor's file-size limit still caps each file.
async fn over_quota(workspaces: Arc<Workspaces>, remeasures: Arc<Remeasures>, workspace: String) {
    let Some(quota) = workspaces.quota() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(QUOTA_CHECK_EVERY).await;
        // What the last measurement found, and another one asked for: every job running
        // in a workspace asks, and one walk at a time answers them all.
        if workspaces
            .known_use(&workspace)
            .is_some_and(|used| used > quota)
        {
            return;
        }
        remeasures.request(&workspace);
    }
}

/// Everything a job needs before its process exists, moved to a blocking thread.
struct Prepared {
    workspaces: Arc<Workspaces>,
    sandbox: Arc<Sandbox>,
    scratches: Arc<Scratches>,
    workspace: String,
    /// A Python job's file name: its code (`command.code`) is saved there in the workspace,
    /// as the seed did.
    python_file: Option<RelPath>,
    scratch: Scratch,
    command: JobCommand,
    /// `(shown path, file name)` of a Python job on the warm path.
    warm: Option<(String, String)>,
    /// The workspace's view, when there are views.
    view: Option<ViewLease>,
}

impl Prepared {
    /// Workspace, code file, scratch directory, then the job's process. Blocking. Gives
    /// back the view's lease, for the job's lifetime, and whether the scratch directory
    /// was a kept one left alone (for its release). The scratch directory is released
    /// again if the job cannot start.
    fn spawn(self) -> Result<Started, JobError> {
        let started = self.start();
        if started.is_err() {
            self.scratches.release(self.scratch.path(), &self.workspace);
        }
        let (job, untouched) = started?;
        Ok(Started {
            job,
            view: self.view,
            untouched,
        })
    }

    fn start(&self) -> Result<(SpawnedJob, Option<Untouched>), JobError> {
        // The job runs as its workspace's own uid (see `owners`).
        let (workdir, owner) = self.workspaces.ensure(&self.workspace)?;
        self.workspaces.check_quota(&self.workspace)?;
        if let Some(lease) = &self.view {
            self.sandbox
                .name_in_view(lease.view(), &self.workspace, &workdir, owner)?;
        }
        if let (Some(path), Some(code)) = (&self.python_file, &self.command.code) {
            self.workspaces.write_file(&self.workspace, path, code)?;
        }
        let scratch = self.scratch.path();
        let untouched = self
            .scratches
            .make(&self.scratch, owner)
            .map_err(|source| JobError::Scratch {
                path: scratch.to_owned(),
                source,
            })?;
        let writable = [workdir.as_path(), scratch];
        let view = self.view.as_ref().map(ViewLease::view);
        let spawned = match &self.warm {
            Some((display, filename)) => self.sandbox.spawn_warm_python(
                &WarmPython {
                    display,
                    filename,
                    code: self.command.code.as_deref().unwrap_or_default(),
                    env: &self.command.env,
                    workdir: &self.command.workdir,
                    limits: &self.command.limits,
                    user: owner,
                },
                &writable,
                view,
            ),
            None => self.sandbox.spawn(&self.command, &writable, owner, view),
        };
        Ok((spawned?, untouched))
    }
}

/// A job whose process runs, see [`Prepared::spawn`].
struct Started {
    job: SpawnedJob,
    /// Held until the job has ended: its view goes to another workspace only then.
    view: Option<ViewLease>,
    untouched: Option<Untouched>,
}

/// What happened while a job ran.
#[derive(Debug)]
struct Watch {
    cap: u64,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    timed_out: bool,
    output_hit: bool,
    /// The workspace grew past its quota while the job ran.
    disk_hit: bool,
    cancelled: bool,
}

impl Watch {
    fn new(cap: u64) -> Watch {
        Watch {
            cap,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: false,
            output_hit: false,
            disk_hit: false,
            cancelled: false,
        }
    }

    /// Count `n` new bytes on `stream`: how many to forward, and whether the cap is passed.
    fn account(&mut self, stream: Stream, n: usize) -> (usize, bool) {
        let (sent, truncated) = match stream {
            Stream::Stdout => (&mut self.stdout_bytes, &mut self.stdout_truncated),
            Stream::Stderr => (&mut self.stderr_bytes, &mut self.stderr_truncated),
        };
        let room = self.cap.saturating_sub(*sent);
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        if n64 <= room {
            *sent += n64;
            return (n, false);
        }
        *truncated = true;
        *sent += room;
        (usize::try_from(room).unwrap_or(0), true)
    }

    fn outcome(
        &self,
        job_id: &str,
        started: Instant,
        report: Option<Result<ExitReport, ()>>,
        limits: &Limits,
    ) -> JobOutcome {
        let (status, usage, ended) = match report {
            Some(Ok(report)) => (exit_status(report.status), report.usage, report.at),
            // The reaper lost track of the job (it cannot happen without a bug): report it
            // as killed rather than invent an exit code.
            _ => (
                ExitStatus::Signaled(libc::SIGKILL),
                ResourceUsage::default(),
                Instant::now(),
            ),
        };
        let limit_hit = if self.timed_out {
            Some(LimitHit::Timeout)
        } else if self.output_hit {
            Some(LimitHit::Output)
        } else if self.disk_hit {
            Some(LimitHit::Disk)
        } else {
            match status {
                ExitStatus::Signaled(libc::SIGXCPU) => Some(LimitHit::Cpu),
                ExitStatus::Signaled(libc::SIGKILL)
                    if usage.user_ms + usage.system_ms + 50 >= limits.cpu_seconds * 1000 =>
                {
                    Some(LimitHit::Cpu)
                }
                ExitStatus::Signaled(libc::SIGXFSZ) => Some(LimitHit::FileSize),
                _ => None,
            }
        };
        JobOutcome {
            job_id: job_id.to_owned(),
            status,
            timed_out: self.timed_out,
            limit_hit,
            duration_ms: millis(ended.saturating_duration_since(started)),
            usage,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
        }
    }
}

/// Counts a running job for as long as it lives.
struct RunningCount<'a>(&'a AtomicU32);

impl<'a> RunningCount<'a> {
    fn enter(counter: &'a AtomicU32) -> RunningCount<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        RunningCount(counter)
    }
}

impl Drop for RunningCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Re-validate a job (the frontend is less privileged and not trusted). Returns the
/// validated file name of a Python job.
fn validate(spec: &JobSpec) -> Result<Option<RelPath>, JobError> {
    if !nox_protocol::validate_job_id(&spec.job_id) {
        return Err(JobError::Invalid(
            "job id must be 1-64 of [A-Za-z0-9_-]".into(),
        ));
    }
    if !nox_protocol::validate_workspace_name(&spec.workspace) {
        return Err(JobError::Invalid("workspace name is not valid".into()));
    }
    let input = match &spec.program {
        Program::Python { code, .. } => code.len(),
        Program::Shell { command } => command.len(),
    };
    if input.saturating_add(spec.stdin.len()) > nox_protocol::MAX_JOB_INPUT_LEN {
        return Err(JobError::TooLarge);
    }
    match &spec.program {
        Program::Python { filename, .. } => RelPath::parse(filename)
            .map(Some)
            .map_err(|error| JobError::Invalid(format!("filename: {error}"))),
        Program::Shell { command } if command.contains('\0') => {
            Err(JobError::Invalid("the command contains a NUL byte".into()))
        }
        Program::Shell { .. } => Ok(None),
    }
}

fn exit_status(raw: i32) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn describe_layers(sandbox: &Sandbox) -> String {
    sandbox
        .layers()
        .iter()
        .map(|status| {
            format!(
                "{}={}",
                status.layer.name(),
                if status.active { "on" } else { "off" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_cut_at_the_cap_and_flagged() {
        let mut watch = Watch::new(10);
        assert_eq!(watch.account(Stream::Stdout, 6), (6, false));
        assert_eq!(watch.account(Stream::Stdout, 6), (4, true));
        assert_eq!(watch.account(Stream::Stdout, 6), (0, true));
        assert!(watch.stdout_truncated);
        assert_eq!(watch.stdout_bytes, 10);
        assert_eq!(watch.account(Stream::Stderr, 3), (3, false));
        assert!(!watch.stderr_truncated);
    }

    #[test]
    fn wait_statuses_become_exit_codes_or_signals() {
        assert_eq!(exit_status(3 << 8), ExitStatus::Exited(3));
        assert_eq!(exit_status(9), ExitStatus::Signaled(9));
    }

    #[test]
    fn a_job_with_a_bad_id_workspace_or_filename_is_refused() {
        let good = JobSpec {
            job_id: "abc".into(),
            workspace: "default".into(),
            program: Program::Python {
                code: "print(1)".into(),
                filename: "run.py".into(),
            },
            stdin: Vec::new(),
            limits: Default::default(),
        };
        assert!(validate(&good).is_ok());
        let bad_id = JobSpec {
            job_id: "../x".into(),
            ..good.clone()
        };
        assert!(validate(&bad_id).is_err());
        let bad_workspace = JobSpec {
            workspace: "..".into(),
            ..good.clone()
        };
        assert!(validate(&bad_workspace).is_err());
        let bad_name = JobSpec {
            program: Program::Python {
                code: String::new(),
                filename: "../../etc/cron.d/x".into(),
            },
            ..good
        };
        assert!(validate(&bad_name).is_err());
    }

    #[test]
    fn the_timeout_is_the_limit_named_when_it_fired() {
        let mut watch = Watch::new(10);
        watch.timed_out = true;
        let outcome = watch.outcome("j", Instant::now(), None, &Limits::default());
        assert_eq!(outcome.limit_hit, Some(LimitHit::Timeout));
        assert!(outcome.timed_out);
    }

    /// When each measurement began and ended.
    type Walks = Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>;

    /// Remeasures whose measurement takes `walk` and notes when it began and ended.
    fn recording(walk: Duration) -> (Arc<Remeasures>, Walks) {
        let walks = Walks::default();
        let remeasures = Arc::new(Remeasures::new({
            let walks = Arc::clone(&walks);
            move |_| {
                let begun = Instant::now();
                std::thread::sleep(walk);
                walks.lock().unwrap().push((begun, Instant::now()));
            }
        }));
        (remeasures, walks)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workspace_measurements_run_one_at_a_time_and_one_follows_the_last_request() {
        let (remeasures, walks) = recording(Duration::from_millis(20));
        let mut last_request = Instant::now();
        for _ in 0..40 {
            last_request = Instant::now();
            remeasures.request("w");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 200 ms of requests; then the last measurement plus its pause (at most ~100 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(remeasures.lock().is_empty(), "still measuring");
        let walks = walks.lock().unwrap().clone();
        assert!(
            walks.windows(2).all(|pair| pair[1].0 >= pair[0].1),
            "two measurements of one workspace overlapped"
        );
        assert!(
            walks.len() < 10,
            "{} measurements for 40 requests over 200 ms",
            walks.len()
        );
        let latest = walks.last().expect("a measurement").0;
        assert!(
            latest >= last_request,
            "nothing was measured after the last request"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quick_workspace_is_measured_at_most_every_ten_milliseconds() {
        let (remeasures, walks) = recording(Duration::ZERO);
        // A job ending every 0.5 ms for 100 ms, in two workspaces.
        let begun = Instant::now();
        let mut last_request = begun;
        while begun.elapsed() < Duration::from_millis(100) {
            last_request = Instant::now();
            remeasures.request("w");
            remeasures.request("other");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(remeasures.lock().is_empty(), "still measuring");
        let walks = walks.lock().unwrap().clone();
        // Two workspaces, each at most once per 10 ms (plus the one after the last request).
        assert!(
            (4..=26).contains(&walks.len()),
            "{} measurements of two workspaces in 100 ms",
            walks.len()
        );
        assert!(
            walks.iter().any(|&(begun, _)| begun >= last_request),
            "nothing was measured after the last request"
        );
    }
}
