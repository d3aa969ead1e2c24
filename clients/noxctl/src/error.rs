//! noxctl's errors: each says what failed, and [`CliError::hint`] what to try.

use std::path::PathBuf;

use thiserror::Error;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error("{url}: noxctl speaks plain HTTP only")]
    Https { url: String },
    #[error("{url}: not an http:// URL")]
    BadUrl { url: String },
    #[error("cannot reach {url}")]
    Connect {
        url: String,
        refused: bool,
        #[source]
        source: ureq::Error,
    },
    #[error("the request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected reply from the server: {0}")]
    Reply(String),
    #[error("the job could not be followed to its end: {code}: {message}")]
    Stream { code: String, message: String },
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// What the user can do about it, if anything obvious.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Connect { refused: true, .. } => {
                Some("is nox running? ./dev.sh starts it; --url or NOX_URL point elsewhere")
            }
            CliError::Connect { .. } => Some("check the URL: --url, NOX_URL"),
            CliError::Https { .. } => Some(
                "use http:// on the host itself, or an SSH tunnel: ssh -L 8080:127.0.0.1:8080 HOST",
            ),
            CliError::Api { status: 401, .. } => Some("check the token: --token, NOX_API_TOKEN"),
            CliError::Api { status: 507, .. } => {
                Some("the workspace is over its disk quota: delete files (noxctl ls, noxctl rm)")
            }
            CliError::Api { status: 413, .. } => Some(
                "the file or the code is larger than the server accepts \
                 (frontend.max_upload_bytes, max_json_body_bytes)",
            ),
            CliError::Api {
                status: 503, code, ..
            } => Some(match code.as_str() {
                "busy" => "the job queue is full: try again in a moment",
                "sandbox_unavailable" => {
                    "a required sandbox layer is not active: noxctl status shows which"
                }
                _ => {
                    "the executor is down or busy: systemctl status nox-executor \
                     (development: restart ./dev.sh)"
                }
            }),
            _ => None,
        }
    }

    /// One line: the error, its causes, and the hint.
    pub fn one_line(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if let Some(hint) = self.hint() {
            text.push_str(" (");
            text.push_str(hint);
            text.push(')');
        }
        text.replace('\n', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> CliError {
        CliError::Api {
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn each_common_failure_has_its_hint() {
        assert!(
            api(401, "unauthorized")
                .hint()
                .unwrap()
                .contains("NOX_API_TOKEN")
        );
        assert!(
            api(413, "payload_too_large")
                .hint()
                .unwrap()
                .contains("larger")
        );
        assert!(api(503, "busy").hint().unwrap().contains("queue"));
        assert!(
            api(503, "executor_unavailable")
                .hint()
                .unwrap()
                .contains("nox-executor")
        );
        assert!(api(404, "not_found").hint().is_none());
    }

    #[test]
    fn the_message_is_one_line_with_the_hint_at_the_end() {
        let text = api(401, "unauthorized").one_line();
        assert_eq!(
            text,
            "HTTP 401 unauthorized: m (check the token: --token, NOX_API_TOKEN)"
        );
        let error = CliError::Read {
            path: "x".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone\nreally"),
        };
        assert_eq!(error.one_line(), "cannot read x: gone really");
    }
}
