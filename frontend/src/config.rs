//! The `[frontend]` section of the configuration (see `nox_protocol::config` for layering and
//! the `NOX_*` variables), its validation, and the API tokens.
//!
//! Tokens come from `api_token` (seed: `NOX_API_TOKEN`), from each of `token_files`, and from
//! the systemd credential `$CREDENTIALS_DIRECTORY/api-token` when it exists. A token file
//! holds one token per line, `TOKEN` (workspace `default`) or `WORKSPACE TOKEN`; empty lines
//! and lines starting with `#` are skipped. No message here ever contains a token.

use std::fmt;
use std::path::{Path, PathBuf};

use nox_protocol::config::{ConfigError, require_absolute};
use nox_protocol::validate_workspace_name;
use serde::{Deserialize, Serialize};

use crate::auth::Tokens;

/// The workspace of a token given without one.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Tokens shorter than this are accepted (the seed allowed them) with a warning.
pub const SHORT_TOKEN_LEN: usize = 16;

/// The systemd credential read automatically when `$CREDENTIALS_DIRECTORY` is set.
pub const CREDENTIAL_NAME: &str = "api-token";

/// `[frontend]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendConfig {
    /// Address bound when no socket is inherited from systemd. Seed: `NOX_BIND_ADDR`.
    pub bind_addr: String,
    /// Port bound when no socket is inherited. Seed: `NOX_PORT`.
    pub port: u16,
    /// A token for workspace `default`. Seed: `NOX_API_TOKEN`. Prefer `token_files` or the
    /// `api-token` credential: the environment is visible to the process's children.
    pub api_token: Option<String>,
    /// Files of `TOKEN` or `WORKSPACE TOKEN` lines.
    pub token_files: Vec<PathBuf>,
    /// The executor's Unix socket.
    pub executor_socket: PathBuf,
    /// How long connecting to the executor (connect and handshake) may take before the
    /// request is answered 503.
    pub executor_connect_timeout_ms: u64,
    /// Largest JSON request body (`/run_py`, `/run_sh`).
    pub max_json_body_bytes: u64,
    /// Largest uploaded file (`/put`, `PUT /files/..`).
    pub max_upload_bytes: u64,
    /// Largest total size of a request's header fields; more is answered 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more is answered 431.
    pub max_header_fields: usize,
    /// A client must send its request head within this time.
    pub header_read_timeout_s: u64,
    /// A JSON request body must arrive whole within this time, and an upload may not pause
    /// longer than this; otherwise 408 (a slowly trickled body would hold a connection, and
    /// for uploads an executor connection and a temp file, forever).
    pub body_read_timeout_s: u64,
    /// Connections served at once; at the bound the oldest is asked to close (see `server`).
    pub max_connections: usize,
    /// Threads serving requests; 0: one per CPU this process may use (see
    /// [`FrontendConfig::runtime_workers`]).
    pub worker_threads: usize,
    /// First words refused by `/run_sh` (a courtesy, see `denylist`); `x*` is a prefix.
    pub forbidden_commands: Vec<String>,
    /// At shutdown, how long requests in flight may take to finish.
    pub shutdown_grace_s: u64,
    /// Whether `GET /metrics` is served without a token (for a scraper on a trusted
    /// network); by default it needs one, like every route but `/health`.
    pub metrics_public: bool,
    /// The directory whose file system `GET /system` reports (`disk`); the executor's
    /// state directory, seen from the frontend.
    pub state_dir: PathBuf,
    /// The systemd units whose state `GET /services` reports.
    pub services: Vec<String>,
    /// Whether `$CREDENTIALS_DIRECTORY/api-token` is read; off in development mode, whose
    /// generated token is the only one.
    #[serde(skip)]
    pub read_credentials_directory: bool,
}

