//! The per-job sandbox. All `unsafe` code and every privilege change of the workspace lives
//! under this module.
//!
//! What it enforces, per job: own process group, rlimits, its workspace's view (when there
//! are views, see [`crate::views`]), the sandbox uid (when the executor is root), no
//! capabilities, `no_new_privs`, Landlock, a seccomp filter, a
//! rebuilt environment and no inherited descriptors (see [`spawn`] for the order). What it
//! trusts: the job runner to pass a validated [`spawn::JobCommand`]; the executor's unit to
//! supply what is applied once for everyone (no network, read-only system, memory and task
//! ceilings for the whole service).
//!
//! Fail closed: [`Sandbox::new`] probes every layer and runs a probe job through all of
//! them; a layer configured as required that is not active makes every job fail with
//! `SandboxUnavailable` instead of running with less.

pub mod cgroup;
pub mod cpus;
pub mod landlock;
pub mod reaper;
pub mod seccomp;
pub mod spare;
pub mod spawn;
pub mod spawner;
pub mod zygote;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use nox_protocol::{Layer, LayerStatus, Limits};
use seccompiler::BpfProgram;
use thiserror::Error;

use crate::config::ExecutorConfig;
use landlock::LandlockPolicy;

use crate::views::{View, ViewLease, Views};
use reaper::Reaper;
use spawn::{ChildPlan, JobCommand, SpawnedJob};

