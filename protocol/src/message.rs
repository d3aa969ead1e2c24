//! Message types. Wire types avoid every serde attribute bincode cannot honour
//! (`flatten`, `tag`, `untagged`, `skip*`): the format is not self-describing.

use serde::{Deserialize, Serialize};

use crate::limits::{LimitRequest, Limits};

/// Frames the frontend sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First frame of every connection.
    Hello(Hello),
    /// Run one job; answered by `Started`, `Output`*, `Finished`.
    Run(JobSpec),
    /// Ask for health, limits and the sandbox layers in force; answered by `Status`.
    Status,
    /// Begin an upload; followed by `PutChunk`* and `PutEnd`, answered by `Saved`.
    PutStart(PutStart),
    /// Part of the file being uploaded, at most [`crate::MAX_CHUNK_LEN`] bytes.
    PutChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The upload is complete: commit it.
    PutEnd,
    /// Download a file; answered by `FileStart`, `FileChunk`*, `FileEnd`.
    Get(FileRef),
    /// List files under a prefix; answered by `Listing`.
    List(ListRequest),
    /// Delete a file or an empty directory; answered by `Deleted`.
    Delete(FileRef),
    /// Abandon the job running on this connection (the client went away).
    Cancel,
}

/// Frames the executor sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Hello(Hello),
    Started(JobStarted),
    Output(OutputChunk),
    Finished(JobOutcome),
    Status(ExecutorStatus),
    Saved(Saved),
    FileStart(FileMeta),
    FileChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    FileEnd,
    Listing(Listing),
    Deleted(FileRef),
    Error(WireError),
}

/// Handshake, identical in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`] on the other side.
    pub version: u32,
    /// Who is speaking, for logs (`"nox-frontend 0.1.0"`).
    pub software: String,
}

impl Hello {
    /// The hello this build sends.
    pub fn new(software: &str) -> Self {
        Hello {
            version: crate::PROTOCOL_VERSION,
            software: format!("{software} {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// One job, as the frontend asks for it. The executor re-validates every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Chosen by the frontend so both daemons log the same id (see `validate_job_id`).
    pub job_id: String,
    /// Workspace the job runs in (see `validate_workspace_name`).
    pub workspace: String,
    pub program: Program,
    /// Bytes given to the job on its standard input.
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    /// What the client asked for; the executor clamps it to its ceilings.
    pub limits: LimitRequest,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// Python source, saved in the workspace as `filename` and run by the system python3.
    Python { code: String, filename: String },
    /// A command line for `/bin/sh -c`.
    Shell { command: String },
}

impl Program {
    /// Short name for logs and metrics.
    pub fn language(&self) -> &'static str {
        match self {
            Program::Python { .. } => "python",
            Program::Shell { .. } => "shell",
        }
    }
}

/// The job was admitted and its process exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: String,
    /// Time spent waiting for a free slot.
    pub queued_ms: u64,
    /// Limits in force for this job (the request clamped to the ceilings).
    pub limits: Limits,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Output as the job wrote it, at most [`crate::MAX_CHUNK_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub stream: Stream,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// How the job's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

/// A limit that ended the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitHit {
    /// Wall-clock timeout.
    Timeout,
    /// Output past the cap; the job was killed.
    Output,
    /// CPU time (SIGXCPU / SIGKILL from RLIMIT_CPU).
    Cpu,
    /// A file grew past the file-size limit (SIGXFSZ).
    FileSize,
    /// The workspace grew past its disk quota; the job was killed.
    Disk,
}

/// Resource usage of the job's main process and the children it waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub user_ms: u64,
    pub system_ms: u64,
    pub max_rss_kib: u64,
}

/// The end of a job. User code failing is an outcome, never an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub job_id: String,
    pub status: ExitStatus,
    /// True when the wall-clock timeout killed the job.
    pub timed_out: bool,
    /// Which limit ended the job, if one did.
    pub limit_hit: Option<LimitHit>,
    /// Wall time from start to the end of the main process.
    pub duration_ms: u64,
    pub usage: ResourceUsage,
    /// Output bytes delivered; more was written and dropped when the flag is set.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Start of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutStart {
    pub workspace: String,
    /// Relative path inside the workspace; intermediate directories are created.
    pub path: String,
}

/// A file saved by an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub path: String,
    pub bytes: u64,
}

/// A path inside a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub workspace: String,
    pub path: String,
}

/// Start of a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub path: String,
    pub size: u64,
}

/// Which files to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub workspace: String,
    /// Relative directory to list recursively; empty for the whole workspace.
    pub prefix: String,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the workspace.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// The kind of a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A listing, capped at [`crate::MAX_LISTING_ENTRIES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<FileEntry>,
    pub truncated: bool,
}

/// A sandbox layer the executor applies to each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layer {
    /// Own process group, killed whole on timeout and at exit.
    ProcessGroup,
    /// rlimits: CPU, address space, processes, file size, open files, no core.
    Rlimits,
    /// Runs as the sandbox user, not as the executor's user.
    SandboxUser,
    /// No capabilities in any set.
    NoCapabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Landlock: read-only system, read-write workspace, nothing else.
    Landlock,
    /// seccomp filter.
    Seccomp,
    /// Environment rebuilt from an allowlist; no inherited descriptors.
    CleanEnvironment,
    /// No network interface but loopback in the executor's namespace.
    NetworkIsolation,
    /// A root of its own per running workspace: system files are not shared inodes.
    Views,
}

impl Layer {
    /// Every layer, in the order the executor reports them.
    pub const ALL: [Layer; 10] = [
        Layer::ProcessGroup,
        Layer::Rlimits,
        Layer::SandboxUser,
        Layer::NoCapabilities,
        Layer::NoNewPrivs,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::CleanEnvironment,
        Layer::NetworkIsolation,
        Layer::Views,
    ];