/// Most runtime worker threads `worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// The seed's list without `rm` (deleting files in one's own workspace is legitimate).
pub const DEFAULT_FORBIDDEN_COMMANDS: &[&str] = &[
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init",
    "telinit",
    "systemctl",
    "mkfs*",
    "fdisk",
    "parted",
    "mount",
    "umount",
    "swapon",
    "swapoff",
    "sudo",
    "su",
    "passwd",
    "useradd",
    "userdel",
    "usermod",
    "kill",
    "killall",
    "pkill",
];

/// The units `GET /services` reports by default.
pub const DEFAULT_SERVICES: &[&str] = &["nox-frontend.service", "nox-executor.service"];

/// Whether `name` is a systemd unit name: `[A-Za-z0-9:_.\\@-]`, a known suffix, at most 255
/// bytes, not starting with `-` (it is passed to `systemctl` as an argument).
pub fn is_unit_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".slice",
        ".scope",
        ".device",
        ".swap",
        ".automount",
    ];
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c))
        && SUFFIXES
            .iter()
            .any(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            bind_addr: "127.0.0.1".into(),
            port: 8080,
            api_token: None,
            token_files: Vec::new(),
            executor_socket: "/run/nox/executor.sock".into(),
            executor_connect_timeout_ms: 1000,
            max_json_body_bytes: 4 * 1024 * 1024,
            max_upload_bytes: 1024 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout_s: 10,
            body_read_timeout_s: 10,
            max_header_fields: 100,
            max_connections: 1024,
            worker_threads: 0,
            forbidden_commands: DEFAULT_FORBIDDEN_COMMANDS
                .iter()
                .map(|&word| word.to_owned())
                .collect(),
            shutdown_grace_s: 30,
            metrics_public: false,
            state_dir: "/var/lib/nox".into(),
            services: DEFAULT_SERVICES
                .iter()
                .map(|&unit| unit.to_owned())
                .collect(),
            read_credentials_directory: true,
        }
    }
}

