//! The bodies of the HTTP API, as Rust types: what the handlers parse and what they
//! serialize. The OpenAPI document (`openapi`) is derived from these same types, so the
//! published schema and the bytes on the wire cannot drift apart.
//!
//! Protocol types (`nox_protocol`) are never serialized to HTTP directly: each has a mirror
//! here, built by a `From` impl, so a change on the wire between the daemons is a compile
//! error here rather than a silent change of the public API.

use std::collections::BTreeMap;

use nox_protocol::{EntryKind, ExecutorStatus, ExitStatus, JobOutcome, LimitHit, Limits};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// `limits`: an object or null. (serde would also fill the struct from an array.)
fn limits_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<LimitsBody>, D::Error> {
    struct ObjectOrNull;

    impl<'de> serde::de::Visitor<'de> for ObjectOrNull {
        type Value = Option<LimitsBody>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an object or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, inner: D2) -> Result<Self::Value, D2::Error> {
            inner.deserialize_any(ObjectOrNull)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            // The derived impl reads the map itself: unknown and duplicate keys are refused.
            LimitsBody::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_option(ObjectOrNull)
}

/// `POST /run_py`. Unknown fields are ignored, as the seed did.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"code": "print(6 * 7)", "timeout_s": 5}))]
pub struct RunPython {
    /// Python source; saved in the workspace as `filename` and run by the system python3.
    pub code: String,
    /// Relative path in the workspace the code is saved as.
    #[serde(default = "default_filename")]
    #[schema(default = "run.py", example = "run.py")]
    pub filename: String,
    /// Given to the job on its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall-clock timeout in seconds (may be fractional); may only lower the ceiling.
    #[serde(default)]
    #[schema(minimum = 0, example = 5)]
    pub timeout_s: Option<f64>,
    #[serde(default, deserialize_with = "limits_object")]
    pub limits: Option<LimitsBody>,
}

fn default_filename() -> String {
    "run.py".to_owned()
}

/// `POST /run_sh`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"cmd": "ls -la; python3 hello.py", "timeout_s": 5}))]
pub struct RunShell {
    /// A command line for `/bin/sh -c`.
    pub cmd: String,
    /// Given to the job on its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall-clock timeout in seconds (may be fractional); may only lower the ceiling.
    #[serde(default)]
    #[schema(minimum = 0, example = 5)]
    pub timeout_s: Option<f64>,
    #[serde(default, deserialize_with = "limits_object")]
    pub limits: Option<LimitsBody>,
}

/// Per-request limits, in the units of the configuration; each may only lower the
/// configured ceiling (the executor clamps). Values are rounded up.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"memory_mb": 256, "output_kb": 64}))]
pub struct LimitsBody {
    /// CPU seconds (RLIMIT_CPU).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub cpu_s: Option<f64>,
    /// Address space in MiB (RLIMIT_AS).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub memory_mb: Option<f64>,
    /// Processes of the sandbox user (RLIMIT_NPROC).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub processes: Option<f64>,
    /// Largest file the job may write, MiB (RLIMIT_FSIZE).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub file_size_mb: Option<f64>,
    /// Open file descriptors (RLIMIT_NOFILE).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub open_files: Option<f64>,
    /// Output per stream in KiB; past it the job is stopped.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub output_kb: Option<f64>,
}

/// The limit that ended a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitName {
    Timeout,
    Output,
    Cpu,
    FileSize,
    /// The workspace's disk quota.
    Disk,
}

impl From<LimitHit> for LimitName {
    fn from(limit: LimitHit) -> Self {
        match limit {
            LimitHit::Timeout => LimitName::Timeout,
            LimitHit::Output => LimitName::Output,
            LimitHit::Cpu => LimitName::Cpu,
            LimitHit::FileSize => LimitName::FileSize,
            LimitHit::Disk => LimitName::Disk,
        }
    }
}

/// Resource usage of the job's main process and the children it waited for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub user_ms: u64,
    pub system_ms: u64,
    pub max_rss_kib: u64,
}

/// How a job ended: every field of a run reply but its output.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "returncode": 0, "timed_out": false, "signal": null, "limit_hit": null,
    "duration_ms": 31, "queued_ms": 0, "stdout_truncated": false, "stderr_truncated": false,
    "job_id": "9f1c2a7e4b3d5f60", "usage": {"user_ms": 20, "system_ms": 8, "max_rss_kib": 9000}
}))]
pub struct JobSummary {
    /// The exit code, or minus the signal number (`-9` after a timeout), as Python's
    /// `subprocess` reports it.
    pub returncode: i64,
    /// True when the wall-clock timeout killed the job.
    pub timed_out: bool,
    /// The signal that killed the job's main process, if one did.
    pub signal: Option<i32>,
    /// Which limit ended the job, if one did.
    pub limit_hit: Option<LimitName>,
    /// Wall time of the job.
    pub duration_ms: u64,
    /// Time the job waited for a free slot before it started.
    pub queued_ms: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub job_id: String,
    pub usage: Usage,
}

