//! The HTTP side: one ureq agent, the token in `Authorization: Bearer`, and every non-2xx
//! reply turned into [`CliError::Api`] from the uniform error body.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use ureq::Agent;
use ureq::http::Response;

use crate::error::CliError;
use crate::settings::Settings;

/// How long connecting may take. Replies themselves have no deadline: a job runs as long as
/// the server lets it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error bodies and JSON replies are read up to this size.
const MAX_JSON_REPLY: u64 = 64 * 1024 * 1024;

/// A connection to one nox service.
#[derive(Debug)]
pub struct Client {
    agent: Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Client, CliError> {
        let url = settings.url.clone();
        if url.to_ascii_lowercase().starts_with("https://") {
            return Err(CliError::Https { url });
        }
        if !url.to_ascii_lowercase().starts_with("http://") {
            return Err(CliError::BadUrl { url });
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .max_redirects(0)
            .build()
            .into();
        Ok(Client {
            agent,
            base: url,
            token: settings.token.clone(),
        })
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    fn failed(&self, path: &str, error: ureq::Error) -> CliError {
        let url = self.url(path);
        match &error {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                CliError::Connect {
                    url,
                    refused: true,
                    source: error,
                }
            }
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(ureq::Timeout::Connect) => CliError::Connect {
                url,
                refused: false,
                source: error,
            },
            ureq::Error::Io(_) => CliError::Connect {
                url,
                refused: false,
                source: error,
            },
            _ => CliError::Http { url, source: error },
        }
    }

    /// `GET`/`DELETE` without a body; a 2xx response.
    pub fn call(&self, method: &str, path: &str) -> Result<Response<ureq::Body>, CliError> {
        let url = self.url(path);
        let result = match method {
            "DELETE" => {
                let mut request = self.agent.delete(&url);
                if let Some(auth) = self.auth() {
                    request = request.header("Authorization", &auth);
                }
                request.call()
            }
            _ => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = self.auth() {
                    request = request.header("Authorization", &auth);
                }
                request.call()
            }
        };
        result
            .map_err(|error| self.failed(path, error))
            .and_then(success)
    }

    /// `GET path` whatever the status: the status and the JSON body (`/health` answers 503
    /// with a body worth showing).
    pub fn get_json_any_status(&self, path: &str) -> Result<(u16, Value), CliError> {
        let mut request = self.agent.get(self.url(path));
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", &auth);
        }
        let response = request.call().map_err(|error| self.failed(path, error))?;
        let status = response.status().as_u16();
        Ok((status, json_body(response)?))
    }

    /// `POST` a JSON body, asking for `accept`; a 2xx response.
    pub fn post_json(
        &self,
        path: &str,
        body: &Value,
        accept: &str,
    ) -> Result<Response<ureq::Body>, CliError> {
        let mut request = self
            .agent
            .post(self.url(path))
            .header("Accept", accept)
            .header("Content-Type", "application/json");
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", &auth);
        }
        request
            .send(body.to_string())
            .map_err(|error| self.failed(path, error))
            .and_then(success)
    }

    /// `PUT` the bytes of `reader` (`length` of them, when known); a 2xx response.
    pub fn put_reader(
        &self,
        path: &str,
        reader: impl Read + 'static,
        length: Option<u64>,
    ) -> Result<Response<ureq::Body>, CliError> {
        let mut request = self
            .agent
            .put(self.url(path))
            .header("Content-Type", "application/octet-stream");
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", &auth);
        }
        if let Some(length) = length {
            request = request.header("Content-Length", length.to_string());
        }
        request
            .send(ureq::SendBody::from_owned_reader(reader))
            .map_err(|error| self.failed(path, error))
            .and_then(success)
    }
}

/// A reply's JSON body.
pub fn json_body(response: Response<ureq::Body>) -> Result<Value, CliError> {
    let text = response
        .into_body()
        .into_with_config()
        .limit(MAX_JSON_REPLY)
        .read_to_string()
        .map_err(|error| CliError::Reply(error.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|error| CliError::Reply(format!("not JSON ({error}): {}", shorten(&text))))
}

/// 2xx as is; anything else becomes the error its body describes.
fn success(response: Response<ureq::Body>) -> Result<Response<ureq::Body>, CliError> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let text = response
        .into_body()
        .into_with_config()
        .limit(MAX_JSON_REPLY)
        .read_to_string()
        .unwrap_or_default();
    Err(api_error(status, &text))
}

/// The error of a non-2xx reply with this body.
pub fn api_error(status: u16, body: &str) -> CliError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|value| value.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    CliError::Api {
        status,
        code: field("error").unwrap_or_else(|| "error".to_owned()),
        message: field("message")
            .or_else(|| field("detail"))
            .unwrap_or_else(|| shorten(body)),
    }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `/files/<path>` with each component percent-encoded (`/` kept).
pub fn file_url(path: &str) -> String {
    let mut url = String::from("/files/");
    url.push_str(&encode(path.trim_start_matches('/'), true));
    url
}

/// Percent-encode everything but unreserved characters (and `/` when `keep_slash`).
pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
        if unreserved || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_are_encoded_component_by_component() {
        assert_eq!(file_url("dir/a b.txt"), "/files/dir/a%20b.txt");
        assert_eq!(file_url("/été?#"), "/files/%C3%A9t%C3%A9%3F%23");
        assert_eq!(encode("a/b", false), "a%2Fb");
    }

    #[test]
    fn an_error_reply_becomes_its_code_and_message() {
        let error = api_error(
            413,
            r#"{"error":"payload_too_large","message":"too big","detail":"too big"}"#,
        );
        assert_eq!(error.to_string(), "HTTP 413 payload_too_large: too big");
        let error = api_error(502, "<html>Bad Gateway</html>");
        assert_eq!(
            error.to_string(),
            "HTTP 502 error: <html>Bad Gateway</html>"
        );
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        let settings = |url: &str| Settings {
            url: url.into(),
            token: None,
        };
        assert!(matches!(
            Client::new(&settings("https://nox.example")),
            Err(CliError::Https { .. })
        ));
        assert!(matches!(
            Client::new(&settings("nox.example:8080")),
            Err(CliError::BadUrl { .. })
        ));
        assert!(Client::new(&settings("http://127.0.0.1:8080")).is_ok());
    }
}