impl fmt::Debug for FrontendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontendConfig")
            .field("bind_addr", &self.bind_addr)
            .field("port", &self.port)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("token_files", &self.token_files)
            .field("executor_socket", &self.executor_socket)
            .field(
                "executor_connect_timeout_ms",
                &self.executor_connect_timeout_ms,
            )
            .field("max_json_body_bytes", &self.max_json_body_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("header_read_timeout_s", &self.header_read_timeout_s)
            .field("body_read_timeout_s", &self.body_read_timeout_s)
            .field("max_header_fields", &self.max_header_fields)
            .field("max_connections", &self.max_connections)
            .field("worker_threads", &self.worker_threads)
            .field("forbidden_commands", &self.forbidden_commands)
            .field("shutdown_grace_s", &self.shutdown_grace_s)
            .field("metrics_public", &self.metrics_public)
            .field("state_dir", &self.state_dir)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl FrontendConfig {
    /// The runtime's worker threads: `worker_threads`, or one per CPU this process may
    /// use. Each is kept on a CPU of its own (see `crate::cpus`).
    pub fn runtime_workers(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    }

    /// Check every value and load the tokens, reading `$CREDENTIALS_DIRECTORY/api-token`
    /// when `read_credentials_directory` is set and the variable is.
    pub fn validate(&self) -> Result<Tokens, ConfigError> {
        let credentials = self
            .read_credentials_directory
            .then(|| std::env::var_os("CREDENTIALS_DIRECTORY"))
            .flatten()
            .map(PathBuf::from);
        self.validate_with_credentials(credentials.as_deref())
    }

    /// [`FrontendConfig::validate`] with the credentials directory given explicitly.
    pub fn validate_with_credentials(
        &self,
        credentials_directory: Option<&Path>,
    ) -> Result<Tokens, ConfigError> {
        if self.bind_addr.trim().is_empty() {
            return Err(ConfigError::invalid(
                "frontend.bind_addr",
                "must not be empty",
            ));
        }
        require_absolute("frontend.executor_socket", &self.executor_socket)?;
        require_absolute("frontend.state_dir", &self.state_dir)?;
        if let Some(bad) = self.services.iter().find(|unit| !is_unit_name(unit)) {
            return Err(ConfigError::invalid(
                "frontend.services",
                format!("{bad:?} is not a systemd unit name (e.g. \"nox-executor.service\")"),
            ));
        }
        let positive: [(&str, u64); 7] = [
            (
                "frontend.executor_connect_timeout_ms",
                self.executor_connect_timeout_ms,
            ),
            ("frontend.max_json_body_bytes", self.max_json_body_bytes),
            ("frontend.max_upload_bytes", self.max_upload_bytes),
            ("frontend.header_read_timeout_s", self.header_read_timeout_s),
            ("frontend.body_read_timeout_s", self.body_read_timeout_s),
            ("frontend.max_connections", self.max_connections as u64),
            ("frontend.max_header_fields", self.max_header_fields as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.max_header_bytes < 1024 {
            return Err(ConfigError::invalid(
                "frontend.max_header_bytes",
                "must be at least 1024",
            ));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::invalid(
                "frontend.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per CPU)"),
            ));
        }
        for word in &self.forbidden_commands {
            let bare = word.strip_suffix('*').unwrap_or(word);
            if bare.is_empty() || bare.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(ConfigError::invalid(
                    "frontend.forbidden_commands",
                    format!("{word:?} is not a command name (a `*` suffix makes a prefix)"),
                ));
            }
        }
        self.load_tokens(credentials_directory)
    }

    fn load_tokens(&self, credentials_directory: Option<&Path>) -> Result<Tokens, ConfigError> {
        let mut found: Vec<TokenLine> = Vec::new();
        if let Some(token) = &self.api_token {
            found.push(TokenLine {
                workspace: DEFAULT_WORKSPACE.to_owned(),
                token: token.clone(),
                origin: "frontend.api_token".to_owned(),
            });
        }
        for file in &self.token_files {
            let text = std::fs::read_to_string(file).map_err(|error| {
                ConfigError::invalid(
                    "frontend.token_files",
                    format!("cannot read {}: {error}", file.display()),
                )
            })?;
            found.extend(parse_token_file(&text, &file.display().to_string())?);
        }
        if let Some(directory) = credentials_directory {
            let file = directory.join(CREDENTIAL_NAME);
            match std::fs::read_to_string(&file) {
                Ok(text) => found.extend(parse_token_file(&text, &file.display().to_string())?),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(ConfigError::invalid(
                        "frontend.api_token",
                        format!("cannot read the credential {}: {error}", file.display()),
                    ));
                }
            }
        }
        check_tokens(&found)?;
        Ok(Tokens::new(
            found
                .into_iter()
                .map(|line| (line.token.into_bytes(), line.workspace))
                .collect(),
        ))
    }
}

/// One configured token and where it came from (for messages, which never show the token).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenLine {
    pub workspace: String,
    pub token: String,
    pub origin: String,
}

impl fmt::Debug for TokenLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLine")
            .field("workspace", &self.workspace)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Parse a token file: `TOKEN` or `WORKSPACE TOKEN` per line, `#` comments, blank lines.
pub fn parse_token_file(text: &str, origin: &str) -> Result<Vec<TokenLine>, ConfigError> {
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (workspace, token) = match words.as_slice() {
            [token] => (DEFAULT_WORKSPACE, *token),
            [workspace, token] => (*workspace, *token),
            _ => {
                return Err(ConfigError::invalid(
                    "frontend.token_files",
                    format!(
                        "{origin} line {}: expected `TOKEN` or `WORKSPACE TOKEN`",
                        index + 1
                    ),
                ));
            }
        };
        lines.push(TokenLine {
            workspace: workspace.to_owned(),
            token: token.to_owned(),
            origin: format!("{origin} line {}", index + 1),
        });
    }
    Ok(lines)
}

