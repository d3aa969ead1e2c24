//! Routing, the checks every request goes through (header size, method, authentication), and
//! the one log line per request. Tokens and bodies are never logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::AppState;
use crate::api_error::ApiError;
use crate::api_types::RestartReply;
use crate::body::{self, Body};
use crate::jobs::Language;
use crate::{files, health, host, jobs, random, telemetry, uri};

/// The endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    OpenApi,
    Metrics,
    System,
    Services,
    Restart,
    Put,
    Run(Language),
    ListFiles,
    /// `/files/{path}`, still percent-encoded.
    File(&'a str),
}

impl Route<'_> {
    /// One request path per route (`x` stands for a file path).
    #[cfg(test)]
    pub const EVERY_PATH: [&'static str; 11] = [
        "/health",
        "/openapi.json",
        "/metrics",
        "/system",
        "/services",
        "/actions/restart",
        "/put",
        "/run_py",
        "/run_sh",
        "/files",
        "/files/x",
    ];

    /// The route of a request path, if any.
    pub fn of(path: &str) -> Option<Route<'_>> {
        match path {
            "/health" => Some(Route::Health),
            "/openapi.json" => Some(Route::OpenApi),
            "/metrics" => Some(Route::Metrics),
            "/system" => Some(Route::System),
            "/services" => Some(Route::Services),
            "/actions/restart" => Some(Route::Restart),
            "/put" => Some(Route::Put),
            "/run_py" => Some(Route::Run(Language::Python)),
            "/run_sh" => Some(Route::Run(Language::Shell)),
            "/files" => Some(Route::ListFiles),
            other => other.strip_prefix("/files/").map(Route::File),
        }
    }

    /// The methods the route answers, as an `Allow` value.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Health
            | Route::OpenApi
            | Route::Metrics
            | Route::System
            | Route::Services
            | Route::ListFiles => "GET",
            Route::Put | Route::Run(_) | Route::Restart => "POST",
            Route::File(_) => "GET, PUT, DELETE",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.allow()
            .split(", ")
            .any(|allowed| allowed == method.as_str())
    }

    /// The `route` label of `nox_http_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::OpenApi => "openapi",
            Route::Metrics => "metrics",
            Route::System => "system",
            Route::Services => "services",
            Route::Restart => "restart",
            Route::Put => "put",
            Route::Run(Language::Python) => "run_py",
            Route::Run(Language::Shell) => "run_sh",
            Route::ListFiles => "files",
            Route::File(_) => "file",
        }
    }
}

/// The route label of a request path; `unknown` for paths no route serves.
pub fn route_label(path: &str) -> &'static str {
    Route::of(path).map_or("unknown", |route| route.label())
}

/// Total size of the header fields, counted as they were sent (`name: value\r\n`).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Longest request path written to the log.
const LOGGED_PATH_LEN: usize = 256;

/// The per-request log line; written on drop, so a request abandoned by its client is
/// logged too.
struct RequestLog {
    method: Method,
    path: String,
    started: Instant,
    job_id: Option<String>,
    status: Option<u16>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let (method, path) = (self.method.clone(), std::mem::take(&mut self.path));
        let (job_id, status) = (self.job_id.take(), self.status);
        // After the reply is on its way (see `write_soon`).
        telemetry::write_soon(move || match status {
            Some(status) => tracing::info!(
                method = %method,
                path = %path,
                status,
                duration_ms,
                job_id = job_id.as_deref(),
                "request"
            ),
            None => tracing::info!(
                method = %method,
                path = %path,
                duration_ms,
                job_id = job_id.as_deref(),
                "request abandoned by the client"
            ),
        });
    }
}

