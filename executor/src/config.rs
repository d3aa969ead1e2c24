//! The executor's configuration: the `[executor]` section of `nox.toml` over built-in
//! defaults, then `NOX_*` variables (see `nox_protocol::config`). Every value is checked
//! at start by [`ExecutorConfig::validate`], with the key named in the error.

use std::path::PathBuf;

use nox_protocol::config::{ConfigError, ConfigFile, require_absolute};
use nox_protocol::{Layer, Limits};
use serde::{Deserialize, Serialize};

/// `[executor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Socket path bound when the executor is not socket-activated (mode 0660).
    pub socket: PathBuf,
    /// Group given to a socket the executor binds itself, when it exists.
    pub socket_group: String,
    /// State directory: workspaces and per-job scratch directories live here.
    pub state_dir: PathBuf,
    /// Where workspaces live; `<workspace_root>/<name>` per token. Seed: `NOX_SANDBOX`.
    pub workspace_root: PathBuf,
    /// Peers allowed to connect, besides root and the executor's own uid: by uid, or by
    /// group (primary or supplementary, names or numbers).
    pub allowed_uids: Vec<u32>,
    pub allowed_groups: Vec<String>,
    /// User the Python zygote and the start-up probe run as, when the executor is root.
    pub sandbox_user: String,
    /// First of the uids given to workspaces, one each (as root): a workspace's files and
    /// jobs are owned by its uid, and the gid of the same number.
    pub tenant_uid_first: u32,
    /// How many uids, from `tenant_uid_first`: the most workspaces one executor holds.
    pub tenant_uid_count: u32,
    /// The interpreter for Python jobs, by absolute path (never looked up on PATH).
    pub python: PathBuf,
    /// How Python jobs start: `zygote` (forked from a warm interpreter, every per-job layer
    /// applied in the fork) or `cold` (a fresh interpreter per job).
    pub python_mode: PythonMode,
    /// The shell for shell jobs, by absolute path.
    pub shell: PathBuf,
    /// `PATH` given to jobs.
    pub job_path: String,
    /// Extra directories jobs may read (Landlock); the system directories are always readable.
    pub extra_read_paths: Vec<PathBuf>,
    /// Disk each workspace may use, MiB (0: no quota). Enforced by nox itself: see
    /// `Workspaces::with_quota`.
    pub workspace_quota_mb: u64,
    /// Jobs running at once; 0 means twice the number of CPUs.
    pub max_concurrent_jobs: u32,
    /// Jobs waiting for a slot; more are refused with `Busy`.
    pub max_queued_jobs: u32,
    /// Layers that must be active for a job to run (fail closed). Names as in `/health`.
    pub required_layers: Vec<String>,
    /// Whether the executor makes its own network and mount namespaces at start
    /// (`auto`, `always`, `never`; see `namespaces`).
    pub namespaces: crate::namespaces::Namespaces,
    /// Where the workspaces' views are (`<views_dir>/0`, `/1`, …; see `views`): made by
    /// the executor in its own namespaces, else by `nox-executor views` before it starts.
    pub views_dir: PathBuf,
    /// Ceilings for every job's limits.
    pub limits: LimitsConfig,
}

/// How Python jobs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PythonMode {
    /// Forked from a pre-started interpreter: a few milliseconds instead of ~15.
    Zygote,
    /// A new interpreter per job.
    Cold,
}

/// `[executor.limits]`: ceilings, in the units operators think in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock seconds. Seed: `NOX_TIMEOUT`.
    pub timeout_s: f64,
    pub cpu_s: u64,
    pub memory_mb: u64,
    pub processes: u64,
    pub file_size_mb: u64,
    pub open_files: u64,
    pub output_kb: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            timeout_s: 30.0,
            cpu_s: 30,
            memory_mb: 1024,
            processes: 64,
            file_size_mb: 64,
            open_files: 256,
            output_kb: 1024,
        }
    }
}

impl LimitsConfig {
    /// The ceilings as the protocol carries them.
    pub fn ceilings(&self) -> Limits {
        const MIB: u64 = 1024 * 1024;
        Limits {
            // Validated to lie in (0, 86400], so the product fits and is positive.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            timeout_ms: (self.timeout_s * 1000.0).round() as u64,
            cpu_seconds: self.cpu_s,
            memory_bytes: self.memory_mb.saturating_mul(MIB),
            max_processes: self.processes,
            max_file_bytes: self.file_size_mb.saturating_mul(MIB),
            max_open_files: self.open_files,
            max_output_bytes: self.output_kb.saturating_mul(1024),
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            socket: "/run/nox/executor.sock".into(),
            socket_group: "nox".into(),
            state_dir: "/var/lib/nox".into(),
            workspace_root: "/var/lib/nox/workspaces".into(),
            allowed_uids: Vec::new(),
            allowed_groups: vec!["nox".into()],
            sandbox_user: "nox-sandbox".into(),
            tenant_uid_first: 2_000_000_000,
            tenant_uid_count: 65_536,
            workspace_quota_mb: 1024,
            python: "/usr/bin/python3".into(),
            python_mode: PythonMode::Zygote,
            shell: "/bin/sh".into(),
            job_path: "/usr/local/bin:/usr/bin:/bin".into(),
            extra_read_paths: Vec::new(),
            max_concurrent_jobs: 0,
            max_queued_jobs: 64,
            required_layers: [
                Layer::ProcessGroup,
                Layer::Rlimits,
                Layer::NoCapabilities,
                Layer::NoNewPrivs,
                Layer::Landlock,
                Layer::Seccomp,
                Layer::CleanEnvironment,
            ]
            .iter()
            .map(|layer| layer.name().to_owned())
            .collect(),
            namespaces: crate::namespaces::Namespaces::Auto,
            views_dir: "/var/lib/nox-views".into(),
            limits: LimitsConfig::default(),
        }
    }
}