/// The rules every set of tokens must follow. Short tokens pass (the seed allowed them);
/// `run` warns about them.
pub fn check_tokens(tokens: &[TokenLine]) -> Result<(), ConfigError> {
    if tokens.is_empty() {
        return Err(ConfigError::invalid(
            "frontend.api_token",
            "no API token configured: set NOX_API_TOKEN, frontend.api_token, \
             frontend.token_files or the `api-token` systemd credential",
        ));
    }
    for (index, line) in tokens.iter().enumerate() {
        let key = key_of(line);
        if line.token.is_empty() {
            return Err(ConfigError::invalid(
                key,
                format!("{}: the token is empty", line.origin),
            ));
        }
        if line
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::invalid(
                key,
                format!("{}: the token contains whitespace", line.origin),
            ));
        }
        if !validate_workspace_name(&line.workspace) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{}: workspace name {:?} must be 1-64 of [A-Za-z0-9_-], not starting with '-'",
                    line.origin, line.workspace
                ),
            ));
        }
        if let Some(first) = tokens[..index]
            .iter()
            .find(|other| other.token == line.token)
        {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{}: the same token is already configured ({})",
                    line.origin, first.origin
                ),
            ));
        }
    }
    Ok(())
}

fn key_of(line: &TokenLine) -> &'static str {
    if line.origin == "frontend.api_token" {
        "frontend.api_token"
    } else {
        "frontend.token_files"
    }
}

#[cfg(test)]
mod tests {
    use figment::Jail;
    use nox_protocol::config::{ConfigFile, load};

    use super::*;

    fn with_token(token: &str) -> FrontendConfig {
        FrontendConfig {
            api_token: Some(token.into()),
            ..FrontendConfig::default()
        }
    }

