//! The configuration both daemons read, layered: built-in defaults, then the TOML file
//! (`/etc/nox/nox.toml` when it exists, or the file given with `--config`, which must
//! exist), then `NOX_*` environment variables.
//!
//! One file holds both daemons' sections, `[frontend]` and `[executor]`; each daemon reads
//! its own and checks that nothing else is there (a typo is an error naming the key, not a
//! silently ignored setting). Environment variables map onto the same keys:
//!
//! | variable | key |
//! |---|---|
//! | `NOX_API_TOKEN` | `frontend.api_token` |
//! | `NOX_BIND_ADDR` | `frontend.bind_addr` |
//! | `NOX_PORT` | `frontend.port` |
//! | `NOX_EXECUTOR_SOCKET` | `frontend.executor_socket` and `executor.socket` |
//! | `NOX_SANDBOX` | `executor.workspace_root` |
//! | `NOX_TIMEOUT` | `executor.limits.timeout_s` |
//! | `NOX_FRONTEND__KEY`, `NOX_EXECUTOR__A__B` | `frontend.key`, `executor.a.b` |
//!
//! `NOX_LOG` (the log filter), `NOX_CONFIG` and `NOX_URL` (clients) are not configuration
//! keys and are ignored here.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Uncased, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the TOML file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nox/nox.toml";

/// Configuration that cannot be used. The message names the key and where it came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid configuration")]
    Load(#[source] Box<figment::Error>),
    #[error("invalid configuration: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A value that parsed but makes no sense.
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError::Load(Box::new(error))
    }
}

/// Which TOML file to read.
#[derive(Debug, Clone, Default)]
pub enum ConfigFile {
    /// `/etc/nox/nox.toml` if it exists, nothing otherwise.
    #[default]
    Default,
    /// This file; it must exist.
    Exact(PathBuf),
    /// No file at all (the embedded development configuration).
    None,
}

/// The only top-level keys the file and the environment may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    #[serde(rename = "frontend")]
    _frontend: Option<Value>,
    #[serde(rename = "executor")]
    _executor: Option<Value>,
}

/// Load `section` (`"frontend"` or `"executor"`) over `defaults`.
pub fn load<T>(section: &str, file: &ConfigFile, defaults: T) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let figment = layered(section, file, defaults);
    figment.extract::<Sections>()?;
    Ok(figment.focus(section).extract()?)
}

fn layered<T: Serialize>(section: &str, file: &ConfigFile, defaults: T) -> Figment {
    let mut figment = Figment::from(Serialized::default(section, defaults));
    figment = match file {
        ConfigFile::Default => figment.merge(Toml::file(DEFAULT_CONFIG_PATH)),
        ConfigFile::Exact(path) => figment.merge(Toml::file_exact(path)),
        ConfigFile::None => figment,
    };
    figment
        .merge(
            Env::prefixed("NOX_")
                .ignore(&["log", "config", "url"])
                .map(|key| seed_alias(key).unwrap_or_else(|| nested(key))),
        )
        .merge(
            Env::raw()
                .only(&["NOX_EXECUTOR_SOCKET"])
                .map(|_| "executor.socket".into()),
        )
}

/// The seed application's variable names.
fn seed_alias(key: &figment::value::UncasedStr) -> Option<Uncased<'static>> {
    let target = match key.as_str().to_ascii_lowercase().as_str() {
        "api_token" => "frontend.api_token",
        "bind_addr" => "frontend.bind_addr",
        "port" => "frontend.port",
        "executor_socket" => "frontend.executor_socket",
        "sandbox" => "executor.workspace_root",
        "timeout" => "executor.limits.timeout_s",
        _ => return None,
    };
    Some(target.into())
}

/// `FRONTEND__MAX_BODY_BYTES` becomes `frontend.max_body_bytes`.
fn nested(key: &figment::value::UncasedStr) -> Uncased<'static> {
    key.as_str().to_ascii_lowercase().replace("__", ".").into()
}

/// Check that a path given in configuration is absolute.
pub fn require_absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, "must be an absolute path"))
    }
}

#[cfg(test)]
// figment's `Jail` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Front {
        port: u16,
        api_token: Option<String>,
        executor_socket: PathBuf,
        max_body_bytes: u64,
    }

    fn front_defaults() -> Front {
        Front {
            port: 8080,
            api_token: None,
            executor_socket: "/run/nox/executor.sock".into(),
            max_body_bytes: 10,
        }
    }

    #[test]
    fn seed_variables_and_nested_variables_reach_their_keys() {
        Jail::expect_with(|jail| {
            jail.set_env("NOX_API_TOKEN", "secret-token");
            jail.set_env("NOX_PORT", "9000");
            jail.set_env("NOX_EXECUTOR_SOCKET", "/tmp/x.sock");
            jail.set_env("NOX_FRONTEND__MAX_BODY_BYTES", "42");
            jail.set_env("NOX_LOG", "debug");
            let got: Front = load("frontend", &ConfigFile::None, front_defaults()).unwrap();
            assert_eq!(got.port, 9000);
            assert_eq!(got.api_token.as_deref(), Some("secret-token"));
            assert_eq!(got.executor_socket, PathBuf::from("/tmp/x.sock"));
            assert_eq!(got.max_body_bytes, 42);
            Ok(())
        });
    }

    #[test]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("nox.toml", "[frontend]\nport = 7000\nmax_body_bytes = 5\n")?;
            jail.set_env("NOX_PORT", "7001");
            let file = ConfigFile::Exact("nox.toml".into());
            let got: Front = load("frontend", &file, front_defaults()).unwrap();
            assert_eq!((got.port, got.max_body_bytes), (7001, 5));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        Jail::expect_with(|jail| {
            jail.create_file("nox.toml", "[frontend]\nprot = 1\n")?;
            let file = ConfigFile::Exact("nox.toml".into());
            let error = load("frontend", &file, front_defaults()).unwrap_err();
            assert!(format!("{error:?}").contains("prot"), "{error:?}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("NOX_LISTN", "x");
            let error = load("frontend", &ConfigFile::None, front_defaults()).unwrap_err();
            assert!(format!("{error:?}").contains("listn"), "{error:?}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        Jail::expect_with(|jail| {
            jail.set_env("NOX_PORT", "lots");
            let error = load("frontend", &ConfigFile::None, front_defaults()).unwrap_err();
            let text = format!("{error:?}");
            assert!(text.contains("port"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        Jail::expect_with(|_| {
            let file = ConfigFile::Exact("/nonexistent/nox.toml".into());
            assert!(load("frontend", &file, front_defaults()).is_err());
            Ok(())
        });
    }
}
