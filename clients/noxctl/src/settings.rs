//! Where the URL and the token come from, first found wins:
//!
//! 1. `--url` / `--token`
//! 2. `NOX_URL` / `NOX_API_TOKEN`
//! 3. the user's file `$XDG_CONFIG_HOME/nox/noxctl.toml` (or `~/.config/nox/noxctl.toml`):
//!    `url = "..."`, `token = "..."`
//! 4. for the token only, `/etc/nox/api-token` when this user can read it (on the server
//!    itself, for an operator in the right group)
//! 5. the URL defaults to `http://127.0.0.1:8080`; without a token, requests that need one
//!    get 401 and the hint says where to put it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;

/// The URL when nothing else says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The server's token file, readable by root and the `nox` group.
pub const SYSTEM_TOKEN_FILE: &str = "/etc/nox/api-token";

/// `noxctl.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub url: Option<String>,
    pub token: Option<String>,
}

/// What the settings are, and where they came from (for error messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Each source's values, highest precedence first.
#[derive(Debug, Default)]
pub struct Sources {
    pub flag_url: Option<String>,
    pub flag_token: Option<String>,
    pub env_url: Option<String>,
    pub env_token: Option<String>,
    pub file: Option<FileSettings>,
    pub system_token: Option<String>,
}

/// The first non-empty value of each setting.
pub fn resolve(sources: Sources) -> Settings {
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let file = sources.file.unwrap_or_default();
    let url = non_empty(sources.flag_url)
        .or_else(|| non_empty(sources.env_url))
        .or_else(|| non_empty(file.url))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let token = non_empty(sources.flag_token)
        .or_else(|| non_empty(sources.env_token))
        .or_else(|| non_empty(file.token))
        .or_else(|| non_empty(sources.system_token));
    Settings {
        url: url.trim().trim_end_matches('/').to_owned(),
        token: token.map(|token| token.trim().to_owned()),
    }
}

/// `$XDG_CONFIG_HOME/nox/noxctl.toml`, else `$HOME/.config/nox/noxctl.toml`.
pub fn user_file(xdg_config_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    xdg_config_home
        .filter(|path| path.is_absolute())
        .map(|base| base.join("nox/noxctl.toml"))
        .or_else(|| {
            home.filter(|path| path.is_absolute())
                .map(|home| home.join(".config/nox/noxctl.toml"))
        })
}

/// Parse `noxctl.toml`.
pub fn parse_file(text: &str, path: &Path) -> Result<FileSettings, CliError> {
    toml::from_str(text).map_err(|error| CliError::Settings {
        path: path.to_owned(),
        message: error.message().to_owned(),
    })
}

/// The first token of a server token file (`TOKEN` or `WORKSPACE TOKEN` lines, `#`
/// comments), as the frontend reads it.
pub fn first_token(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| line.split_whitespace().last().map(str::to_owned))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The settings from the real environment.
pub fn load(flag_url: Option<String>, flag_token: Option<String>) -> Result<Settings, CliError> {
    let file = match user_file(
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    ) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(parse_file(&text, &path)?),
            Err(_) => None,
        },
        None => None,
    };
    let system_token = std::fs::read_to_string(SYSTEM_TOKEN_FILE)
        .ok()
        .and_then(|text| first_token(&text));
    Ok(resolve(Sources {
        flag_url,
        flag_token,
        env_url: env("NOX_URL"),
        env_token: env("NOX_API_TOKEN"),
        file,
        system_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str, token: &str) -> Option<FileSettings> {
        Some(FileSettings {
            url: Some(url.into()),
            token: Some(token.into()),
        })
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_system_token() {
        let all = || Sources {
            flag_url: Some("http://flag".into()),
            flag_token: Some("flag-token".into()),
            env_url: Some("http://env".into()),
            env_token: Some("env-token".into()),
            file: file("http://file", "file-token"),
            system_token: Some("system-token".into()),
        };
        let settings = resolve(all());
        assert_eq!(settings.url, "http://flag");
        assert_eq!(settings.token.as_deref(), Some("flag-token"));

        let settings = resolve(Sources {
            flag_url: None,
            flag_token: None,
            ..all()
        });
        assert_eq!(settings.url, "http://env");
        assert_eq!(settings.token.as_deref(), Some("env-token"));

        let settings = resolve(Sources {
            flag_url: None,
            flag_token: None,
            env_url: Some(String::new()),
            env_token: None,
            ..all()
        });
        assert_eq!(settings.url, "http://file");
        assert_eq!(settings.token.as_deref(), Some("file-token"));

        let settings = resolve(Sources {
            system_token: Some("system-token".into()),
            ..Sources::default()
        });
        assert_eq!(settings.url, DEFAULT_URL);
        assert_eq!(settings.token.as_deref(), Some("system-token"));
        assert_eq!(resolve(Sources::default()).token, None);
    }

    #[test]
    fn a_trailing_slash_is_dropped_from_the_url() {
        let settings = resolve(Sources {
            env_url: Some("http://h:1/ ".into()),
            ..Sources::default()
        });
        assert_eq!(settings.url, "http://h:1");
    }

    #[test]
    fn the_user_file_follows_xdg_then_home() {
        assert_eq!(
            user_file(Some("/x".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/nox/noxctl.toml"))
        );
        assert_eq!(
            user_file(Some("rel".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/nox/noxctl.toml"))
        );
        assert_eq!(user_file(None, None), None);
    }

    #[test]
    fn the_file_takes_url_and_token_and_refuses_other_keys() {
        let path = Path::new("noxctl.toml");
        let parsed = parse_file("url = \"http://h\"\ntoken = \"t\"\n", path).unwrap();
        assert_eq!(parsed, file("http://h", "t").unwrap());
        let error = parse_file("tokne = \"t\"\n", path).unwrap_err();
        assert!(error.to_string().contains("noxctl.toml"), "{error}");
    }

    #[test]
    fn the_system_token_file_gives_its_first_token() {
        assert_eq!(
            first_token("# tokens\n\nteam tok-a\ntok-b\n").as_deref(),
            Some("tok-a")
        );
        assert_eq!(first_token("solo\n").as_deref(), Some("solo"));
        assert_eq!(first_token("# nothing\n"), None);
    }

    #[test]
    fn the_debug_form_hides_the_token() {
        let settings = Settings {
            url: "u".into(),
            token: Some("secret".into()),
        };
        assert!(!format!("{settings:?}").contains("secret"));
    }
}