/// Failures preparing or applying the sandbox.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(
        "sandbox user `{user}` does not exist (create it: useradd --system --no-create-home --shell /usr/sbin/nologin {user})"
    )]
    UnknownUser { user: String },
    #[error("sandbox user `{user}` is root; jobs never run as root")]
    RootSandboxUser { user: String },
    #[error("could not look up the sandbox user `{user}`")]
    LookupUser {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("could not build the seccomp rules")]
    SeccompRules(#[source] seccompiler::BackendError),
    #[error("could not compile the seccomp filter")]
    SeccompCompile(#[source] seccompiler::BackendError),
    #[error("seccomp is not supported on architecture {0}")]
    SeccompArch(&'static str),
    #[error("the seccomp filter has {0} instructions, more than the kernel accepts")]
    SeccompTooLong(usize),
    #[error("system call number {0} does not fit a seccomp filter")]
    SeccompNumber(i64),
    #[error("could not build the Landlock ruleset")]
    Landlock(#[source] ::landlock::RulesetError),
    #[error("Landlock is not available in this kernel")]
    LandlockUnavailable,
    #[error(
        "jobs (each running as its workspace's own uid) cannot reach {path}: {blocker} is not searchable by others (make it mode o+x, or choose a directory under one that is)"
    )]
    Unreachable { path: PathBuf, blocker: PathBuf },
    #[error("could not make the job's pids cgroup")]
    Cgroup(#[source] io::Error),
    #[error("could not start the reaper")]
    Reaper(#[source] io::Error),
    #[error("{what} contains a NUL byte")]
    NulByte { what: &'static str },
    #[error("could not create a pipe or descriptor for the job")]
    Pipe(#[source] io::Error),
    #[error("could not open the job's directory {path}")]
    OpenDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fork failed")]
    Fork(#[source] io::Error),
    #[error("the Python zygote failed: {0}")]
    Zygote(String),
    #[error("setting up the job failed at step `{step}`")]
    ZygoteSetup {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("every workspace view is held by other workspaces' jobs")]
    NoView,
    #[error("could not name the workspace's account in its view's /etc/passwd and /etc/group")]
    ViewAccount(#[source] io::Error),
    #[error("setting up the job failed at step `{}`", step.name())]
    ChildSetup {
        step: Step,
        #[source]
        source: io::Error,
    },
}

/// The child's setup steps, in the order they run (see [`spawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Signals = 1,
    ProcessGroup = 2,
    Stdio = 3,
    CloseDescriptors = 4,
    Rlimits = 5,
    Groups = 6,
    Gid = 7,
    Uid = 8,
    WorkingDirectory = 9,
    Capabilities = 10,
    NoNewPrivs = 11,
    Landlock = 12,
    Seccomp = 13,
    Exec = 14,
    Cgroup = 15,
    Cpus = 16,
    View = 17,
    Unknown = 0,
}

impl Step {
    const ALL: [Step; 17] = [
        Step::Signals,
        Step::ProcessGroup,
        Step::Cgroup,
        Step::Stdio,
        Step::CloseDescriptors,
        Step::Rlimits,
        Step::View,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::WorkingDirectory,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
        Step::Exec,
        Step::Cpus,
    ];

    fn from_code(code: u32) -> Step {
        Step::ALL
            .into_iter()
            .find(|step| *step as u32 == code)
            .unwrap_or(Step::Unknown)
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::Signals => "reset signals",
            Step::ProcessGroup => "own process group",
            Step::Cgroup => "join the job's pids cgroup",
            Step::Cpus => "take back every CPU",
            Step::Stdio => "standard descriptors",
            Step::CloseDescriptors => "close inherited descriptors",
            Step::Rlimits => "rlimits",
            Step::View => "enter the workspace's view",
            Step::Groups => "supplementary groups",
            Step::Gid => "setresgid",
            Step::Uid => "setresuid",
            Step::WorkingDirectory => "enter the workspace",
            Step::Capabilities => "drop capabilities",
            Step::NoNewPrivs => "no_new_privs",
            Step::Landlock => "landlock_restrict_self",
            Step::Seccomp => "seccomp filter",
            Step::Exec => "exec",
            Step::Unknown => "unknown",
        }
    }
}

/// Who jobs run as.
#[derive(Debug, Clone)]
pub struct JobIdentity {
    /// `(uid, gid)` of the sandbox user when the executor is root.
    switch_to: Option<(u32, u32)>,
    user: String,
    own_uid: u32,
}

impl JobIdentity {
    /// As root: the configured sandbox user, which must exist and not be root. Otherwise
    /// jobs run as the executor's own user (with every other layer).
    pub fn resolve(config: &ExecutorConfig) -> Result<JobIdentity, SandboxError> {
        let own_uid = nix::unistd::geteuid().as_raw();
        if own_uid != 0 {
            return Ok(JobIdentity {
                switch_to: None,
                user: String::new(),
                own_uid,
            });
        }
        let user = config.sandbox_user.clone();
        let entry = match nix::unistd::User::from_name(&user) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(SandboxError::UnknownUser { user }),
            Err(source) => return Err(SandboxError::LookupUser { user, source }),
        };
        if entry.uid.is_root() || entry.gid.as_raw() == 0 {
            return Err(SandboxError::RootSandboxUser { user });
        }
        Ok(JobIdentity {
            switch_to: Some((entry.uid.as_raw(), entry.gid.as_raw())),
            user,
            own_uid,
        })
    }

    /// Whether jobs change uid (the executor is root): each then runs as its workspace's.
    pub fn switches(&self) -> bool {
        self.switch_to.is_some()
    }

    /// Check that jobs, running as their workspace's uid (which owns nothing above the
    /// workspace), can reach `path` by name: every directory above it must be searchable by
    /// others. (The job enters its workspace by descriptor, which would hide the problem
    /// until a job used an absolute path.)
    pub fn check_reachable(&self, path: &Path) -> Result<(), SandboxError> {
        use std::os::unix::fs::MetadataExt;
        if self.switch_to.is_none() {
            return Ok(());
        }
        for ancestor in path.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            if meta.mode() & 0o001 == 0 {
                return Err(SandboxError::Unreachable {
                    path: path.to_path_buf(),
                    blocker: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    fn describe(&self, tenants: crate::owners::UidRange) -> String {
        match self.switch_to {
            Some((uid, _)) => format!(
                "a uid per workspace from {} ({} uids); the Python zygote as {} (uid {uid})",
                tenants.first, tenants.count, self.user
            ),
            None => format!(
                "executor is not root: jobs run as its own uid {}",
                self.own_uid
            ),
        }
    }
}

/// The sandbox every job goes through: probed layers and prebuilt programs.
#[derive(Debug)]
pub struct Sandbox {
    identity: JobIdentity,
    /// The uids workspaces are given (for the layer report).
    tenant_uids: crate::owners::UidRange,
    landlock: Option<LandlockPolicy>,
    seccomp: Option<BpfProgram>,
    seccomp_error: Option<String>,
    network_isolated: bool,
    /// A pids cgroup per job, or why there is none.
    cgroups: Result<cgroup::Cgroups, String>,
    /// RLIMIT_NPROC when each job has a pids cgroup: only a backstop for a whole workspace
    /// uid, room for every job at its ceiling.
    nproc_backstop: u64,
    /// Processes the job's uid already has, added to RLIMIT_NPROC when jobs share the
    /// executor's uid (development), so the developer's own processes do not count.
    process_allowance: u64,
    reaper: Reaper,
    required: Vec<Layer>,
    /// Every layer's state, fixed once the probe job has run.
    layers: Vec<LayerStatus>,
    python: PathBuf,
    /// Where the zygote runs (it writes nothing there).
    zygote_dir: PathBuf,
    zygote: std::sync::Mutex<Option<std::sync::Arc<zygote::Zygote>>>,
    /// A process waiting in its pids cgroup for the next job (see [`spare`]), when jobs
    /// have cgroups.
    spares: Option<spare::Spares>,
    /// Threads carrying the job filter, from which forked jobs inherit it (see
    /// [`spawner`]), when there is a filter.
    spawners: Option<Arc<spawner::Spawners>>,
    /// The process limit of a job that asks for none (the ceiling): what a cgroup made
    /// ahead of its job holds.
    default_processes: u64,
    /// The signals a child sets back to default (see [`spawn::Dispositions`]).
    dispositions: spawn::Dispositions,
    /// The workspaces' views (see [`crate::views`]), or why there are none.
    views: Result<std::sync::Arc<Views>, String>,
}

impl Sandbox {
    /// Probe the kernel, compile the filter, start the reaper. `probe_dir` is a directory
    /// where a probe job may run (the state directory); `running` counts the running jobs
    /// (spares are made more eagerly under light load).
    pub fn new(
        config: &ExecutorConfig,
        identity: JobIdentity,
        probe_dir: &Path,
        running: Arc<AtomicU32>,
    ) -> Result<Sandbox, SandboxError> {
        let landlock = LandlockPolicy::probe(&config.extra_read_paths);
        let views = open_views(config);
        let (seccomp, seccomp_error) = match seccomp::job_filter() {
            Ok(program) if seccomp_available() => (Some(program), None),
            Ok(_) => (
                None,
                Some("the kernel has no seccomp filter mode".to_owned()),
            ),
            Err(error) => (None, Some(error.to_string())),
        };
        let process_allowance = match identity.switch_to {
            Some(_) => 0,
            None => count_processes_of(identity.own_uid),
        };
        let mut sandbox = Sandbox {
            identity,
            tenant_uids: config.tenant_uids(),
            landlock,
            seccomp,
            seccomp_error,
            network_isolated: only_loopback(),
            cgroups: cgroup::Cgroups::probe(),
            nproc_backstop: config
                .limits
                .processes
                .saturating_mul(u64::from(config.concurrency()) + 1),
            process_allowance,
            reaper: Reaper::global().map_err(SandboxError::Reaper)?,
            required: config.required(),
            layers: Vec::new(),
            python: config.python.clone(),
            zygote_dir: probe_dir.to_path_buf(),
            zygote: std::sync::Mutex::new(None),
            spares: None,
            spawners: None,
            default_processes: config.limits.processes,
            dispositions: spawn::Dispositions::of_this_process(),
            views,
        };
        // Before the probe job, which then starts as every forked job will.
        if let Some(program) = &sandbox.seccomp {
            match spawner::Spawners::global(program) {
                Ok(spawners) => sandbox.spawners = Some(spawners),
                Err(error) => {
                    tracing::warn!(%error, "no spawner threads: forked jobs load the filter");
                }
            }
        }
        let probe_failure = sandbox.probe(config, probe_dir).err();
        sandbox.layers = sandbox.assess_layers(probe_failure.as_deref());
        if let Ok(cgroups) = &sandbox.cgroups {
            match spare::Spares::start(
                sandbox.reaper.clone(),
                cgroups.clone(),
                sandbox.default_processes,
                match (&sandbox.spawners, &sandbox.seccomp) {
                    (Some(spawners), _) => spare::SpareFilter::Inherit(Arc::clone(spawners)),
                    (None, Some(program)) => spare::SpareFilter::Load(program.clone()),
                    (None, None) => spare::SpareFilter::None,
                },
                sandbox.dispositions,
                running,
                sandbox
                    .views
                    .as_ref()
                    .ok()
                    .and_then(|views| views.user_namespace())
                    .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd)),
            ) {
                Ok(spares) => sandbox.spares = Some(spares),
                Err(error) => tracing::warn!(%error, "no spare processes: jobs fork their own"),
            }
        }
        Ok(sandbox)
    }

    /// Run `/bin/sh -c true` through every layer once, as a job would be.
    fn probe(&self, config: &ExecutorConfig, dir: &Path) -> Result<(), String> {
        let command = JobCommand {
            program: config.shell.clone(),
            args: vec!["-c".into(), "exit 0".into()],
            env: vec![("PATH".into(), config.job_path.clone())],
            workdir: dir.to_path_buf(),
            code: None,
            limits: Limits::default(),
            direct: None,
            stdin: false,
        };
        // Through a view when there are views: it proves jobs can enter them.
        let lease = match &self.views {
            Ok(views) => Some(
                views
                    .lease("")
                    .ok_or_else(|| "no view is free for the probe job".to_owned())?,
            ),
            Err(_) => None,
        };
        let started = self
            .spawn(&command, &[dir], None, lease.as_ref().map(ViewLease::view))
            .map_err(|error| nox_protocol::error_chain(&error))?;
        // Polled rather than awaited: this runs once at start, inside or outside a runtime.
        let mut exit = started.exit;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let report = loop {
            match exit.try_recv() {
                Ok(report) => break report,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(_) => {
                    self.reaper.kill_group(started.pid);
                    return Err("the probe job did not finish within 10 s".to_owned());
                }
            }
        };
        if libc::WIFEXITED(report.status) && libc::WEXITSTATUS(report.status) == 0 {
            Ok(())
        } else {
            Err(format!(
                "the probe job ended with wait status {}",
                report.status
            ))
        }
    }

    /// Every layer with its state, in `Layer::ALL` order.
    pub fn layers(&self) -> &[LayerStatus] {
        &self.layers
    }

    /// Each layer's state, given how the probe job went.
    fn assess_layers(&self, probe_failure: Option<&str>) -> Vec<LayerStatus> {
        let probe_ok = probe_failure.is_none();
        Layer::ALL
            .into_iter()
            .map(|layer| {
                let (active, detail) = match layer {
                    Layer::ProcessGroup => (probe_ok, "killed whole at timeout and exit".into()),
                    Layer::Rlimits => (
                        probe_ok,
                        match &self.cgroups {
                            Ok(cgroups) => format!(
                                "cpu, as, fsize, nofile, core; processes: {}",
                                cgroups.describe()
                            ),
                            Err(reason) => format!(
                                "cpu, as, fsize, nofile, core; processes: RLIMIT_NPROC of the \
                                 workspace's uid (no pids cgroup per job: {reason})"
                            ),
                        },
                    ),
                    Layer::SandboxUser => (
                        probe_ok && self.identity.switch_to.is_some(),
                        self.identity.describe(self.tenant_uids),
                    ),
                    Layer::NoCapabilities => (probe_ok, "all capability sets empty".into()),
                    Layer::NoNewPrivs => (probe_ok, "PR_SET_NO_NEW_PRIVS".into()),
                    Layer::Landlock => match &self.landlock {
                        Some(policy) => (probe_ok, format!("ABI {}", policy.abi_version())),
                        None => (false, "not available in this kernel".into()),
                    },
                    Layer::Seccomp => match &self.seccomp {
                        Some(program) => (
                            probe_ok,
                            format!(
                                "{} instructions, {}",
                                program.len(),
                                if self.spawners.is_some() {
                                    "inherited by each job from a spawner thread (one per CPU)"
                                } else {
                                    "loaded by each job"
                                }
                            ),
                        ),
                        None => (false, self.seccomp_error.clone().unwrap_or_default()),
                    },
                    Layer::CleanEnvironment => (probe_ok, "allowlisted variables only".into()),
                    Layer::Views => match &self.views {
                        Ok(views) => (
                            probe_ok,
                            format!(
                                "a root of its own per running workspace: {} views in {}, {}",
                                views.len(),
                                views.dir().display(),
                                if views.all().iter().all(View::has_namespaces) {
                                    "each with its own user and network namespace"
                                } else {
                                    "without network namespaces of their own (jobs share \
                                     one: /proc/net/unix lists every tenant's sockets)"
                                }
                            ),
                        ),
                        Err(reason) => (false, reason.clone()),
                    },
                    Layer::NetworkIsolation => (
                        self.network_isolated,
                        if self.network_isolated {
                            "no interface but loopback".into()
                        } else {
                            "the host network is visible (run under the systemd unit with \
                             PrivateNetwork=yes, or as root with namespaces = \"auto\" or \
                             \"always\"); seccomp still refuses non-Unix sockets"
                                .into()
                        },
                    ),
                };
                let detail = match (probe_failure, active) {
                    (Some(failure), false) if layer != Layer::NetworkIsolation => {
                        format!("{detail}; probe job failed: {failure}")
                    }
                    _ => detail,
                };
                LayerStatus {
                    layer,
                    active,
                    required: self.required.contains(&layer),
                    detail,
                }
            })
            .collect()
    }

    /// The required layers that are not active; jobs run only when this is empty.
    pub fn missing_required(&self) -> Vec<LayerStatus> {
        self.layers
            .iter()
            .filter(|status| status.required && !status.active)
            .cloned()
            .collect()
    }

    /// Whom a job of a workspace owned by `user` runs as: that user when the executor is
    /// root (never root itself: the sandbox user stands in for a missing owner), else
    /// nobody else than ourselves.
    fn run_as(&self, user: Option<(u32, u32)>) -> Option<(u32, u32)> {
        self.identity
            .switch_to
            .map(|sandbox_user| user.filter(|(uid, _)| *uid != 0).unwrap_or(sandbox_user))
    }

    /// Name the account of `workspace` (home `home`, owned by `user`) in `view` (see
    /// [`View::name_account`]) as its jobs run: when the executor is root. Blocking.
    pub fn name_in_view(
        &self,
        view: &View,
        workspace: &str,
        home: &Path,
        user: Option<(u32, u32)>,
    ) -> Result<(), SandboxError> {
        let Some((uid, gid)) = self.run_as(user) else {
            return Ok(());
        };
        let account = crate::views::Account {
            name: workspace,
            uid,
            gid,
            home,
        };
        view.name_account(&account)
            .map_err(SandboxError::ViewAccount)
    }

    /// Start a job as `user` (its workspace's owner). Blocking (fork, then wait for exec).
    /// `writable` are the directories Landlock lets the job write.
    /// `view` is the workspace's view the job enters, when there are views.
    pub fn spawn(
        &self,
        command: &JobCommand,
        writable: &[&Path],
        user: Option<(u32, u32)>,
        view: Option<&View>,
    ) -> Result<SpawnedJob, SandboxError> {
        let (program, argv, envp) = spawn::command_strings(command)?;
        let direct = match &command.direct {
            Some(direct) => Some(spawn::DirectStrings::new(direct)?),
            None => None,
        };
        let workdir = spawn::open_workdir(&command.workdir, view)?;
        let code = match &command.code {
            Some(bytes) => Some(spawn::memfd_with(bytes).map_err(SandboxError::Pipe)?),
            None => None,
        };
        let landlock = self.landlock_ruleset(view, writable)?;
        // A spare has a cgroup already; it only needs this job's limit. The next spare is
        // made once this function returns, the job started.
        let (mut spare, _make_next) = self.spares.as_ref().and_then(spare::Spares::take).unzip();
        let cgroup = match spare.as_mut() {
            Some(spare) => {
                if let Some(cgroup) = spare.cgroup_mut() {
                    cgroup
                        .limit(command.limits.max_processes)
                        .map_err(SandboxError::Cgroup)?;
                }
                None
            }
            None => self.job_cgroup(&command.limits)?,
        };
        let plan = ChildPlan {
            program,
            argv,
            envp,
            workdir,
            inherit: code.into_iter().collect(),
            rlimits: spawn::rlimits_for(&command.limits, self.nproc_limit(&command.limits)),
            cgroup,
            identity: self.run_as(user),
            keep_capabilities: 0,
            landlock,
            view: view.map(View::fds),
            seccomp: self.seccomp.as_ref(),
            dispositions: &self.dispositions,
            direct,
            stdin: command.stdin,
        };
        spawn::spawn(plan, &self.reaper, spare, self.spawners.as_deref())
    }

    /// Start a Python job on the warm path: forked from the zygote (started on first use,
    /// and again after it dies), with the same layers as a cold job. Blocking.
    pub fn spawn_warm_python(
        &self,
        job: &zygote::WarmPython<'_>,
        writable: &[&Path],
        view: Option<&View>,
    ) -> Result<SpawnedJob, SandboxError> {
        let Some(program) = &self.seccomp else {
            return Err(SandboxError::Zygote(
                "the warm path needs the seccomp filter".into(),
            ));
        };
        let zygote = {
            let mut slot = self
                .zygote
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match slot.as_ref() {
                Some(zygote) if zygote.alive() => std::sync::Arc::clone(zygote),
                _ => {
                    let started = std::sync::Arc::new(zygote::Zygote::start(
                        self,
                        &self.python,
                        &self.zygote_dir,
                        program,
                        self.default_processes,
                    )?);
                    *slot = Some(std::sync::Arc::clone(&started));
                    started
                }
            }
        };
        let landlock = self.landlock_ruleset(view, writable)?;
        if zygote.wants_reservation()
            && let Ok(cgroups) = &self.cgroups
        {
            // For the spare to join ahead of the next job (see zygote.py); without one,
            // jobs join their own as they start.
            match cgroups.create(self.default_processes) {
                Ok(reserved) => {
                    if let Err(error) = zygote.reserve(reserved) {
                        tracing::warn!(error = %nox_protocol::error_chain(&error), "no cgroup reserved for the zygote");
                    }
                }
                Err(error) => tracing::warn!(%error, "no cgroup reserved for the zygote"),
            }
        }
        let cgroup = self.job_cgroup(job.limits)?;
        zygote.spawn(
            job,
            self.run_as(job.user),
            landlock,
            view,
            cgroup,
            self.nproc_limit(job.limits),
        )
    }

    /// The Landlock ruleset of a job in `view` that may write `writable`, when Landlock is
    /// there.
    fn landlock_ruleset(
        &self,
        view: Option<&View>,
        writable: &[&Path],
    ) -> Result<Option<Arc<std::os::fd::OwnedFd>>, SandboxError> {
        self.landlock
            .as_ref()
            .map(|policy| policy.ruleset(view, writable))
            .transpose()
    }

    /// The view a job of `workspace` runs in: `Ok(None)` when there are no views, an error
    /// when every view is held by other workspaces (there are as many as job slots, so
    /// only a straggling hold makes that happen).
    pub fn lease_view(&self, workspace: &str) -> Result<Option<ViewLease>, SandboxError> {
        match &self.views {
            Ok(views) => views.lease(workspace).map(Some).ok_or(SandboxError::NoView),
            Err(_) => Ok(None),
        }
    }

    /// The pid of the spare waiting for the next job, if one waits.
    pub fn spare_pid(&self) -> Option<i32> {
        self.spares.as_ref().and_then(spare::Spares::waiting)
    }

    /// A pids cgroup for a job with `limits`, when cgroups are available.
    fn job_cgroup(&self, limits: &Limits) -> Result<Option<cgroup::JobCgroup>, SandboxError> {
        match &self.cgroups {
            Ok(cgroups) => cgroups
                .create(limits.max_processes)
                .map(Some)
                .map_err(SandboxError::Cgroup),
            Err(_) => Ok(None),
        }
    }

    /// RLIMIT_NPROC for a job with `limits`: the job's own limit when it counts alone
    /// (uid), a backstop for the whole uid when its pids cgroup counts for it.
    fn nproc_limit(&self, limits: &Limits) -> u64 {
        match &self.cgroups {
            Ok(_) => self.nproc_backstop.max(limits.max_processes),
            Err(_) => limits.max_processes,
        }
        .saturating_add(self.process_allowance)
    }

    /// Kill the whole process group of a job whose leader has not been reaped. `zygote` is
    /// the zygote that forked it, for a job on the warm path.
    pub fn kill(&self, pid: i32, zygote: Option<&std::sync::Arc<zygote::Zygote>>) {
        match zygote {
            Some(zygote) => zygote.kill(pid),
            None => self.reaper.kill_group(pid),
        }
    }
}

/// The views in `config.views_dir` when jobs can use them, else why not.
fn open_views(config: &ExecutorConfig) -> Result<std::sync::Arc<Views>, String> {
    let dir = &config.views_dir;
    // Only root enters them (chroot, and the user namespaces root owns).
    if !nix::unistd::geteuid().is_root() {
        return Err("the executor is not root: jobs run in its own root".to_owned());
    }
    match Views::open(dir) {
        Ok(Some(views)) => {
            // Views made for another state directory (a packaged executor's, seen by a
            // development one) would not hold this one's workspaces.
            let holds =
                |view: &View| crate::views::inside(view.path(), &config.workspace_root).is_dir();
            if views.all().iter().all(holds) {
                Ok(views)
            } else {
                let reason = format!(
                    "the views in {} do not hold the workspace root {}",
                    dir.display(),
                    config.workspace_root.display()
                );
                tracing::warn!(reason, "jobs run without views");
                Err(reason)
            }
        }
        Ok(None) => Err(format!(
            "no views in {}: jobs share the system files' inodes (locks on them are a \
                 covert channel); under systemd nox-views.service makes them, outside it \
                 the executor as root in its own namespaces",
            dir.display()
        )),
        Err(error) => Err(format!(
            "could not open the views in {}: {error}",
            dir.display()
        )),
    }
}

/// Start `command` in new namespaces (`flags`, unshared in the child just before its
/// exec), first entering the user namespace `user` when given: how the views' namespaces
/// are made (see [`crate::views`]).
pub fn spawn_unshared(
    command: &mut std::process::Command,
    user: Option<std::os::fd::RawFd>,
    flags: nix::sched::CloneFlags,
) -> io::Result<std::process::Child> {
    // SAFETY: the closure runs in the forked child before exec and makes two system calls,
    // setns and unshare, both async-signal-safe, on a descriptor the parent keeps open
    // until `spawn` returns; it allocates nothing and touches no memory shared with the
    // parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if let Some(fd) = user
                && libc::syscall(libc::SYS_setns, fd, libc::CLONE_NEWUSER) != 0
            {
                return Err(io::Error::last_os_error());
            }
            nix::sched::unshare(flags).map_err(io::Error::from)
        });
    }
    command.spawn()
}

/// The kernel's Landlock ABI version, or a value below 1 when unavailable.
pub fn landlock_abi_version() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute and size 0 this call only reports the ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(version).unwrap_or(-1)
}

fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers; it fails with EINVAL without seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// True when `/proc/net/dev` lists no interface but `lo`.
fn only_loopback() -> bool {
    std::fs::read_to_string("/proc/net/dev").is_ok_and(|table| {
        table
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .all(|name| name.trim() == "lo")
    })
}

fn count_processes_of(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| entry.metadata().is_ok_and(|meta| meta.uid() == uid))
        .count();
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// `PR_SET_CHILD_SUBREAPER`: orphans of jobs are re-parented to the executor.
fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Block until some child has exited, without reaping it (`WNOWAIT`); its pid.
fn wait_any_exited() -> io::Result<i32> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value for the kernel to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` for an exited child, so si_pid is the valid field.
    Ok(unsafe { info.si_pid() })
}

/// Reap `pid`, which must be an exited child (seen by [`wait_any_exited`]).
fn reap_pid(pid: i32) -> io::Result<reaper::ExitReport> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is valid.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `rusage` are valid, writable locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok(reaper::ExitReport {
                status,
                usage: usage_of(&rusage),
                at: std::time::Instant::now(),
            });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

fn usage_of(rusage: &libc::rusage) -> nox_protocol::ResourceUsage {
    let ms = |time: libc::timeval| {
        u64::try_from(time.tv_sec).unwrap_or(0) * 1000
            + u64::try_from(time.tv_usec).unwrap_or(0) / 1000
    };
    nox_protocol::ResourceUsage {
        user_ms: ms(rusage.ru_utime),
        system_ms: ms(rusage.ru_stime),
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
    }
}

/// SIGKILL to every process of the group `pgid` (ESRCH, an empty group, is fine).
fn kill_process_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