    #[test]
    fn token_files_map_tokens_to_workspaces_and_skip_comments() {
        let text = "# team tokens\n\n  solo-token-0123456789  \nteam_a tok-a-0123456789abcdef\n";
        let lines = parse_token_file(text, "/etc/nox/tokens").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].workspace, "default");
        assert_eq!(lines[0].token, "solo-token-0123456789");
        assert_eq!(lines[1].workspace, "team_a");
        assert_eq!(lines[1].token, "tok-a-0123456789abcdef");
        assert_eq!(lines[1].origin, "/etc/nox/tokens line 4");
    }

    #[test]
    fn a_token_line_with_three_words_is_refused_without_showing_it() {
        let error = parse_token_file("a b secret-value\n", "f").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("frontend.token_files"), "{text}");
        assert!(text.contains("line 1"), "{text}");
        assert!(!text.contains("secret-value"), "{text}");
    }

    #[test]
    fn without_any_token_the_error_names_api_token() {
        let error = FrontendConfig::default()
            .validate_with_credentials(None)
            .unwrap_err();
        assert!(error.to_string().contains("frontend.api_token"), "{error}");
    }

    #[test]
    fn empty_duplicate_and_badly_placed_tokens_are_refused() {
        assert!(with_token("").validate_with_credentials(None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "other 0123456789abcdef0123\n").unwrap();
        let config = FrontendConfig {
            token_files: vec![file.clone()],
            ..with_token("0123456789abcdef0123")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(error.to_string().contains("already configured"), "{error}");
        assert!(
            !error.to_string().contains("0123456789abcdef0123"),
            "{error}"
        );

        std::fs::write(&file, "../up 0123456789abcdef0123\n").unwrap();
        let config = FrontendConfig {
            token_files: vec![file],
            ..FrontendConfig::default()
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(error.to_string().contains("workspace name"), "{error}");
    }

    #[test]
    fn short_tokens_are_accepted_for_seed_compatibility() {
        let tokens = with_token("short").validate_with_credentials(None).unwrap();
        assert_eq!(tokens.workspace_for(b"short"), Some("default"));
    }

    #[test]
    fn the_credential_file_adds_tokens_and_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let config = with_token("env-token-0123456789");
        let tokens = config.validate_with_credentials(Some(dir.path())).unwrap();
        assert_eq!(tokens.len(), 1);
        std::fs::write(dir.path().join("api-token"), "cred-token-0123456789\n").unwrap();
        let tokens = config.validate_with_credentials(Some(dir.path())).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.workspace_for(b"cred-token-0123456789"),
            Some("default")
        );
    }

    #[test]
    fn the_runtime_gets_a_worker_per_cpu_unless_told_and_an_absurd_count_is_refused() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        let auto = with_token("0123456789abcdef");
        assert_eq!(auto.runtime_workers(), cpus);
        let told = FrontendConfig {
            worker_threads: 3,
            ..with_token("0123456789abcdef")
        };
        assert_eq!(told.runtime_workers(), 3);
        told.validate_with_credentials(None).unwrap();
        let absurd = FrontendConfig {
            worker_threads: 5000,
            ..with_token("0123456789abcdef")
        };
        let error = absurd.validate_with_credentials(None).unwrap_err();
        assert!(
            error.to_string().contains("frontend.worker_threads"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_token_file_names_its_key() {
        let config = FrontendConfig {
            token_files: vec!["/nonexistent/tokens".into()],
            ..with_token("0123456789abcdef")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(
            error.to_string().contains("frontend.token_files"),
            "{error}"
        );
    }

    #[test]
    fn values_that_make_no_sense_name_their_key() {
        let config = FrontendConfig {
            max_connections: 0,
            ..with_token("0123456789abcdef")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(
            error.to_string().contains("frontend.max_connections"),
            "{error}"
        );
        let config = FrontendConfig {
            executor_socket: "relative.sock".into(),
            ..with_token("0123456789abcdef")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(
            error.to_string().contains("frontend.executor_socket"),
            "{error}"
        );
        let config = FrontendConfig {
            forbidden_commands: vec!["two words".into()],
            ..with_token("0123456789abcdef")
        };
        assert!(config.validate_with_credentials(None).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn seed_variables_and_nested_variables_reach_the_frontend_section() {
        Jail::expect_with(|jail| {
            jail.set_env("NOX_API_TOKEN", "seed-token");
            jail.set_env("NOX_PORT", "9001");
            jail.set_env("NOX_BIND_ADDR", "0.0.0.0");
            jail.set_env("NOX_EXECUTOR_SOCKET", "/tmp/e.sock");
            jail.set_env("NOX_FRONTEND__MAX_UPLOAD_BYTES", "1234");
            let config: FrontendConfig =
                load("frontend", &ConfigFile::None, FrontendConfig::default()).unwrap();
            assert_eq!(config.api_token.as_deref(), Some("seed-token"));
            assert_eq!(config.port, 9001);
            assert_eq!(config.bind_addr, "0.0.0.0");
            assert_eq!(config.executor_socket, PathBuf::from("/tmp/e.sock"));
            assert_eq!(config.max_upload_bytes, 1234);
            assert!(config.read_credentials_directory);
            Ok(())
        });
    }

    #[test]
    fn unit_names_are_checked_before_they_reach_systemctl() {
        for good in [
            "nox-frontend.service",
            "getty@tty1.service",
            "a.socket",
            "x\\x2d.mount",
        ] {
            assert!(is_unit_name(good), "{good}");
        }
        for bad in [
            "",
            "-H host.service",
            "nox",
            ".service",
            "a b.service",
            "a;b.service",
        ] {
            assert!(!is_unit_name(bad), "{bad}");
        }
        let config = FrontendConfig {
            services: vec!["--all".into()],
            ..with_token("0123456789abcdef")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(error.to_string().contains("frontend.services"), "{error}");
        let config = FrontendConfig {
            state_dir: "relative".into(),
            ..with_token("0123456789abcdef")
        };
        let error = config.validate_with_credentials(None).unwrap_err();
        assert!(error.to_string().contains("frontend.state_dir"), "{error}");
    }

    #[test]
    fn the_debug_form_never_shows_the_token() {
        let text = format!("{:?}", with_token("very-secret-token-value"));
        assert!(!text.contains("very-secret-token-value"), "{text}");
    }
}