impl JobSummary {
    /// The summary of `outcome`, for a job that waited `queued_ms` for its slot.
    pub fn new(outcome: &JobOutcome, queued_ms: u64) -> Self {
        let signal = match outcome.status {
            ExitStatus::Signaled(signal) => Some(signal),
            ExitStatus::Exited(_) => None,
        };
        JobSummary {
            returncode: returncode(outcome.status),
            timed_out: outcome.timed_out,
            signal,
            limit_hit: outcome.limit_hit.map(LimitName::from),
            duration_ms: outcome.duration_ms,
            queued_ms,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            job_id: outcome.job_id.clone(),
            usage: Usage {
                user_ms: outcome.usage.user_ms,
                system_ms: outcome.usage.system_ms,
                max_rss_kib: outcome.usage.max_rss_kib,
            },
        }
    }
}

/// Python's `subprocess` convention: the exit code, or minus the signal number.
pub fn returncode(status: ExitStatus) -> i64 {
    match status {
        ExitStatus::Exited(code) => i64::from(code),
        ExitStatus::Signaled(signal) => -i64::from(signal),
    }
}

/// The reply to `/run_py` and `/run_sh` (200 whatever the job did: a failing job is an
/// outcome, not an HTTP error).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "returncode": 0, "stdout": "42\n", "stderr": "", "timed_out": false, "signal": null,
    "limit_hit": null, "duration_ms": 31, "queued_ms": 0, "stdout_truncated": false,
    "stderr_truncated": false, "job_id": "9f1c2a7e4b3d5f60",
    "usage": {"user_ms": 20, "system_ms": 8, "max_rss_kib": 9000}
}))]
pub struct RunReply {
    /// Standard output, decoded as UTF-8 (invalid bytes become U+FFFD).
    pub stdout: String,
    /// Standard error, decoded as UTF-8.
    pub stderr: String,
    #[serde(flatten)]
    pub summary: JobSummary,
}

/// One event of a streamed job (`Accept: application/x-ndjson`: one JSON object per line;
/// `Accept: text/event-stream`: the same objects as server-sent events named by `type`).
/// A stream is `started`, then `stdout`/`stderr` chunks, then `finished` or `error`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job was admitted and its process exists.
    Started { job_id: String },
    /// Output on standard output, decoded as UTF-8 across chunk boundaries.
    Stdout { data: String },
    /// Output on standard error.
    Stderr { data: String },
    /// The job ended; the last event.
    Finished(JobSummary),
    /// The job could not be followed to its end (the executor went away).
    Error { error: String, message: String },
}

/// `{"saved": path, "bytes": n}`: a file written by `/put` or `PUT /files/{path}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"saved": "dir/hello.py", "bytes": 42}))]
pub struct SavedReply {
    /// The path, relative to the workspace.
    pub saved: String,
    pub bytes: u64,
}

/// `{"deleted": path}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"deleted": "dir/hello.py"}))]
pub struct DeletedReply {
    pub deleted: String,
}

/// The kind of a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Other,
}

impl From<EntryKind> for EntryType {
    fn from(kind: EntryKind) -> Self {
        match kind {
            EntryKind::File => EntryType::File,
            EntryKind::Dir => EntryType::Dir,
            EntryKind::Symlink => EntryType::Symlink,
            EntryKind::Other => EntryType::Other,
        }
    }
}

/// One listed entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileEntryBody {
    /// Relative to the workspace.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// `GET /files`: the workspace's entries under a prefix, recursively.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "files": [{"path": "dir/hello.py", "type": "file", "size": 42, "modified_ms": 1767225600000_u64}],
    "truncated": false
}))]
pub struct FileListing {
    pub files: Vec<FileEntryBody>,
    /// More entries exist than a listing carries.
    pub truncated: bool,
}

/// The uniform error body of every 4xx and 5xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "error": "unauthorized", "message": "missing or invalid bearer token",
    "detail": "missing or invalid bearer token"
}))]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `invalid_json`, `invalid_path`, `forbidden_command`,
    /// `unauthorized`, `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `headers_too_large`, `internal`, `bad_gateway`, `busy`,
    /// `executor_unavailable`, `sandbox_unavailable`.
    pub error: String,
    /// What went wrong, for humans.
    pub message: String,
    /// The same text as `message` (scripts written for the seed read `detail`).
    pub detail: String,
}

/// `status` of `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Every required sandbox layer is active.
    Ok,
    /// A required layer is not active: jobs are refused with 503 `sandbox_unavailable`.
    Degraded,
}