/// The service function.
pub async fn handle(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let route = route_label(request.uri().path());
    let mut path = request.uri().path().to_owned();
    if path.len() > LOGGED_PATH_LEN {
        let mut cut = LOGGED_PATH_LEN;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push('…');
    }
    let mut log = RequestLog {
        method: request.method().clone(),
        path,
        started: Instant::now(),
        job_id: None,
        status: None,
    };
    let response = match dispatch(Arc::clone(&state), request, &mut log.job_id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let status = response.status().as_u16();
    state.metrics.request(route, status);
    log.status = Some(status);
    Ok(response)
}

async fn dispatch(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
    job_id: &mut Option<String>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config.max_header_bytes;
    if header_bytes(request.headers()) > limit {
        return Err(ApiError::headers_too_large(limit));
    }
    let fields = state.config.max_header_fields;
    if request.headers().len() > fields {
        return Err(ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request has more than {fields} header fields"),
        ));
    }
    let uri_path = request.uri().path().to_owned();
    let route = Route::of(&uri_path).ok_or_else(ApiError::route_not_found)?;
    if !route.allows(request.method()) {
        return Err(ApiError::method_not_allowed(route.allow()));
    }
    match route {
        Route::Health => return Ok(health::health(&state).await),
        Route::OpenApi => return Ok(openapi(&state)),
        Route::Metrics if state.config.metrics_public => return Ok(metrics(&state).await),
        _ => {}
    }
    let workspace = state.tokens.authenticate(request.headers())?.to_owned();
    match route {
        Route::Health => Ok(health::health(&state).await),
        Route::OpenApi => Ok(openapi(&state)),
        Route::Metrics => Ok(metrics(&state).await),
        Route::System => Ok(host::system(&state).await),
        Route::Services => Ok(host::services(&state).await),
        Route::Restart => Ok(restart(&state, &workspace)),
        Route::Put => files::put_multipart(state, request, &workspace).await,
        Route::Run(language) => {
            let id = random::new_job_id();
            *job_id = Some(id.clone());
            jobs::run(state, request, &workspace, language, &id).await
        }
        Route::ListFiles => files::list(Arc::clone(&state), &request, &workspace).await,
        Route::File(encoded) => {
            let path = uri::file_path(encoded).map_err(|error| match error {
                uri::UriError::Path(error) => ApiError::invalid_path(&error),
                other => ApiError::new(
                    http::StatusCode::BAD_REQUEST,
                    "invalid_path",
                    format!("invalid path: {other}"),
                ),
            })?;
            match *request.method() {
                Method::GET => files::download(state, &workspace, &path).await,
                Method::PUT => files::put_raw(state, request, &workspace, &path).await,
                _ => files::delete(state, &workspace, &path).await,
            }
        }
    }
}

/// `GET /openapi.json`: the document built at start.
fn openapi(state: &AppState) -> Response<Body> {
    let mut response = Response::new(body::full(state.openapi.clone()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// How long `/metrics` waits for the executor's status.
const METRICS_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /metrics`.
async fn metrics(state: &AppState) -> Response<Body> {
    let status = health::executor_status(state, METRICS_STATUS_TIMEOUT)
        .await
        .ok();
    let mut response = Response::new(body::full(state.metrics.render(status.as_ref())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// `POST /actions/restart`: answer 202, then ask the server loop to restart. The short
/// delay lets the reply leave before the listener stops accepting; the graceful drain
/// finishes this connection either way.
fn restart(state: &AppState, workspace: &str) -> Response<Body> {
    tracing::warn!(workspace, "restart requested over the API");
    let restart = state.restart.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        restart.cancel();
    });
    body::json(StatusCode::ACCEPTED, &RestartReply { restarting: true })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn every_endpoint_has_its_route_and_methods() {
        assert_eq!(Route::of("/health"), Some(Route::Health));
        assert_eq!(Route::of("/run_py"), Some(Route::Run(Language::Python)));
        assert_eq!(Route::of("/run_sh"), Some(Route::Run(Language::Shell)));
        assert_eq!(Route::of("/put"), Some(Route::Put));
        assert_eq!(Route::of("/files"), Some(Route::ListFiles));
        assert_eq!(Route::of("/files/a%2Fb"), Some(Route::File("a%2Fb")));
        assert_eq!(Route::of("/files/"), Some(Route::File("")));
        assert_eq!(Route::of("/run_py/"), None);
        assert_eq!(Route::of("/"), None);
        assert!(Route::File("x").allows(&Method::DELETE));
        assert!(!Route::Health.allows(&Method::POST));
        assert_eq!(Route::Run(Language::Shell).allow(), "POST");
        assert!(Route::Restart.allows(&Method::POST));
        assert!(!Route::Restart.allows(&Method::GET));
        assert!(Route::Metrics.allows(&Method::GET));
    }

    #[test]
    fn every_path_has_its_own_route_and_label() {
        let labels: std::collections::BTreeSet<&str> = Route::EVERY_PATH
            .iter()
            .map(|path| route_label(path))
            .collect();
        assert_eq!(labels.len(), Route::EVERY_PATH.len());
        assert!(!labels.contains("unknown"));
        assert_eq!(route_label("/nope"), "unknown");
        assert_eq!(route_label("/files/a/b"), "file");
    }

    #[test]
    fn header_bytes_count_names_values_and_separators() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("12345"));
        assert_eq!(header_bytes(&headers), 3 + 5 + 4);
    }
}