    /// The name used in configuration and in `/health`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::ProcessGroup => "process_group",
            Layer::Rlimits => "rlimits",
            Layer::SandboxUser => "sandbox_user",
            Layer::NoCapabilities => "no_capabilities",
            Layer::NoNewPrivs => "no_new_privs",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::CleanEnvironment => "clean_environment",
            Layer::NetworkIsolation => "network_isolation",
            Layer::Views => "views",
        }
    }

    /// Inverse of [`Layer::name`].
    pub fn from_name(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|layer| layer.name() == name)
    }
}

/// Whether one layer is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatus {
    pub layer: Layer,
    pub active: bool,
    /// Configured as required: jobs are refused while it is not active.
    pub required: bool,
    /// Human-readable detail ("ABI 7", "uid 996 (nox-sandbox)", "not root").
    pub detail: String,
}

/// The executor's answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    pub software: String,
    pub uptime_ms: u64,
    /// Jobs can be run: every required layer is active.
    pub ready: bool,
    pub layers: Vec<LayerStatus>,
    pub jobs_running: u32,
    pub jobs_queued: u32,
    pub max_concurrent_jobs: u32,
    pub max_queued_jobs: u32,
    /// The ceilings every job's limits are clamped to.
    pub ceilings: Limits,
}

/// The only error shape on the wire: a closed kind and the message chain, top first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub chain: Vec<String>,
}

impl WireError {
    /// An error with a single message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            chain: vec![message.into()],
        }
    }

    /// An error built from a Rust error and its `source()` chain.
    pub fn from_error(kind: ErrorKind, error: &(dyn std::error::Error + 'static)) -> Self {
        WireError {
            kind,
            chain: causes(error).map(ToString::to_string).collect(),
        }
    }

    /// The chain joined for humans: `"top: cause: root cause"`.
    pub fn message(&self) -> String {
        self.chain.join(": ")
    }
}

/// An error followed by its `source()` chain, top first.
pub fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
}

/// An error and its causes on one line, top first: `"top: cause: root cause"` (for logs and
/// messages; each level's `Display` describes only that level).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message())
    }
}

impl std::error::Error for WireError {}

/// Kinds of failure; the frontend maps each to one HTTP status, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or violates a rule (400).
    BadRequest,
    /// The path is not a plain relative path inside the workspace (400).
    InvalidPath,
    /// No such file or directory (404).
    NotFound,
    /// The path exists with the wrong type, or a directory is not empty (409).
    Conflict,
    /// Too large for a limit (413).
    TooLarge,
    /// The job queue is full; try again later (503 with Retry-After).
    Busy,
    /// A sandbox layer configured as required cannot be applied (503).
    SandboxUnavailable,
    /// The peer speaks another protocol version (502).
    ProtocolMismatch,
    /// Anything else: a bug or an operating-system failure (500).
    Internal,
    /// The workspace is over its disk quota: delete files first (507).
    QuotaExceeded,
}