/// The ceilings every job's limits are clamped to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CeilingsBody {
    pub timeout_ms: u64,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub max_processes: u64,
    pub max_file_bytes: u64,
    pub max_open_files: u64,
    pub max_output_bytes: u64,
}

impl From<&Limits> for CeilingsBody {
    fn from(limits: &Limits) -> Self {
        CeilingsBody {
            timeout_ms: limits.timeout_ms,
            cpu_seconds: limits.cpu_seconds,
            memory_bytes: limits.memory_bytes,
            max_processes: limits.max_processes,
            max_file_bytes: limits.max_file_bytes,
            max_open_files: limits.max_open_files,
            max_output_bytes: limits.max_output_bytes,
        }
    }
}

/// Whether one sandbox layer is in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerBody {
    pub active: bool,
    /// Configured as required: jobs are refused while it is not active.
    pub required: bool,
    pub detail: String,
}

/// What the executor says about itself.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutorHealth {
    /// Always true here (an unreachable executor makes `/health` answer 503).
    pub reachable: bool,
    /// Jobs can run: every required layer is active.
    pub ready: bool,
    pub software: String,
    pub uptime_ms: u64,
    pub jobs_running: u32,
    pub jobs_queued: u32,
    pub max_concurrent_jobs: u32,
    pub max_queued_jobs: u32,
    pub limits: CeilingsBody,
    /// By layer name: `process_group`, `rlimits`, `sandbox_user`, `no_capabilities`,
    /// `no_new_privs`, `landlock`, `seccomp`, `clean_environment`, `network_isolation`.
    pub layers: BTreeMap<String, LayerBody>,
}

/// `GET /health` when the executor answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "status": "ok", "version": "0.1.0",
    "executor": {"reachable": true, "ready": true, "software": "nox-executor 0.1.0",
        "uptime_ms": 5012, "jobs_running": 0, "jobs_queued": 0, "max_concurrent_jobs": 4,
        "max_queued_jobs": 64,
        "limits": {"timeout_ms": 30000, "cpu_seconds": 30, "memory_bytes": 1073741824_u64,
            "max_processes": 64, "max_file_bytes": 67108864, "max_open_files": 256,
            "max_output_bytes": 1048576},
        "layers": {"seccomp": {"active": true, "required": true, "detail": "filter installed"}}}
}))]
pub struct HealthReply {
    pub status: HealthState,
    /// The frontend's version.
    pub version: String,
    pub executor: ExecutorHealth,
}

impl From<&ExecutorStatus> for HealthReply {
    fn from(status: &ExecutorStatus) -> Self {
        let layers = status
            .layers
            .iter()
            .map(|layer| {
                (
                    layer.layer.name().to_owned(),
                    LayerBody {
                        active: layer.active,
                        required: layer.required,
                        detail: layer.detail.clone(),
                    },
                )
            })
            .collect();
        HealthReply {
            status: if status.ready {
                HealthState::Ok
            } else {
                HealthState::Degraded
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
            executor: ExecutorHealth {
                reachable: true,
                ready: status.ready,
                software: status.software.clone(),
                uptime_ms: status.uptime_ms,
                jobs_running: status.jobs_running,
                jobs_queued: status.jobs_queued,
                max_concurrent_jobs: status.max_concurrent_jobs,
                max_queued_jobs: status.max_queued_jobs,
                limits: CeilingsBody::from(&status.ceilings),
                layers,
            },
        }
    }
}

/// `{"reachable": false}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutorUnreachable {
    pub reachable: bool,
}

/// `GET /health` (503) when the executor cannot be reached: the error body plus
/// `"status": "unavailable"`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "error": "executor_unavailable", "message": "cannot connect to the executor",
    "detail": "cannot connect to the executor", "status": "unavailable", "version": "0.1.0",
    "executor": {"reachable": false}
}))]
pub struct HealthUnavailable {
    #[serde(flatten)]
    pub error: ErrorBody,
    /// Always `"unavailable"`.
    pub status: String,
    pub version: String,
    pub executor: ExecutorUnreachable,
}

/// Memory of the host, from `/proc/meminfo` (or `sysinfo(2)` where `/proc` is hidden).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemoryStatus {
    /// Bytes.
    pub total: u64,
    /// Bytes available to new programs without swapping (`MemAvailable`).
    pub available: u64,
    pub used_percent: f64,
}

/// The file system holding the state directory, as the frontend sees it (`statvfs`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DiskStatus {
    pub path: String,
    /// Bytes.
    pub total: u64,
    /// Bytes available to unprivileged users.
    pub free: u64,
    pub used_percent: f64,
}