impl ExecutorConfig {
    /// Defaults, then the file, then the environment; then [`ExecutorConfig::validate`].
    pub fn load(file: &ConfigFile) -> Result<ExecutorConfig, ConfigError> {
        let config: ExecutorConfig =
            nox_protocol::config::load("executor", file, ExecutorConfig::default())?;
        config.validate()?;
        Ok(config)
    }

    /// Check what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_absolute("executor.socket", &self.socket)?;
        require_absolute("executor.state_dir", &self.state_dir)?;
        require_absolute("executor.workspace_root", &self.workspace_root)?;
        require_absolute("executor.python", &self.python)?;
        require_absolute("executor.shell", &self.shell)?;
        require_absolute("executor.views_dir", &self.views_dir)?;
        for path in &self.extra_read_paths {
            require_absolute("executor.extra_read_paths", path)?;
        }
        for name in &self.required_layers {
            if Layer::from_name(name).is_none() {
                let known: Vec<&str> = Layer::ALL.iter().map(|layer| layer.name()).collect();
                return Err(ConfigError::invalid(
                    "executor.required_layers",
                    format!("unknown layer `{name}` (known: {})", known.join(", ")),
                ));
            }
        }
        if self.tenant_uid_first < 65_536 {
            return Err(ConfigError::invalid(
                "executor.tenant_uid_first",
                "at least 65536, above every ordinary user and system user",
            ));
        }
        if self.tenant_uid_count == 0
            || u64::from(self.tenant_uid_first) + u64::from(self.tenant_uid_count)
                > u64::from(i32::MAX.unsigned_abs())
        {
            return Err(ConfigError::invalid(
                "executor.tenant_uid_count",
                "at least 1, and the range must end below 2^31 (some tools read uids as signed)",
            ));
        }
        if self.max_queued_jobs > 100_000 {
            return Err(ConfigError::invalid(
                "executor.max_queued_jobs",
                "at most 100000",
            ));
        }
        if self.max_concurrent_jobs > 4096 {
            return Err(ConfigError::invalid(
                "executor.max_concurrent_jobs",
                "at most 4096",
            ));
        }
        let limits = &self.limits;
        if !(limits.timeout_s > 0.0 && limits.timeout_s <= 86_400.0) {
            return Err(ConfigError::invalid(
                "executor.limits.timeout_s",
                "must be more than 0 and at most 86400 seconds",
            ));
        }
        let positive = [
            ("executor.limits.cpu_s", limits.cpu_s),
            ("executor.limits.memory_mb", limits.memory_mb),
            ("executor.limits.processes", limits.processes),
            ("executor.limits.open_files", limits.open_files),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if limits.memory_mb < 32 {
            return Err(ConfigError::invalid(
                "executor.limits.memory_mb",
                "must be at least 32 (an interpreter cannot start with less)",
            ));
        }
        Ok(())
    }

    /// The disk quota per workspace, bytes.
    pub fn workspace_quota(&self) -> Option<u64> {
        (self.workspace_quota_mb > 0).then(|| self.workspace_quota_mb.saturating_mul(1 << 20))
    }

    /// The uids workspaces are given.
    pub fn tenant_uids(&self) -> crate::owners::UidRange {
        crate::owners::UidRange {
            first: self.tenant_uid_first,
            count: self.tenant_uid_count,
        }
    }

    /// The layers configured as required.
    pub fn required(&self) -> Vec<Layer> {
        self.required_layers
            .iter()
            .filter_map(|name| Layer::from_name(name))
            .collect()
    }

    /// `max_concurrent_jobs`, with 0 resolved to twice the CPU count.
    pub fn concurrency(&self) -> u32 {
        if self.max_concurrent_jobs > 0 {
            return self.max_concurrent_jobs;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        u32::try_from(cpus.saturating_mul(2)).unwrap_or(u32::MAX)
    }

    /// How many views to make: one per job that may run at once, so a job never waits for
    /// one (each running job holds at most one).
    pub fn view_count(&self) -> usize {
        usize::try_from(self.concurrency()).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        ExecutorConfig::default().validate().unwrap();
    }

    #[test]
    fn a_relative_path_or_an_unknown_layer_is_refused_with_its_key() {
        let config = ExecutorConfig {
            python: "python3".into(),
            ..ExecutorConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("executor.python")
        );
        let config = ExecutorConfig {
            required_layers: vec!["seccmop".into()],
            ..ExecutorConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("seccmop"), "{message}");
    }

    #[test]
    fn the_timeout_ceiling_must_be_positive() {
        let mut config = ExecutorConfig::default();
        config.limits.timeout_s = 0.0;
        assert!(config.validate().is_err());
        config.limits.timeout_s = 2.5;
        config.validate().unwrap();
        assert_eq!(config.limits.ceilings().timeout_ms, 2_500);
    }
}