/// `GET /system`: the host at a glance. A value the frontend cannot read (a hardened
/// unit hides `/proc/stat` with `ProcSubset=pid`) is `null`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "cpu_percent": 3.5,
    "memory": {"total": 8_000_000_000_u64, "available": 6_000_000_000_u64, "used_percent": 25.0},
    "disk": {"path": "/var/lib/nox", "total": 100_000_000_000_u64, "free": 60_000_000_000_u64,
        "used_percent": 40.0},
    "uptime_s": 86400, "load": [0.1, 0.2, 0.3]
}))]
pub struct SystemStatus {
    /// CPU busy time of the whole host over a short window, 0-100.
    pub cpu_percent: Option<f64>,
    pub memory: Option<MemoryStatus>,
    pub disk: Option<DiskStatus>,
    /// Seconds since the host booted.
    pub uptime_s: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
}

/// One unit's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ServiceStatus {
    pub unit: String,
    /// systemd's `ActiveState` (`active`, `inactive`, `failed`, `activating`,
    /// `deactivating`, `reloading`); `unknown` for a unit systemd does not know;
    /// `unavailable` outside systemd.
    pub state: String,
}

/// `GET /services`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "services": [{"unit": "nox-frontend.service", "state": "active"},
                 {"unit": "nox-executor.service", "state": "inactive"}],
    "source": "systemctl"
}))]
pub struct ServicesReply {
    pub services: Vec<ServiceStatus>,
    /// How the states were read: `systemctl`, `cgroup` (systemctl could not reach systemd:
    /// only `active` and `inactive` are told apart) or `none` (not under systemd).
    pub source: String,
}

/// `POST /actions/restart` (202).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"restarting": true}))]
pub struct RestartReply {
    pub restarting: bool,
}

#[cfg(test)]
mod tests {
    use nox_protocol::ResourceUsage;
    use serde_json::json;

    use super::*;

    fn outcome(status: ExitStatus) -> JobOutcome {
        JobOutcome {
            job_id: "j1".into(),
            status,
            timed_out: false,
            limit_hit: None,
            duration_ms: 12,
            usage: ResourceUsage {
                user_ms: 1,
                system_ms: 2,
                max_rss_kib: 3,
            },
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    #[test]
    fn a_run_reply_has_the_fields_the_readme_promises() {
        let reply = RunReply {
            stdout: "42\n".into(),
            stderr: String::new(),
            summary: JobSummary::new(&outcome(ExitStatus::Exited(0)), 5),
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({
                "returncode": 0, "stdout": "42\n", "stderr": "", "timed_out": false,
                "signal": null, "limit_hit": null, "duration_ms": 12, "queued_ms": 5,
                "stdout_truncated": false, "stderr_truncated": false, "job_id": "j1",
                "usage": {"user_ms": 1, "system_ms": 2, "max_rss_kib": 3},
            })
        );
    }

    #[test]
    fn a_signal_is_a_negative_returncode_and_is_named() {
        let summary = JobSummary::new(&outcome(ExitStatus::Signaled(9)), 0);
        assert_eq!((summary.returncode, summary.signal), (-9, Some(9)));
        assert_eq!(returncode(ExitStatus::Exited(3)), 3);
    }

    #[test]
    fn events_are_tagged_by_type() {
        let started = JobEvent::Started { job_id: "j".into() };
        assert_eq!(
            serde_json::to_value(&started).unwrap(),
            json!({"type": "started", "job_id": "j"})
        );
        let finished = JobEvent::Finished(JobSummary::new(&outcome(ExitStatus::Exited(1)), 0));
        let value = serde_json::to_value(&finished).unwrap();
        assert_eq!(value["type"], "finished");
        assert_eq!(value["returncode"], 1);
        assert_eq!(
            serde_json::to_value(LimitName::FileSize).unwrap(),
            "file_size"
        );
    }

    #[test]
    fn a_run_request_takes_the_seed_fields_and_ignores_unknown_ones() {
        let body: RunPython =
            serde_json::from_value(json!({"code": "print(1)", "extra": true})).unwrap();
        assert_eq!(body.filename, "run.py");
        assert!(body.stdin.is_none() && body.limits.is_none());
        assert!(serde_json::from_value::<RunShell>(json!({"command": "ls"})).is_err());
        let array_limits = json!({"cmd": "ls", "limits": [null, null]});
        assert!(serde_json::from_value::<RunShell>(array_limits).is_err());
        let object_limits = json!({"cmd": "ls", "limits": {"cpu_s": 1}});
        let body: RunShell = serde_json::from_value(object_limits).unwrap();
        assert_eq!(body.limits.unwrap().cpu_s, Some(1.0));
        let body: RunShell = serde_json::from_str(r#"{"cmd": "ls", "limits": null}"#).unwrap();
        assert!(body.limits.is_none());
        let duplicate = r#"{"cmd": "ls", "limits": {"cpu_s": 1, "cpu_s": 2}}"#;
        assert!(serde_json::from_str::<RunShell>(duplicate).is_err());
        assert!(serde_json::from_str::<RunShell>(r#"{"cmd": "a", "cmd": "b"}"#).is_err());
    }
}
